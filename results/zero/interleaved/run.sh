#!/usr/bin/env bash
# ZeRO stages 0-3 interleaved in one sequence (3 rounds x 120 steps, char recipe, 4 ranks), then hpclm analyze.
cd "$(dirname "$0")/../../.."
source jobscripts/env.sh
NP=4; DATA=../shared/data/tinyshakespeare.txt; R=${R:-runs/zero_interleaved}
mkdir -p $R
for round in 1 2 3; do
  for z in 0 1 2 3; do
    mpiexec -n $NP hpclm train --config jobscripts/configs/shakespeare_char.toml --data $DATA --out $R/z${z}_r$round --overwrite \
      --set parallel.zero=$z --set comm.algorithm=ring --set train.max_steps=120 --set train.eval_interval=0 \
      --set train.log_interval=120 > $R/z${z}_r$round.log 2>&1
  done
done
dirs=""; for round in 1 2 3; do for z in 0 1 2 3; do dirs="$dirs $R/z${z}_r$round"; done; done
hpclm analyze $dirs --skip-steps 5 > $R/analyze.txt 2>&1
echo done > $R/DONE
