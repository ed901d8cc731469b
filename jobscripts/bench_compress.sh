#!/usr/bin/env bash
# Reproduce results/compress/: `hpclm bench compress` on one CPU core (no MPI), 64K/1M/16M float32.
# Usage: jobscripts/bench_compress.sh [cpu|gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p results/compress
$PY -m hpclm.cli bench compress --device "$DEVICE" --sizes 65536,1048576,16777216 --repeats 5 \
    --json "results/compress/bench-$DEVICE.json" | tee "results/compress/bench-$DEVICE.txt"
if [ "$DEVICE" = gpu ]; then
    $PY kernels/bench.py | tee results/compress/kernels-gpu.txt
fi
