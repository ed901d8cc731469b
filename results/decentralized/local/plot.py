"""Figure and table of the local SGD / DiLoCo runs (run.sh): loss against step and against the bytes
each rank sent (cumulative, mean over ranks), and per run the final validation loss, bytes per rank
per step, and how both compare with the all-reduce run.

    python plot.py RUNS_DIR OUT_DIR allreduce local_h4 ...   # the first name is the reference
"""
import sys
from pathlib import Path

import matplotlib
import numpy as np

from hpclm.timing.reader import read_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(y, k=16):
    return np.convolve(y, np.ones(k) / k, mode="valid") if len(y) >= k else y


def main(runs, out, names):
    records = {n: read_run(Path(runs) / n) for n in names}
    fig, (by_step, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    rows, ref = [], None
    for name, rec in records.items():
        sent = rec.per_rank["bytes_sent"].mean(axis=1)                       # (S,) mean over ranks
        cum = np.cumsum(sent)
        train = smooth(rec.per_rank["loss"].mean(axis=1))
        line, = by_step.plot(rec.step[len(rec.step) - len(train):] + 1, train, lw=0.8, alpha=0.6)
        ev_step, ev_loss = rec.evals["step"], rec.evals["val_loss"]
        by_step.plot(ev_step + 1, ev_loss, "o-", color=line.get_color(), label=name)
        at = np.searchsorted(rec.step, ev_step)
        by_bytes.plot(np.maximum(cum[at], 1) / 2**20, ev_loss, "o-", color=line.get_color(), label=name)
        val, per_step = float(ev_loss[-1]), float(sent.mean())
        ref = ref or (val, per_step)
        rows.append((name, int(rec.step[-1]) + 1, val, 100 * (val / ref[0] - 1), per_step,
                     ref[1] / per_step if per_step else float("inf")))
    by_step.set(xlabel="step", ylabel="loss (lines: train, smoothed; dots: validation)", title="loss vs step")
    by_bytes.set(xscale="log", xlabel="MiB sent per rank (cumulative)", ylabel="validation loss",
                 title="validation loss vs bytes sent")
    for ax in (by_step, by_bytes):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(out) / "loss.png", dpi=120)
    with open(Path(out) / "table.csv", "w") as f:
        f.write("run,steps,final_val_loss,val_vs_allreduce_percent,bytes_sent_per_rank_per_step,fewer_bytes_x\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]},{r[2]:.4f},{r[3]:+.2f},{r[4]:.0f},{r[5]:.1f}\n")
    print(open(Path(out) / "table.csv").read())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
