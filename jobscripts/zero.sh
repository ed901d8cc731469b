#!/usr/bin/env bash
# Reproduces results/zero: the shakespeare_char recipe on 4 ranks with ZeRO stages 0-3 (ring
# reduce-scatter / all-gather), then hpclm analyze (time, bytes per group, memory held per rank)
# and hpclm memory's prediction for the same config and world.
#   NP=4 STAGES="0 1 2 3" STEPS=2000 OUT=results/zero bash jobscripts/zero.sh
source "$(dirname "$0")/env.sh"
source jobscripts/char_run.sh
NP="${NP:-4}"
STEPS="${STEPS:-2000}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/zero}"; RUNS="${RUNS:-runs/zero}"
mkdir -p "$OUT" "$RUNS"
dirs=()
for z in ${STAGES:-0 1 2 3}; do
  char_run "$RUNS/zero$z" "$OUT" --set parallel.zero="$z" --set comm.algorithm=ring --set train.max_steps="$STEPS"
  dirs+=("$RUNS/zero$z")
done
hpclm analyze "${dirs[@]}" --csv "$OUT/zero.csv" | tee "$OUT/analyze.txt"
hpclm memory --config jobscripts/configs/shakespeare_char.toml --set model.vocab_size=65 --world "$NP" \
  | tee "$OUT/memory_predicted.txt"
