#!/bin/bash
# P = 8 next to P = 4 with a small model (char recipe with model.n_layer 2, model.n_embd 32): all-reduce,
# sync PS (S = 1: W = 3 and 7 workers), D-PSGD gossip on ring and exp2, local SGD H = 16; global batch
# 168 at both P (divisible by 3, 4, 7 and 8: 42 / 21 rows an all-reduce rank, 56 / 24 a PS worker),
# STEPS steps (default 300). P = 8 oversubscribes the 2 cores 4x (HPCLM_OVERSUBSCRIBED=1). The runs go
# one after another; table.py writes table.txt (final validation loss, bytes per rank per step and at the
# busiest rank, the PS server from its report). Run from the repository root: bash results/decentralized/p8/run.sh
set -euo pipefail
source jobscripts/env.sh
export HPCLM_OVERSUBSCRIBED=1 OMP_NUM_THREADS=1
OUT=results/decentralized/p8
RUNS=${RUNS:-/tmp/hpclm-p8-runs}
STEPS=${STEPS:-300}
COMMON=(--config jobscripts/configs/shakespeare_char.toml --data ../shared/data/tinyshakespeare.txt
        --set model.n_layer=2 --set model.n_embd=32 --set train.batch_size=168
        --set train.max_steps=$STEPS --set train.eval_interval=100 --set train.eval_batches=10
        --set train.log_interval=50 --set train.threads=1 --overwrite)
declare -A FLAGS=(
  [allreduce]=""
  [ps_sync]="--set parallel.sync=ps --set ps.servers=1 --set ps.mode=sync"
  [ring]="--set parallel.sync=gossip --set gossip.topology=ring"
  [exp2]="--set parallel.sync=gossip --set gossip.topology=exp2"
  [local16]="--set parallel.sync=local --set local.steps=16"
  [ps_async]="--set parallel.sync=ps --set ps.servers=1 --set ps.mode=async"
  [ps_ssp2]="--set parallel.sync=ps --set ps.servers=1 --set ps.mode=ssp --set ps.staleness=2"
  [local4]="--set parallel.sync=local --set local.steps=4"
  [diloco16]="--set parallel.sync=local --set local.outer=diloco --set local.steps=16"
  [diloco64]="--set parallel.sync=local --set local.outer=diloco --set local.steps=64"
)
NAMES=${NAMES:-"allreduce ps_sync ring exp2 local16"}   # the rest: NAMES="ps_async ps_ssp2 local4 diloco16 diloco64" TABLE=table2.txt
TABLE=${TABLE:-table.txt}
echo "before ($NAMES): $(uptime)" >> "$OUT/uptime.txt"
for P in 4 8; do
  for name in $NAMES; do
    # shellcheck disable=SC2086
    mpiexec -n $P hpclm train "${COMMON[@]}" --out "$RUNS/p${P}_$name" ${FLAGS[$name]} > "$OUT/p${P}_$name.log" 2>&1
    cp "$RUNS/p${P}_$name/summary.json" "$OUT/p${P}_${name}_summary.json"
  done
  for name in $NAMES; do
    for f in "$RUNS/p${P}_$name"/ps-server-*.json; do [ -f "$f" ] && cp "$f" "$OUT/p${P}_${name}_$(basename "$f")"; done
  done
done
echo "after ($NAMES): $(uptime)" >> "$OUT/uptime.txt"
python "$OUT/table.py" "$RUNS" $NAMES | tee "$OUT/$TABLE"
