"""Tables and figures of results/pipeline from the runs of run.sh (read through hpclm's reader).

    python results/pipeline/tables.py bubble RUNS OUT   # bubble.csv, bubble.md, bubble.png
    python results/pipeline/tables.py interleaved RUNS OUT   # bubble_interleaved.csv, .md: v = 2 next to 1f1b
    python results/pipeline/tables.py memory RUNS OUT   # memory.md: peak activation bytes per stage
"""
import sys
from pathlib import Path

import numpy as np

from hpclm.analysis.pipeline import bubble, bubble_figure, closed_form
from hpclm.config import ModelConfig
from hpclm.parallel.memory import activation_bytes
from hpclm.parallel.schedule import peak_in_flight, schedule
from hpclm.timing.reader import read_run

SKIP = 2          # warm-up steps left out


def bubbles(runs, out):
    rows = []
    for s in ("gpipe", "1f1b"):
        for p in (2, 4):
            for m in (1, 2, 4, 8, 16):
                b = bubble(read_run(runs / f"bubble_{s}_p{p}_m{m}"), SKIP)
                rows.append((s, p, m, b.measured, b.per_stage))
    with open(out / "bubble.csv", "w") as fh:
        fh.write("schedule,p,m,closed_form,measured,relative_error,per_stage\n")
        for s, p, m, x, per in rows:
            cf = closed_form(p, m)
            fh.write(f"{s},{p},{m},{cf:.4f},{x:.4f},{(x - cf) / cf:+.3f},{' '.join(f'{v:.4f}' for v in per)}\n")
    with open(out / "bubble.md", "w") as fh:
        fh.write("| schedule | p | m | (p-1)/(m+p-1) | measured | rel. diff | per stage |\n|---|---|---|---|---|---|---|\n")
        for s, p, m, x, per in rows:
            cf = closed_form(p, m)
            fh.write(f"| {s} | {p} | {m} | {cf:.3f} | {x:.3f} | {(x - cf) / cf:+.1%} | "
                     f"{' '.join(f'{v:.3f}' for v in per)} |\n")
    bubble_figure(out / "bubble.png", [r[:4] for r in rows])


def interleaved(runs, out):
    """Each op size and (p, m): 1f1b and interleaved (v = 2) on the same model, their runs taken in
    turn; the measured bubble of each repetition and their mean, against (p - 1)/(v m + p - 1)."""
    rows = []
    for size in ("small", "large"):
        for p in (2, 4):
            for m in (4, 8):
                for s, v in (("1f1b", 1), ("interleaved", 2)):
                    got = [bubble(read_run(r), SKIP) for r in sorted(runs.glob(f"inter_{size}_{s}_p{p}_m{m}_r*"))]
                    rows.append((size, s, v, p, m, closed_form(p, m, v), [g.measured for g in got],
                                 np.mean([g.per_stage for g in got], axis=0)))
    with open(out / "bubble_interleaved.csv", "w") as fh:
        fh.write("ops,schedule,chunks,p,m,closed_form,measured_mean,relative_error,measured_reps,per_stage_mean\n")
        for size, s, v, p, m, cf, reps, per in rows:
            x = float(np.mean(reps))
            fh.write(f"{size},{s},{v},{p},{m},{cf:.4f},{x:.4f},{(x - cf) / cf:+.3f},"
                     f"{' '.join(f'{r:.4f}' for r in reps)},{' '.join(f'{q:.4f}' for q in per)}\n")
    with open(out / "bubble_interleaved.md", "w") as fh:
        fh.write("| ops | schedule | v | p | m | (p-1)/(vm+p-1) | measured (mean) | rel. diff | repetitions | "
                 "per stage (mean) |\n|---|---|---|---|---|---|---|---|---|---|\n")
        for size, s, v, p, m, cf, reps, per in rows:
            x = float(np.mean(reps))
            fh.write(f"| {size} | {s} | {v} | {p} | {m} | {cf:.3f} | {x:.3f} | {(x - cf) / cf:+.1%} | "
                     f"{' '.join(f'{r:.3f}' for r in reps)} | {' '.join(f'{q:.3f}' for q in per)} |\n")


def memory(runs, out):
    lines = ["| schedule | recompute | stage | in flight | measured peak (bytes) | closed form (bytes) |",
             "|---|---|---|---|---|---|"]
    for s in ("gpipe", "1f1b", "interleaved"):
        for r in ("none", "block"):
            if not (runs / f"memory_{s}_{r}").is_dir():
                continue
            rec = read_run(runs / f"memory_{s}_{r}")
            par = rec.meta["config_json"]["parallel"]
            mod = rec.meta["config_json"]["model"]
            p, m, v = int(par["pp"]), int(par["micro_batches"]), int(par.get("chunks", 1))
            model = ModelConfig(**mod)
            b, T = rec.meta["config_json"]["train"]["batch_size"] // m, mod["block_size"]
            peak = np.nanmax(rec.memory["activations"], axis=0)            # (P,) each rank's peak
            for st in range(p):
                def chunk_bytes(c):          # one micro-batch's caches in chunk c of stage st
                    return activation_bytes(model, b, T, 4, recompute=r == "block", n_layer=model.n_layer // (p * v),
                                            head=st == p - 1 and c == v - 1, embedding=st == 0 and c == 0)
                ops = schedule(s, p, m, v)[st]
                fly, form = peak_in_flight(ops), peak_in_flight(ops, chunk_bytes)
                name = s if v == 1 else f"{s} v={v}"
                lines.append(f"| {name} | {r} | {st} | {fly} | {int(peak[st]):,} | {form:,} |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    what, runs, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"bubble": bubbles, "interleaved": interleaved, "memory": memory}[what](runs, out)
