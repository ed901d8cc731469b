#!/usr/bin/env bash
# The test command of the README: sets itself up, then runs the whole suite (unit, MPI, GPU-if-any).
source "$(dirname "$0")/env.sh"
exec python -m pytest tests "$@"
