"""Time to the same validation loss with one rank slowed 3x (run.sh): the target is the lowest
validation loss of the all-reduce run (all three run the same rounds and LR schedule); for each run
the first evaluation at or below it, its wall time (rank 0's elapsed time since the timing record
started) and round, the validation loss at the all-reduce run's end time (interpolated between
evaluations), the final one, the steps each rank took and the gradients' rows (samples) in all;
and loss_vs_time.png (validation loss against wall time).

    python results/decentralized/slow_rank/summarize.py RUNS_DIR OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np

from hpclm.timing.reader import read_run

RUNS = ("allreduce", "ps_async", "adpsgd")
LABELS = {"allreduce": "all-reduce (P = 4)", "ps_async": "async PS (S = 1, W = 3)", "adpsgd": "AD-PSGD (ring, P = 4)"}


def curve(run_dir):
    """(rounds (E,), wall seconds (E,), val loss (E,)) of the run's evaluations."""
    rec = read_run(run_dir)
    elapsed = dict(zip(rec.step.tolist(), rec.per_step["elapsed"].tolist()))
    steps = rec.evals["step"]
    return steps + 1, np.array([elapsed[int(s)] for s in steps]), rec.evals["val_loss"]


def main(runs_dir, out_dir):
    curves = {name: curve(runs_dir / name) for name in RUNS}
    rounds, times, losses = curves["allreduce"]
    target, end = float(losses.min()), float(times[-1])
    print(f"target: the all-reduce run's lowest validation loss, {target:.4f} (round {rounds[losses.argmin()]}); "
          f"'at {end:.0f} s': each run's validation loss when the all-reduce run ended")
    print(f"{'run':<25}{'time to target':>15}{'round':>7}{f'at {end:.0f} s':>9}{'final':>8}{'wall':>7}"
          f"{'samples':>9}  steps per rank")
    base = None
    for name in RUNS:
        r, t, v = curves[name]
        hit = np.nonzero(v <= target)[0]
        summary = json.loads((runs_dir / name / "summary.json").read_text())
        steps = summary.get("steps_per_rank", [int(r[-1])] * summary["world_size"])
        rows = 12 // len(steps)                                    # the global batch of 12, per rank
        if len(hit):
            seconds = t[hit[0]]
            base = seconds if name == "allreduce" else base
            reached = f"{seconds:.0f} s" + (f" ({base / seconds:.2f}x)" if name != "allreduce" else "")
            where = f"{r[hit[0]]:>7}"
        else:
            reached, where = "not reached", f"{'-':>7}"
        at_end = float(np.interp(end, t, v))
        print(f"{LABELS[name]:<25}{reached:>15}{where}{at_end:>9.4f}{v[-1]:>8.4f}{t[-1]:>6.0f}s"
              f"{sum(steps) * rows:>9}  {steps}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name in RUNS:
        _, t, v = curves[name]
        ax.plot(t, v, marker="o", markersize=3, label=LABELS[name])
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.3f}")
    ax.set_xlabel("wall time (s, rank 0)")
    ax.set_ylabel("validation loss")
    ax.set_title("char recipe, world rank 2 slowed 3x")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss_vs_time.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
