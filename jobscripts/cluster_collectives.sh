#!/usr/bin/env bash
# Reproduces results/cluster/collectives (needs root): on emulated hosts with RATE (1gbit) links,
#  1. the link check: point-to-point goodput and RTT between two hosts at 100mbit and 1gbit;
#  2. the cost-model check: 3 x `bench collectives --calibrate` (ring, recursive doubling; model fitted
#     in the same sweep) on 4 hosts x 1 rank;
#  3. ring vs recursive doubling vs hierarchical vs MPI's own on 4 hosts x 1 and 2 hosts x 2 ranks.
#   RATE=1gbit SIZES=4,1K,64K:16M ITERS=10 bash jobscripts/cluster_collectives.sh
source "$(dirname "$0")/env.sh"
RATE="${RATE:-1gbit}"; SIZES="${SIZES:-4,1K,64K:16M}"; ITERS="${ITERS:-10}"
OUT="${OUT:-results/cluster/collectives}"
mkdir -p "$OUT/model-check"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
trap 'hpclm cluster down --name coll >/dev/null' EXIT
for rate in 100mbit 1gbit; do
  hpclm cluster run --name coll --hosts 2 --rate "$rate" -- python -m hpclm.cluster.p2p --sizes 64K,1M,16M --bytes 32M \
    | tail -1 > "$OUT/p2p-$rate.json"
done
hpclm cluster up --name coll --hosts 4 --rate "$RATE"
for k in 1 2 3; do
  hpclm cluster run --name coll -- hpclm bench collectives --calibrate --sizes "$SIZES" --iters "$ITERS" \
    --algorithms ring,recursive_doubling \
    --txt "$OUT/model-check/samerun-4x1-run$k.txt" --json "$OUT/model-check/samerun-4x1-run$k.json" > /dev/null
done
hpclm cluster run --name coll -- hpclm bench collectives --check --sizes "$SIZES" --iters "$ITERS" \
  --algorithms ring,recursive_doubling,hierarchical --ranks-per-node 1 \
  --txt "$OUT/allreduce-4x1.txt" --json "$OUT/allreduce-4x1.json" > /dev/null
hpclm cluster down --name coll
hpclm cluster up --name coll --hosts 2 --rate "$RATE"
hpclm cluster run --name coll --ranks-per-host 2 -- hpclm bench collectives --check --sizes "$SIZES" --iters "$ITERS" \
  --algorithms ring,recursive_doubling,hierarchical --ranks-per-node 2 \
  --txt "$OUT/allreduce-2x2.txt" --json "$OUT/allreduce-2x2.json" > /dev/null
python jobscripts/cluster_model_check.py "$OUT/model-check"/samerun-4x1-run*.json | tee "$OUT/model-check/summary.txt"
