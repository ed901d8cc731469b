#!/usr/bin/env bash
# Reproduces results/pipeline (run from the repository root): the measured pipeline bubble of gpipe
# and 1f1b at p = 2, 4 and m = 1..16 against (p - 1)/(m + p - 1), of interleaved (v = 2 chunks per
# rank) against (p - 1)/(v m + p - 1) next to 1f1b on the same model, peak activation bytes per stage
# (gpipe, 1f1b, with and without parallel.recompute=block), the timeline figure of one run, and
# the char recipe at pp = 2. Equal stages: n_layer = p (one block per stage), micro-batch 2 x 64
# tokens, n_embd 128, float32, one thread per rank. p = 4 runs 4 ranks on the 2 cores
# (HPCLM_OVERSUBSCRIBED=1: MPI waits yield the core).
set -e
source jobscripts/env.sh
export HPCLM_OVERSUBSCRIBED=1
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT=results/pipeline
RUNS=runs/pipeline
STEPS="${STEPS:-10}"
mkdir -p "$OUT" "$RUNS"
common() {   # p m schedule [n_layer, default p]: a tiny pipeline of equal stages (interleaved: chunks
             # of one block, n_layer / p of them per rank)
  local layers=${4:-$1} chunks=1
  [ "$3" = interleaved ] && chunks=$((layers / $1))
  echo --data "$DATA" --set data.tokenizer=char --set model.n_layer=$layers --set model.n_head=4 \
    --set model.n_embd=128 --set model.block_size=64 --set train.batch_size=$((2 * $2)) \
    --set parallel.pp=$1 --set parallel.micro_batches=$2 --set parallel.schedule=$3 --set parallel.chunks=$chunks \
    --set train.max_steps=$STEPS --set train.eval_interval=0 --set train.eval_batches=1 \
    --set train.log_interval=100 --set train.threads=1
}
if [ -z "${SKIP_BUBBLE:-}" ]; then
  for p in 2 4; do for m in 1 2 4 8 16; do for s in gpipe 1f1b; do
    mpiexec -n $p hpclm train $(common $p $m $s) --out $RUNS/bubble_${s}_p${p}_m${m} --overwrite > /dev/null
  done; done; done
  python results/pipeline/tables.py bubble $RUNS "$OUT"
fi
if [ -z "${SKIP_INTERLEAVED:-}" ]; then   # interleaved (v = 2) and 1f1b on the same 2p-block model, A/B in turn:
  # small ops (the sweep's micro-batch of 2 x 64 tokens, n_embd 128) and large ops (4 x 128 tokens, n_embd 256)
  LARGE="--set model.n_embd=256 --set model.block_size=128"
  for size in ${SIZES:-small large}; do
  reps=3; [ $size = large ] && reps=2
  for rep in $(seq $reps); do for p in 2 4; do for m in 4 8; do for s in 1f1b interleaved; do
    extra=""; [ $size = large ] && extra="$LARGE --set train.batch_size=$((4 * m)) --set train.max_steps=6"
    mpiexec -n $p hpclm train $(common $p $m $s $((2 * p))) $extra \
      --out $RUNS/inter_${size}_${s}_p${p}_m${m}_r${rep} --overwrite > /dev/null
  done; done; done; done
  done
  python results/pipeline/tables.py interleaved $RUNS "$OUT"
fi
if [ -z "${SKIP_MEMORY:-}" ]; then
  for s in gpipe 1f1b interleaved; do for r in none block; do
    layers=4; [ $s = interleaved ] && layers=8                 # interleaved: 2 chunks of one block per rank
    mpiexec -n 4 hpclm train $(common 4 8 $s $layers) --set parallel.recompute=$r --set train.trace=3:4 \
      --out $RUNS/memory_${s}_${r} --overwrite > /dev/null
  done; done
  python results/pipeline/tables.py memory $RUNS "$OUT"
  hpclm analyze $RUNS/memory_1f1b_none --plots $RUNS/plots > "$OUT/analyze_1f1b_p4_m8.txt"
  cp $RUNS/plots/timeline_memory_1f1b_none.png "$OUT/timeline_1f1b_p4_m8.png"
  cp $RUNS/memory_1f1b_none/trace.json "$OUT/trace_1f1b_p4_m8.json"
  hpclm analyze $RUNS/memory_gpipe_none --plots $RUNS/plots > "$OUT/analyze_gpipe_p4_m8.txt"
  cp $RUNS/plots/timeline_memory_gpipe_none.png "$OUT/timeline_gpipe_p4_m8.png"
fi
if [ -z "${SKIP_CHAR:-}" ]; then   # the char recipe (results/shakespeare_char, seed 1337) at pp = 2
  mpiexec -n 2 hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" \
    --set train.seed=1337 --set parallel.pp=2 --set parallel.micro_batches=2 --set train.threads=1 \
    --out runs/pipeline_char_pp2 --overwrite > "$OUT/char_pp2.log" 2>&1
  cp runs/pipeline_char_pp2/summary.json "$OUT/char_pp2_summary.json"
  cp runs/pipeline_char_pp2/timing.h5 "$OUT/char_pp2_timing.h5"
fi
