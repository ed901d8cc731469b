#!/bin/bash
# One worker slowed 3x (slow_rank.py: world rank 2 sleeps twice its step's time after every step):
# all-reduce over 3 ranks against async PS with S = 1 and the same 3 workers, on the char recipe,
# STEPS steps (default 100), evaluated every 25. Prints the validation loss against wall time.
# Run from the repository root: bash results/decentralized/ps/slow_rank.sh
set -euo pipefail
source jobscripts/env.sh
export HPCLM_OVERSUBSCRIBED=1 OMP_NUM_THREADS=1
OUT=results/decentralized/ps
RUNS=${RUNS:-/tmp/hpclm-ps-runs}
STEPS=${STEPS:-100}
COMMON=(--config jobscripts/configs/shakespeare_char.toml --data ../shared/data/tinyshakespeare.txt
        --set train.max_steps=$STEPS --set train.eval_interval=25 --set train.eval_batches=10
        --set train.log_interval=25 --set train.threads=1 --overwrite)
mpiexec -n 3 python $OUT/slow_rank.py 2 train "${COMMON[@]}" --out "$RUNS/slow_allreduce" > "$OUT/slow_allreduce.log" 2>&1
mpiexec -n 4 python $OUT/slow_rank.py 2 train "${COMMON[@]}" --out "$RUNS/slow_ps_async" \
    --set parallel.sync=ps --set ps.servers=1 --set ps.mode=async > "$OUT/slow_ps_async.log" 2>&1
python - "$RUNS" <<'PY' | tee "$OUT/slow_rank.txt"
import sys
from pathlib import Path
import numpy as np
from hpclm.timing.reader import read_run
for name in ("slow_allreduce", "slow_ps_async"):
    rec = read_run(Path(sys.argv[1]) / name)
    elapsed = dict(zip(rec.step.tolist(), rec.per_step["elapsed"].tolist()))
    points = ", ".join(f"step {int(s) + 1} {elapsed[int(s)]:.0f} s {v:.4f}" for s, v in zip(rec.evals["step"], rec.evals["val_loss"]))
    print(f"{name}: validation loss at (step, wall time): {points}")
PY
