#!/usr/bin/env bash
# Reproduces results/tensor_parallel: the shakespeare_char recipe at tp = 1 and tp = 2 (same
# global batch, so the same trajectory up to float32 round-off); then n_embd 512 for a few
# steps at P = 1, tp = 2 and dp = 2 (step time, tokens/s, tp_comm share, bytes per group), and
# the closed form of the tp group's bytes per step next to the measured ones.
# Then the same n_embd 512 at P = 4: tp 4, dp 4 and tp 2 x dp 2 (P4=0 skips them).
#   STEPS=500 BIG_STEPS=30 OUT=results/tensor_parallel bash jobscripts/tensor_parallel.sh
source "$(dirname "$0")/env.sh"
source jobscripts/char_run.sh
STEPS="${STEPS:-500}"; BIG_STEPS="${BIG_STEPS:-30}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/tensor_parallel}"; RUNS="${RUNS:-runs/tensor_parallel}"
mkdir -p "$OUT" "$RUNS"
NP=1 char_run "$RUNS/char_tp1" "$OUT" --set train.max_steps="$STEPS"
NP=2 char_run "$RUNS/char_tp2" "$OUT" --set parallel.tp=2 --set train.max_steps="$STEPS"
big=(--set model.n_embd=512 --set model.n_head=8 --set train.max_steps="$BIG_STEPS" --set train.eval_batches=2
     --set train.eval_interval=0 --set train.log_interval=10 --set train.checkpoint_interval=0)
NP=1 char_run "$RUNS/n512_p1" "$OUT" "${big[@]}"
NP=2 char_run "$RUNS/n512_tp2" "$OUT" "${big[@]}" --set parallel.tp=2
NP=2 char_run "$RUNS/n512_dp2" "$OUT" "${big[@]}"
hpclm analyze "$RUNS"/char_tp1 "$RUNS"/char_tp2 "$RUNS"/n512_p1 "$RUNS"/n512_tp2 "$RUNS"/n512_dp2 \
  --csv "$OUT/tensor_parallel.csv" | tee "$OUT/analyze.txt"
# P = 4 (two ranks per core on a 2-core machine: HPCLM_OVERSUBSCRIBED=1 makes waiting ranks yield)
if [ "${P4:-1}" = 1 ]; then
  export HPCLM_OVERSUBSCRIBED=1 MPIR_CVAR_ENABLE_HEAVY_YIELD=1
  NP=4 char_run "$RUNS/n512_tp4" "$OUT" "${big[@]}" --set parallel.tp=4
  NP=4 char_run "$RUNS/n512_dp4" "$OUT" "${big[@]}"
  NP=4 char_run "$RUNS/n512_tp2_dp2" "$OUT" "${big[@]}" --set parallel.tp=2
  hpclm analyze "$RUNS"/n512_tp4 "$RUNS"/n512_dp4 "$RUNS"/n512_tp2_dp2 --csv "$OUT/tensor_parallel_p4.csv" \
    | tee "$OUT/analyze_p4.txt"
fi
python - <<'PY' | tee "$OUT/bytes_closed_form.txt"
# MPI's all-reduce is charged 2 (P-1)/P n bytes (hpclm.comm.counters); float32, one micro-batch per rank.
from hpclm.config import build_config
from hpclm.model.tensor_parallel import tp_message_elements
for n_embd, n_head in ((128, 4), (512, 8)):
    cfg = build_config("jobscripts/configs/shakespeare_char.toml",
                       [f"model.n_embd={n_embd}", f"model.n_head={n_head}", "model.vocab_size=65"])
    P = 2
    msgs = tp_message_elements(cfg.model, cfg.train.batch_size)
    sent = sum(2 * (P - 1) * n * 4 // P for n in msgs)
    print(f"n_embd {n_embd}, tp {P}: {len(msgs)} all-reduces per step, closed form {sent / 1e6:.3f} MB sent per rank per step")
PY
