#!/usr/bin/env bash
# Reproduces results/compression: the shakespeare_char recipe (jobscripts/configs/shakespeare_char.toml)
# on 4 ranks with each gradient compressor, then one comparison (time breakdown, loss against step /
# wall time / MB sent per rank, compression ratio) with hpclm analyze.
#   NP=4 STEPS=2000 COMPRESSORS="none fp16 topk ..." OUT=results/compression jobscripts/compression.sh
# STEPS=50 is a quick check that every compressor runs (the default sweep is 2000 steps each).
source "$(dirname "$0")/env.sh"
source jobscripts/char_run.sh
NP="${NP:-4}"
STEPS="${STEPS:-2000}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/compression}"
RUNS="${RUNS:-runs/compression}"
COMPRESSORS="${COMPRESSORS:-none fp16 bf16 int8 qsgd terngrad signsgd ef_sign topk randomk threshold powersgd kmeans}"
EVAL=$(( STEPS < 250 ? STEPS : 250 ))
mkdir -p "$OUT" "$RUNS"
dirs=()
for name in $COMPRESSORS; do
  run="$RUNS/$name"
  char_run "$run" "$OUT" --set compress.name="$name" --set train.max_steps="$STEPS" \
    --set train.eval_interval="$EVAL" --set train.log_interval=$(( STEPS < 100 ? 10 : 100 )) ${EXTRA_SETS:-}
  dirs+=("$run")
done
hpclm analyze "${dirs[@]}" --plots "$OUT" --csv "$OUT/compression.csv" | tee "$OUT/analyze.txt"
