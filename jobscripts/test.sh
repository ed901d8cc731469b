#!/usr/bin/env bash
# The test command of the README: sets itself up, then runs the whole suite (unit, MPI, GPU-if-any);
# arguments go to pytest, so `bash jobscripts/test.sh -q tests/unit/test_layout.py` runs one file
# (pytest.ini's testpaths make `tests` the default).
source "$(dirname "$0")/env.sh"
exec python -m pytest "$@"
