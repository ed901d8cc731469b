#!/usr/bin/env bash
# The measured bubble at p = 2 with compute-bound stages (results/pipeline/compute_bound/README.md):
# n_embd 1024, 8 heads, one block per (virtual) stage (n_layer 2, or 4 for interleaved v = 2), micro-batch
# 2 x 64 tokens, 5 steps, one thread per rank, two ranks on the two cores (no HPCLM_OVERSUBSCRIBED:
# its yielding waits add latency per message). Run from the repository root on an idle machine.
set -u
source jobscripts/env.sh
RUNS=${RUNS:-runs/bubble_final}; OUT=results/pipeline/compute_bound
mkdir -p "$RUNS"
for m in 1 2 4 8 16; do for s in gpipe 1f1b interleaved; do
  [ $s = interleaved ] && [ $m = 1 ] && continue
  extra=""; nl=2
  [ $s = interleaved ] && extra="--set parallel.chunks=2" && nl=4
  mpiexec -n 2 hpclm train --data ../shared/data/tinyshakespeare.txt --set data.tokenizer=char --set model.n_layer=$nl \
    --set model.n_head=8 --set model.n_embd=1024 --set model.block_size=64 --set train.batch_size=$((2 * m)) \
    --set parallel.pp=2 --set parallel.micro_batches=$m --set parallel.schedule=$s $extra \
    --set train.max_steps=5 --set train.eval_interval=0 --set train.eval_batches=1 --set train.log_interval=100 \
    --set train.threads=1 --out "$RUNS/bubble_${s}_p2_m${m}" --overwrite > /dev/null 2>&1
  echo "$s m=$m: $(hpclm schedule --run "$RUNS/bubble_${s}_p2_m${m}" | tr -s ' ' | tr '\n' ' ')"
done; done | tee "$OUT/bubble.txt"
