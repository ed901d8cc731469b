#!/usr/bin/env bash
# Reproduces results/compression_onebit_adam: 1-bit Adam (compress.onebit_adam: ef_sign's 1-bit
# all-reduce carries AdamW's momentum after the warm-up, v frozen at the same step) on the
# shakespeare_char recipe, 4 ranks, 2000 steps, with warm-ups of ${WARMUPS:-200 100} steps, analysed
# next to the uncompressed run (runs/compression/none, from jobscripts/compression.sh) and the
# gradient-compressing ef_sign and none_frozen_v runs of results/compression_frozen_v
# (FREEZE=200 bash jobscripts/compression_warmup.sh). Run those first. SEED=1 (or 2, ...) trains
# with that train.seed instead of the recipe's 1337 (run names get a _seedN suffix; no analysis);
# NP=2 runs on 2 ranks (suffix _p2; no analysis).
# REFERENCE=1 also trains the uncompressed recipe with v frozen after W updates (none_frozen_vW).
source "$(dirname "$0")/env.sh"
source jobscripts/char_run.sh
NP="${NP:-4}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/compression_onebit_adam}"; RUNS="${RUNS:-runs/onebit_adam}"
mkdir -p "$OUT"
dirs=(runs/compression/none runs/compression_frozen_v/none_frozen_v runs/compression_frozen_v/ef_sign)
for w in ${WARMUPS:-200 100}; do
  suffix="${SEED:+_seed$SEED}"; [ "$NP" = 4 ] || suffix="${suffix}_p$NP"
  name="onebit_adam_w$w$suffix"; run="$RUNS/$name"
  char_run "$run" "$OUT" --set compress.name=ef_sign --set compress.onebit_adam=true \
    --set compress.warmup_steps="$w" --set optim.freeze_variance_step="$w" --set train.seed="${SEED:-1337}"
  dirs+=("$run")
  if [ "${REFERENCE:-0}" = 1 ]; then
    ref="none_frozen_v$w$suffix"
    char_run "$RUNS/$ref" "$OUT" --set optim.freeze_variance_step="$w" --set train.seed="${SEED:-1337}"
    dirs+=("$RUNS/$ref")
  fi
done
[ -n "${SEED:-}" ] || [ "$NP" != 4 ] || hpclm analyze "${dirs[@]}" --plots "$OUT" --csv "$OUT/compression_onebit_adam.csv" | tee "$OUT/analyze.txt"
