#!/usr/bin/env bash
# Reproduces results/compression_warmup and results/compression_frozen_v: topk 1 %, ef_sign (1-bit
# all-reduce) and powersgd rank 4 on the shakespeare_char recipe (4 ranks, 2000 steps) with
# compress.warmup_steps=${WARMUP:-200} (uncompressed averaging for the first steps, as DGC and
# 1-bit Adam do), next to the uncompressed run of jobscripts/compression.sh (runs/compression/none;
# run that first).
#   FREEZE=200 also freezes AdamW's second moment after that many updates (optim.freeze_variance_step,
#   1-bit Adam's recipe), runs the uncompressed recipe with the same setting as a second reference,
#   and writes to results/compression_frozen_v.
#   NAMES chooses the runs (default "topk ef_sign powersgd", with FREEZE also "none"); EXTRA_SETS adds
#   --set options to every run; OUT and RUNS move the results and the run directories.
source "$(dirname "$0")/env.sh"
source jobscripts/char_run.sh
NP="${NP:-4}"
WARMUP="${WARMUP:-200}"
FREEZE="${FREEZE:-0}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
if [ "$FREEZE" -gt 0 ]; then
  OUT="${OUT:-results/compression_frozen_v}"; RUNS="${RUNS:-runs/compression_frozen_v}"
  NAMES="${NAMES:-none topk ef_sign powersgd}"
else
  OUT="${OUT:-results/compression_warmup}"; RUNS="${RUNS:-runs/compression_warmup}"
  NAMES="${NAMES:-topk ef_sign powersgd}"
fi
mkdir -p "$OUT"
dirs=(runs/compression/none)
for name in $NAMES; do
  run="$RUNS/$name"; [ "$name" = none ] && run="$RUNS/none_frozen_v"   # not the baseline's name
  char_run "$run" "$OUT" --set compress.name="$name" --set compress.warmup_steps="$WARMUP" \
    --set optim.freeze_variance_step="$FREEZE" ${EXTRA_SETS:-}
  dirs+=("$run")
done
hpclm analyze "${dirs[@]}" --plots "$OUT" --csv "$OUT/$(basename "$OUT").csv" | tee "$OUT/analyze.txt"
