#!/usr/bin/env bash
# The main job of the README: sets itself up, then trains a small GPT data-parallel on 2 MPI ranks
# on the built-in generated corpus, writes the timing record, and prints its analysis.
# Extra arguments go to `hpclm train` (e.g. --set train.max_steps=2000). A rerun replaces the
# previous quickstart run (--overwrite).
source "$(dirname "$0")/env.sh"
RUN_DIR="${RUN_DIR:-runs/quickstart}"
NP="${NP:-2}"
mpiexec -n "$NP" hpclm train --out "$RUN_DIR" --overwrite --set train.max_steps=300 --set train.eval_interval=100 \
  --set train.log_interval=50 --set comm.algorithm=ring "$@"
hpclm analyze "$RUN_DIR"
hpclm sample --checkpoint "$RUN_DIR" --prompt "the " --tokens 200 --top-k 5
