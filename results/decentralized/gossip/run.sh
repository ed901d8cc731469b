#!/usr/bin/env bash
# Gossip SGD on the char recipe at P = 4, global batch 48 (12 rows per rank), STEPS steps each
# (default 512, the same settings as results/decentralized/local/run.sh's all-reduce baseline; the
# recipe's 2000 did not fit the time on a shared 2-core VM): D-PSGD on ring and exp2, AD-PSGD on ring.
# JOBS=3 runs the three at once. Then hpclm analyze and table.txt (bytes next to the ring all-reduce's).
cd "$(dirname "$0")/../../.."
source jobscripts/env.sh
source results/decentralized/run_all.sh
export HPCLM_OVERSUBSCRIBED=1 MPIR_CVAR_ENABLE_HEAVY_YIELD=1
NP=4; STEPS=${STEPS:-512}; JOBS=${JOBS:-1}; R=${R:-runs/decentralized/gossip}; OUT=results/decentralized/gossip
mkdir -p $R
common="--config jobscripts/configs/shakespeare_char.toml --data ../shared/data/tinyshakespeare.txt --overwrite
  --set train.batch_size=48 --set train.max_steps=$STEPS --set train.eval_interval=128 --set train.eval_batches=20
  --set train.log_interval=32 --set train.threads=1 --set comm.algorithm=ring
  --set parallel.sync=gossip --set gossip.consensus_every=16"
declare -A runs=(
  [ring_dpsgd]="--set gossip.topology=ring --set gossip.algorithm=dpsgd"
  [exp2_dpsgd]="--set gossip.topology=exp2 --set gossip.algorithm=dpsgd"
  [ring_adpsgd]="--set gossip.topology=ring --set gossip.algorithm=adpsgd"
)
names="ring_dpsgd exp2_dpsgd ring_adpsgd"
run_all "$names"
python $OUT/table.py $R $names > $OUT/table.txt
