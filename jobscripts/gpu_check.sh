#!/usr/bin/env bash
# The GPU check (issue 18): everything the GPU path needs to show, in one run of well under 10
# minutes on a machine with one NVIDIA GPU, written under OUT (default runs/gpu_check). Run from the
# repository root with the machine's python3 (numpy, cupy, numba, h5py, pytest, mpi4py, matplotlib):
#
#   bash jobscripts/gpu_check.sh                 # on the GPU machine
#   DEVICE=cpu bash jobscripts/gpu_check.sh      # the dry run of steps 3-8 on a machine without a GPU
#
# hpclm runs from this checkout (PYTHONPATH), not installed. What the machine lacks comes from .whl/
# (wheels fetched beside it with pip download: mpich, when mpi4py finds no MPI library there), the
# char data from DATA (default .gpu_data/tinyshakespeare.txt, else ../shared/data/tinyshakespeare.txt).
# Each step is time-boxed and logged to OUT/<step>.txt; a failing step does not stop the others;
# OUT/summary.txt lists every step's verdict.
#  1 env        nvidia-smi, library versions, the MPI library
#  2 kernels    tests/gpu: every CUDA kernel against its NumPy twin, all sizes
#  3 model      one float64 forward/backward on the device against NumPy
#  4 train      200 steps of the char recipe on the device and on the CPU: the first 20 steps' losses
#  5 dp2        2 ranks data-parallel on the device against 1 rank, same global batch, 20 steps:
#               comm.cuda_aware=auto (device buffers to MPI when the library is CUDA-aware) and off
#               (staged through host copies)
#  6 bench_model    hpclm bench model at a GPT-2-small-like size: MFU of the measured matmul peak
#  7 bench_compress hpclm bench compress: each compressor's GB/s against a device-to-device copy
#  8 topk       our top-k against the array library's own argpartition
set -uo pipefail
cd "$(dirname "$0")/.."
SELF="$PWD/jobscripts/gpu_check.sh"
DEVICE="${DEVICE:-gpu}"; OUT="${OUT:-runs/gpu_check}"; PY="${PYTHON:-python3}"
DATA="${DATA:-.gpu_data/tinyshakespeare.txt}"
[ -f "$DATA" ] || DATA=../shared/data/tinyshakespeare.txt
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
if ! "$PY" -c "from mpi4py import MPI" 2>/dev/null && ls .whl/mpich-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/mpich-*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH" LD_LIBRARY_PATH="/tmp/site/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
hpclm() { "$PY" -c "import sys; from hpclm.cli import main; sys.exit(main())" "$@"; }
MPIEXEC="$(dirname "$(command -v "$PY")")/mpiexec"
[ -x "$MPIEXEC" ] || MPIEXEC="$(command -v mpiexec || echo /tmp/site/bin/mpiexec)"
step() {   # name seconds command...: run, log, record the verdict
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name ($(date -u +%T))"
  timeout "$limit" bash "$SELF" --run "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local verdict=PASS; [ $rc -eq 0 ] || verdict="FAIL (rc $rc)"
  echo "$name: $verdict, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/$name.txt"
}
env_report() {
  nvidia-smi || true
  "$PY" -c "import sys, numpy; print(sys.version); print('numpy', numpy.__version__)"
  "$PY" -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())" || true
  "$PY" -c "import numba; print('numba', numba.__version__)"
  "$PY" -c "from mpi4py import MPI; import mpi4py; print('mpi4py', mpi4py.__version__, MPI.Get_library_version())"
  "$PY" -c "from hpclm.comm.buffers import cuda_aware; print('CUDA-aware MPI (MPIX_Query_cuda_support):', cuda_aware())"
  command -v nvcc && nvcc --version | tail -1
}
COMMON=(--config jobscripts/configs/shakespeare_char.toml --data "$DATA" --set train.eval_interval=100
        --set train.eval_batches=5 --set train.log_interval=50 --overwrite)
train_both() {
  hpclm train "${COMMON[@]}" --set train.max_steps=200 --set train.device="$DEVICE" --out "$OUT/runs/train_$DEVICE" &&
  hpclm train "${COMMON[@]}" --set train.max_steps=200 --set train.device=cpu --out "$OUT/runs/train_cpu_ref" &&
  "$PY" jobscripts/gpu_compare.py runs "$OUT/runs/train_$DEVICE" "$OUT/runs/train_cpu_ref" --steps 20 --rtol 1e-4
}
dp2() {   # 1 rank, then 2 ranks with device buffers handed to MPI (auto) and staged through the host (off)
  local twenty=(--set train.max_steps=20 --set train.log_interval=1)   # every step's loss the global batch's
  hpclm train "${COMMON[@]}" "${twenty[@]}" --set train.device="$DEVICE" --out "$OUT/runs/dp1" || return 1
  local rc=0 mode
  for mode in auto off; do
    "$MPIEXEC" -n 2 "$PY" -c "import sys; from hpclm.cli import main; sys.exit(main())" train "${COMMON[@]}" \
      "${twenty[@]}" --set train.device="$DEVICE" --set comm.cuda_aware=$mode --out "$OUT/runs/dp2_$mode" &&
    "$PY" jobscripts/gpu_compare.py runs "$OUT/runs/dp2_$mode" "$OUT/runs/dp1" --steps 20 --rtol 1e-5 || rc=1
  done
  return $rc
}
GPT2=(--n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 --vocab-size 50257 --batch-size 8)
[ "$DEVICE" = gpu ] || GPT2=(--n-layer 2 --n-head 4 --n-embd 128 --block-size 64 --vocab-size 512 --batch-size 4)
if [ "${1:-}" = --run ]; then   # one step's command, in its own time-boxed process (see step)
  shift
  "$@"
  exit
fi
: > "$OUT/summary.txt"
if [ "$DEVICE" = gpu ]; then
  step env 60 env_report
  step kernels 240 "$PY" -m pytest -q tests/gpu
fi
step model 120 "$PY" jobscripts/gpu_compare.py model --device "$DEVICE"
step train 240 train_both
step dp2 150 dp2
step bench_model 180 hpclm bench model --device "$DEVICE" "${GPT2[@]}" --steps 10 --kernels numba --json "$OUT/bench_model.json"
step bench_compress 180 hpclm bench compress --device "$DEVICE" --sizes 1M,16M,64M --kernels numba --json "$OUT/bench_compress.json"
step topk 60 "$PY" jobscripts/gpu_compare.py topk --device "$DEVICE"
cat "$OUT/summary.txt"
! grep -q FAIL "$OUT/summary.txt"
