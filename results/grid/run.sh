#!/usr/bin/env bash
# Reproduces results/grid: the shakespeare_char recipe at P = 4 as dp 4 (4x1x1), dp 2 x pp 2
# (2x1x2) and tp 2 x pp 2 (1x2x2), the same global batch (12 x 64), so the same trajectory up to
# float32 round-off; then `hpclm analyze` of the three (time per region, bytes per group).
# Run from the repository root:
#   STEPS=300 bash results/grid/run.sh
# On a machine with fewer cores than ranks set HPCLM_OVERSUBSCRIBED=1 (waiting ranks yield).
export HPCLM_OVERSUBSCRIBED="${HPCLM_OVERSUBSCRIBED:-1}"
source jobscripts/env.sh
source jobscripts/char_run.sh
STEPS="${STEPS:-300}"; NP=4
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/grid}"; RUNS="${RUNS:-runs/grid}"
mkdir -p "$OUT" "$RUNS"
short=(--set train.max_steps="$STEPS" --set train.eval_interval=$((STEPS / 2)) --set train.eval_batches=20
       --set train.log_interval=50 --set train.threads=1)
char_run "$RUNS/dp4" "$OUT" "${short[@]}"
char_run "$RUNS/dp2_pp2" "$OUT" "${short[@]}" --set parallel.pp=2 --set parallel.micro_batches=2
char_run "$RUNS/tp2_pp2" "$OUT" "${short[@]}" --set parallel.tp=2 --set parallel.pp=2 --set parallel.micro_batches=2
hpclm analyze "$RUNS"/dp4 "$RUNS"/dp2_pp2 "$RUNS"/tp2_pp2 --csv "$OUT/grid.csv" | tee "$OUT/analyze.txt"
