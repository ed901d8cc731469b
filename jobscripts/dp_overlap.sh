#!/usr/bin/env bash
# Reproduces results/dp_overlap: bucketed all-reduce overlapped with backward vs after backward, on
# 2 ranks, in configurations where the gradient is large for the compute (10.6 M parameters =
# 42.7 MB of fp32 gradients per step, only 64 or 32 tokens per rank), ring all-reduce in 2 MiB
# buckets (21 buckets), with AdamW and with momentum SGD (whose update is cheaper, so
# communication is a larger share of the step).
source "$(dirname "$0")/env.sh"
OUT=results/dp_overlap
mkdir -p "$OUT"
common=(--set model.n_embd=384 --set model.n_layer=6 --set model.n_head=6 --set model.block_size=32
        --set train.max_steps=${STEPS:-60} --set train.eval_interval=0 --set train.log_interval=20
        --set comm.algorithm=ring --set comm.bucket_mb=2)
for opt in adamw momentum; do
  extra=(--set train.batch_size=4)
  [ "$opt" = momentum ] && extra=(--set train.batch_size=2 --set optim.name=momentum --set optim.lr=0.01)
  for overlap in true false; do
    mpiexec -n 2 hpclm train "${common[@]}" "${extra[@]}" --set comm.overlap=$overlap \
      --out "runs/dp_overlap/$opt-overlap-$overlap" --overwrite
  done
  hpclm analyze "runs/dp_overlap/$opt-overlap-true" "runs/dp_overlap/$opt-overlap-false" \
    --csv "$OUT/$opt.csv" | tee "$OUT/$opt.txt"
done
