#!/usr/bin/env bash
# Reproduces results/shakespeare_char: nanoGPT's small CPU recipe on tinyshakespeare, one process,
# one seed by default (SEEDS="1337 1 2" for more). Needs ../shared/data/tinyshakespeare.txt (or DATA=path/to/input.txt).
source "$(dirname "$0")/env.sh"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT=results/shakespeare_char
mkdir -p "$OUT"
for seed in ${SEEDS:-1337}; do
  hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" --set train.seed=$seed \
    --out runs/shakespeare_char_seed$seed --overwrite | tee "$OUT/seed$seed.log"
  cp runs/shakespeare_char_seed$seed/timing.h5 "$OUT/seed${seed}_timing.h5"
  cp runs/shakespeare_char_seed$seed/summary.json "$OUT/seed${seed}_summary.json"
done
