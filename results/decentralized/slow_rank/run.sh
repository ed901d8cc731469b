#!/bin/bash
# One rank slowed 3x (slow_rank.py: world rank 2 sleeps twice its step's time after every step), P = 4:
# all-reduce over 4 ranks, async PS with S = 1 server and W = 3 workers, AD-PSGD on the ring of 4 ranks,
# the char recipe with the same global batch of 12 (3 rows a rank, 4 a PS worker), STEPS rounds (default
# 480, the same LR schedule over them for all three; the asynchronous strategies' fast ranks take more
# steps in a round: train.run_ahead), evaluated every 20. The three run back to back; `uptime` before and
# after each goes to uptime.txt; summarize.py writes table.txt (time to the all-reduce run's lowest
# validation loss, the loss at its end time) and loss_vs_time.png.
# Run from the repository root: bash results/decentralized/slow_rank/run.sh
set -euo pipefail
source jobscripts/env.sh
export HPCLM_OVERSUBSCRIBED=1 OMP_NUM_THREADS=1
OUT=results/decentralized/slow_rank
RUNS=${RUNS:-/tmp/hpclm-slow-rank-runs}
STEPS=${STEPS:-480}
COMMON=(--config jobscripts/configs/shakespeare_char.toml --data ../shared/data/tinyshakespeare.txt
        --set train.max_steps=$STEPS --set train.eval_interval=20 --set train.eval_batches=10
        --set train.log_interval=20 --set train.threads=1 --overwrite)
declare -A FLAGS=(
  [allreduce]=""
  [ps_async]="--set parallel.sync=ps --set ps.servers=1 --set ps.mode=async"
  [adpsgd]="--set parallel.sync=gossip --set gossip.algorithm=adpsgd --set gossip.topology=ring"
)
echo "before: $(uptime)" > "$OUT/uptime.txt"
for name in allreduce ps_async adpsgd; do
  # shellcheck disable=SC2086
  mpiexec -n 4 python $OUT/slow_rank.py 2 train "${COMMON[@]}" --out "$RUNS/$name" ${FLAGS[$name]} > "$OUT/$name.log" 2>&1
  cp "$RUNS/$name/summary.json" "$OUT/${name}_summary.json"
  echo "after $name: $(uptime)" >> "$OUT/uptime.txt"
done
cp "$RUNS/ps_async/ps-server-0.json" "$OUT/ps_async_ps-server-0.json"
hpclm analyze "$RUNS/allreduce" "$RUNS/ps_async" "$RUNS/adpsgd" --skip-steps 5 > "$OUT/analyze.txt" 2>&1
python "$OUT/summarize.py" "$RUNS" "$OUT" | tee "$OUT/table.txt"
