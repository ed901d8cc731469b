#!/usr/bin/env bash
# Reproduces results/dp: the char recipe (global batch 12) data-parallel on P = 1, 2, 4 ranks of
# this machine (ring all-reduce), then `hpclm analyze` over the three runs with plots and CSV.
# Needs ../shared/data/tinyshakespeare.txt (or DATA=path/to/input.txt). RANKS="1 2 4" to choose.
source "$(dirname "$0")/env.sh"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT=results/dp
mkdir -p "$OUT"
runs=()
for P in ${RANKS:-1 2 4}; do
  mpiexec -n "$P" hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" \
    --set comm.algorithm=ring --out "runs/dp/P$P" --overwrite | tee "$OUT/train-P$P.log"
  cp "runs/dp/P$P/summary.json" "$OUT/summary-P$P.json"
  runs+=("runs/dp/P$P")
done
hpclm analyze "${runs[@]}" --plots "$OUT" --csv "$OUT/table.csv" | tee "$OUT/analyze.txt"
