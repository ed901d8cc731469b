#!/usr/bin/env bash
# Reproduces results/compression_warmup: topk 1 %, ef_sign (1-bit all-reduce) and powersgd rank 4 on
# the shakespeare_char recipe (4 ranks, 2000 steps) with compress.warmup_steps=${WARMUP:-200}
# (uncompressed averaging for the first steps, as DGC and 1-bit Adam do), next to the uncompressed
# run of jobscripts/compression.sh (runs/compression/none; run that first).
source "$(dirname "$0")/env.sh"
NP="${NP:-4}"
WARMUP="${WARMUP:-200}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT=results/compression_warmup
mkdir -p "$OUT"
dirs=(runs/compression/none)
for name in topk ef_sign powersgd; do
  run="runs/compression_warmup/$name"
  mpiexec -n "$NP" hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" \
    --set compress.name="$name" --set compress.warmup_steps="$WARMUP" --out "$run" | tee "$OUT/$name.log"
  cp "$run/summary.json" "$OUT/${name}_summary.json"
  dirs+=("$run")
done
hpclm analyze "${dirs[@]}" --plots "$OUT" --csv "$OUT/compression_warmup.csv" | tee "$OUT/analyze.txt"
