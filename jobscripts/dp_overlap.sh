#!/usr/bin/env bash
# Reproduces results/dp_overlap: a configuration where gradient communication is a large share of
# the step (10.6 M parameters = 42.7 MB of fp32 gradients per step, only 64 tokens per rank), on
# 2 ranks with ring all-reduce in 2 MiB buckets: overlapped with backward vs after backward.
source "$(dirname "$0")/env.sh"
OUT=results/dp_overlap
mkdir -p "$OUT"
common=(--set model.n_embd=384 --set model.n_layer=6 --set model.n_head=6 --set model.block_size=32
        --set train.batch_size=4 --set train.max_steps=${STEPS:-60} --set train.eval_interval=0
        --set train.log_interval=20 --set comm.algorithm=ring --set comm.bucket_mb=2)
for overlap in true false; do
  mpiexec -n 2 hpclm train "${common[@]}" --set comm.overlap=$overlap --out "runs/dp_overlap/overlap-$overlap"
done
hpclm analyze runs/dp_overlap/overlap-true runs/dp_overlap/overlap-false --csv "$OUT/table.csv" | tee "$OUT/analyze.txt"
