"""Time to a fixed validation loss per method and link rate, from the runs of cluster_time_to_loss.sh.

    python jobscripts/cluster_time_to_loss.py --runs runs/cluster_time_to_loss --out results/cluster/time_to_loss

Runs are named RATE-METHOD. The target is the uncompressed ring's validation loss at its
first evaluation at or after --target-step (default: two thirds of its run) at the slowest rate; a run's time to target is
the elapsed wall time (rank 0, from the timing record) at its first evaluation at or below it.
Writes time_to_loss.csv, time_to_loss.md (table) and loss_vs_time.png (one panel per rate).
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from hpclm.timing.reader import read_run

METHODS = ["none", "fp16", "topk", "powersgd", "onebit_adam"]       # then localH, dilocoH by H
LABELS = {"none": "ring (uncompressed)", "fp16": "fp16", "topk": "top-k 1 %", "powersgd": "PowerSGD rank 4",
          "onebit_adam": "1-bit Adam"}


def label(method):
    """The table's name of a method: LABELS, or local SGD / DiLoCo with its H from localH / dilocoH."""
    for prefix, name in (("local", "local SGD"), ("diloco", "DiLoCo")):
        if method.startswith(prefix) and method[len(prefix):].isdigit():
            return f"{name} H = {method[len(prefix):]}"
    return LABELS[method]


def ordered(methods):
    """The methods in table order: METHODS' order, then local SGD and DiLoCo by H."""
    def key(m):
        if m in METHODS:
            return (METHODS.index(m), 0)
        return (len(METHODS) + m.startswith("diloco"), int(m.lstrip("abcdefghijklmnopqrstuvwxyz")))
    return sorted(methods, key=key)


def rate_bits(rate):
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    return next(float(rate[:-len(u)]) * f for u, f in units.items() if rate.endswith(u))


def curve(rec):
    """(eval steps, val losses, elapsed seconds at those steps)."""
    steps, elapsed = rec.step, rec.per_step["elapsed"]
    idx = np.minimum(np.searchsorted(steps, rec.evals["step"]), len(steps) - 1)
    return rec.evals["step"], rec.evals["val_loss"], elapsed[idx]


def comm_share(rec):
    """Exposed communication over step time, rank means summed over the steps after the first (a
    mean, not a median: local SGD communicates in one step of H)."""
    exposed = sum(rec.times[r] for r in ("comm", "comm_wait") if r in rec.times)
    return float(exposed.mean(axis=1)[1:].sum() / rec.per_rank["step_time"].mean(axis=1)[1:].sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/cluster_time_to_loss")
    ap.add_argument("--out", default="results/cluster/time_to_loss")
    ap.add_argument("--target-step", type=int, default=0, help="0: two thirds of the uncompressed run")
    args = ap.parse_args()
    runs = {}
    for d in sorted(Path(args.runs).iterdir()):
        if (d / "timing.h5").exists():
            rate, method = d.name.split("-", 1)
            runs[rate, method] = read_run(d)
    rates = sorted({r for r, _ in runs}, key=rate_bits)
    ref = runs[rates[0], "none"]
    ref_steps, ref_loss, _ = curve(ref)
    target_step = args.target_step or int(ref_steps[-1] * 2 // 3)
    at = min(np.searchsorted(ref_steps, target_step), len(ref_steps) - 1)   # first evaluation at or after it
    target, target_step = float(ref_loss[at]), int(ref_steps[at])
    rows = []
    for rate in rates:
        base = None
        for method in ordered(m for r, m in runs if r == rate):
            rec = runs[rate, method]
            steps, loss, t = curve(rec)
            hit = np.nonzero(loss <= target)[0]
            ttl = float(t[hit[0]]) if len(hit) else float("nan")
            base = ttl if method == "none" else base
            step_s = float(np.mean(rec.per_rank["step_time"].max(axis=1)[1:]))
            mb = float(np.mean(rec.per_rank["bytes_sent"].mean(axis=1)[1:])) / 1e6
            rows.append(dict(rate=rate, method=method, step_ms=round(step_s * 1e3, 1), sent_mb_per_step=round(mb, 3),
                             comm_share=round(comm_share(rec), 3), steps_to_target=int(steps[hit[0]]) if len(hit) else None,
                             time_to_target_s=round(ttl, 1), speedup_vs_ring=round(base / ttl, 2) if base and len(hit) else None,
                             final_val_loss=round(float(loss[-1]), 4), total_s=round(float(rec.per_step["elapsed"][-1]), 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "time_to_loss.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = ["rate", "method", "mean step ms", "mean MB sent/step/rank", "exposed comm share", "steps to target",
            "time to target s", "speed-up vs ring", "final val loss", "run s"]
    lines = [f"target: validation loss {target:.4f} (uncompressed ring at {rates[0]}, step {target_step})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in [r["rate"], label(r["method"]), r["step_ms"], r["sent_mb_per_step"],
                     f"{100 * r['comm_share']:.0f} %", r["steps_to_target"], r["time_to_target_s"], r["speedup_vs_ring"],
                     r["final_val_loss"], r["total_s"]]) + " |")
    (out / "time_to_loss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for method in ordered(m for r, m in runs if r == rate):
            _, loss, t = curve(runs[rate, method])
            ax.plot(t, loss, marker=".", label=label(method))
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:.3f}")
        ax.set(title=f"4 emulated hosts, {rate} links", xlabel="wall time (s)", ylabel="validation loss", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_time.png", dpi=120)


if __name__ == "__main__":
    main()
