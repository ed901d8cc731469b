#!/usr/bin/env bash
# Before the GPU check (jobscripts/gpu_check.sh) on a device machine that is lent to a session: on
# the CPU machine, put what the device machine lacks into two git-ignored folders of the checkout
# that the device run carries (carry: [".whl", ".gpu_data"]):
#   .gpu_data/tinyshakespeare.txt   the char recipe's data (../shared does not travel)
#   .whl/mpich-*.whl                an MPI library for mpi4py, installed there only if mpi4py finds none
# Then: device run `bash jobscripts/gpu_check.sh` with OUT=$OUT (the device's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gpu_data/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .gpu_data .whl
cp ../shared/data/tinyshakespeare.txt .gpu_data/
ls .whl/mpich-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl mpich
du -sh .gpu_data .whl
