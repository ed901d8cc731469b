# Sourced by the quickstart scripts: make ./.venv with hpclm, an MPI from PyPI (mpich) and the
# test tools, once; later calls only re-install when setup.py changed. Needs only python3 + pip.
set -euo pipefail
HPCLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HPCLM_VENV:-$HPCLM_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[hpclm] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" 2>/dev/null || {
    "$PYTHON" -m pip install --user --quiet virtualenv && "$PYTHON" -m virtualenv --quiet "$VENV"; }
fi
STAMP="$VENV/.hpclm-installed"
if [ ! -f "$STAMP" ] || [ "$HPCLM_ROOT/setup.py" -nt "$STAMP" ]; then
  echo "[hpclm] installing hpclm with mpich, mpi4py, numpy, h5py, pytest, matplotlib into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$HPCLM_ROOT[mpich,test]"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$HPCLM_ROOT"
# MPICH busy-polls while waiting. With more ranks than cores (e.g. -n 4 on 2 cores) set
# HPCLM_OVERSUBSCRIBED=1 to make waiting ranks yield (nanosleep): better for throughput of
# oversubscribed test runs, but it adds ~0.1-1 ms latency per wait, so benchmarks leave it off.
if [ "${HPCLM_OVERSUBSCRIBED:-0}" = "1" ]; then export MPIR_CVAR_ENABLE_HEAVY_YIELD=1; fi
# MPICH moves intra-node messages of >= 8 KiB with its single-copy CMA protocol (process_vm_readv:
# a system call and a handshake per message). On the development VM that costs more than the eager
# shared-memory copy up to tens of KiB (8 KiB recursive doubling: 20.6 us with CMA, 10.9 us
# without; results/collectives/README.md), so the eager path is kept up to 64 KiB. Only MPICH
# reads this variable (a cluster's own MPI ignores it); set it before sourcing to override.
export MPIR_CVAR_CH4_IPC_CMA_P2P_THRESHOLD="${MPIR_CVAR_CH4_IPC_CMA_P2P_THRESHOLD:-65536}"
