#!/usr/bin/env bash
# Reproduces results/grid: the shakespeare_char recipe at P = 4 as dp 4 (4x1x1), dp 2 x pp 2
# (2x1x2) and tp 2 x pp 2 (1x2x2), the same global batch (12 x 64), so the same trajectory up to
# float32 round-off; then `hpclm analyze` of the three (time per region, bytes per group).
# Run from the repository root:
#   STEPS=300 bash results/grid/run.sh
# On a machine with fewer cores than ranks set HPCLM_OVERSUBSCRIBED=1 (waiting ranks yield).
export HPCLM_OVERSUBSCRIBED="${HPCLM_OVERSUBSCRIBED:-1}"
source jobscripts/env.sh
source jobscripts/char_run.sh
STEPS="${STEPS:-300}"; NP=4
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/grid}"; RUNS="${RUNS:-runs/grid}"
mkdir -p "$OUT" "$RUNS"
short=(--set train.max_steps="$STEPS" --set train.eval_interval=$((STEPS / 2)) --set train.eval_batches=20
       --set train.log_interval=50 --set train.threads=1)
char_run "$RUNS/dp4" "$OUT" "${short[@]}"
char_run "$RUNS/dp2_pp2" "$OUT" "${short[@]}" --set parallel.pp=2 --set parallel.micro_batches=2
char_run "$RUNS/tp2_pp2" "$OUT" "${short[@]}" --set parallel.tp=2 --set parallel.pp=2 --set parallel.micro_batches=2
hpclm analyze "$RUNS"/dp4 "$RUNS"/dp2_pp2 "$RUNS"/tp2_pp2 --csv "$OUT/grid.csv" | tee "$OUT/analyze.txt"
STEPS="$STEPS" python - <<'PY' | tee "$OUT/bytes_closed_form.txt"
# Closed forms of the bytes sent per rank per step (float32; an all-reduce of n elements over 2
# ranks is charged n, as MPI's and the ring's count it), the mean over the ranks as analyze reports
# it. The evaluation's forward passes (2 evaluations x 20 batches of 12 x 64 tokens) add tp bytes to
# the steps they run in (their pp messages are not counted); analyze averages over STEPS - 1 steps.
import os
from hpclm.config import build_config
from hpclm.model.stage import stage_layout
from hpclm.model.tensor_parallel import padded_vocab
from hpclm.parallel.build import stage_ranges
steps = int(os.environ["STEPS"])
for name, dp, tp in (("dp2_pp2", 2, 1), ("tp2_pp2", 1, 2)):
    cfg = build_config("jobscripts/configs/shakespeare_char.toml",
                       ["model.vocab_size=65", f"parallel.tp={tp}", "parallel.pp=2", "parallel.micro_batches=2"])
    m, C, L, item = 2, cfg.model.n_embd, cfg.model.n_layer, 4
    N = cfg.train.batch_size // (dp * m) * cfg.model.block_size           # token rows per micro-batch
    Ne = cfg.train.batch_size * cfg.model.block_size // dp                # per evaluation batch
    ranges = stage_ranges(cfg)
    rows = []
    for first, stop in ranges:
        blocks = sum(1 <= u <= L for u in range(first, stop))
        head, emb = stop == L + 2, first == 0
        # training: 4 (N, C) per block, the embedding's and the head's (N, C), the loss's (N,) + (2, N)
        train = m * (4 * blocks * N * C + emb * N * C + head * (N * C + 3 * N))
        # evaluation (forward only): 2 (N, C) per block, the embedding's, the loss's
        evals = 2 * 20 * (2 * blocks * Ne * C + emb * Ne * C + head * 3 * Ne)
        rows.append({"tp train": train * item if tp > 1 else 0,
                     "tp eval": evals * item / (steps - 1) if tp > 1 else 0,
                     "pp": m * N * C * item, "tied pair (other)": padded_vocab(65, tp) // tp * C * item,
                     "dp": stage_layout(cfg.model, first, stop)[0].size * item if dp > 1 else 0})
    mean = {k: sum(r[k] for r in rows) / len(rows) / 1e6 for k in rows[0]}
    print(f"{name}: stages {ranges}, MB sent per rank per step: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
full = build_config("jobscripts/configs/shakespeare_char.toml", ["model.vocab_size=65"]).model
size = stage_layout(full, 0, full.n_layer + 2)[0].size                      # the whole model
print(f"dp4: MB sent per rank per step: dp {2 * 3 / 4 * size * 4 / 1e6:.3f} (the ring: 2 (P-1)/P n)")
PY
