"""Pipeline runs (parallel.pp > 1) from their records: the measured bubble, and the timeline figure.

    bubble(record, skip_steps=1)        # PipelineBubble: the whole pipeline's and each stage's
    closed_form(p, m, v=1)              # (p - 1) / (v m + p - 1): GPipe and 1F1B (v = 1), interleaved
                                        # over v chunks per stage, balanced stages
    timeline(path, trace_json, pp)      # stages x time, a box per forward / backward per micro-batch

Measured bubble of one step: every rank of a pipeline starts the step together (the previous
step ended in collectives over it), and stage s computes busy_s = forward + backward and its
window is busy_s + pp_wait_s (pp_wait: waiting for a neighbour, the sends' completion included).
The pipeline's span is the longest window; the bubble is 1 - sum_s busy_s / (p x span), the idle
share of the p x span stage-seconds (as hpclm.parallel.schedule.bubble_fraction counts it on an
ideal machine), and stage s's own is 1 - busy_s / span (dp replicas averaged; with dp > 1 the
span is the longest window of all replicas). Each is the median over the counted steps.

The closed form assumes equal stages. Measured stages differ (the first holds the embedding, the
last the head and loss, cores differ in speed), and a stage that computes less idles more at
every micro-batch. The PipelineBubble also carries each stage's forward and backward time per op
(the median step's busy time over its v m ops): `hpclm schedule --run RUN_DIR` runs the schedule
on the ideal machine of hpclm.parallel.schedule with them, the bubble that the schedule itself
implies for these stages (with equal stages: the closed form). The slowest stage's own idle
share (`slowest_idle`) is the bubble without the imbalance: the others idle that much and, at every
micro-batch, the difference between their op time and its.

The timeline reads RUN_DIR/trace.json (train.trace): on each stage the k-th forward (backward)
region of a step is micro-batch k's, as GPipe and 1F1B run their micro-batches in order (the
interleaved schedule's v m forwards per stage are numbered 0..v m - 1 in the order they ran).
"""
import json
from dataclasses import dataclass

import numpy as np

from hpclm.errors import UserError
from hpclm.timing import schema


@dataclass
class PipelineBubble:
    pp: int
    micro_batches: int
    schedule: str
    measured: float              # the pipeline's bubble (median over steps)
    per_stage: list              # stage s's idle share of the span (median over steps)
    chunks: int = 1              # model chunks per stage (interleaved)
    forward_op: list = None      # (p,) stage s's forward time per op, seconds (median step / (v m))
    backward_op: list = None     # (p,) the same for its backward

    @property
    def expected(self):
        return closed_form(self.pp, self.micro_batches, self.chunks)

    @property
    def slowest_stage(self):
        """The stage with the longest forward + backward per op: the one every other stage waits for."""
        return int(np.argmax(np.add(self.forward_op, self.backward_op)))

    @property
    def slowest_idle(self):
        """The slowest stage's idle share of the span: the schedule's fill and drain alone (a faster
        stage also idles at every micro-batch, waiting for it; with equal stages every stage's idle
        is the closed form, and unequal ones leave the slowest stage at or below it)."""
        return self.per_stage[self.slowest_stage]


def closed_form(p, m, v=1):
    """Bubble fraction of GPipe and 1F1B (v = 1) with p balanced stages and m micro-batches, and of
    the interleaved schedule over v chunks per stage (Narayanan et al. 2021, §2.2: the bubble time
    (p - 1) / v of a micro-batch's, so a fraction (p - 1) / (v m + p - 1) of the step)."""
    return (p - 1) / (v * m + p - 1)


def stage_of_rank(layout, rank):
    """The pipeline stage of a world rank (hpclm.comm.layout: rank = pp_idx * dp * tp + ...)."""
    return rank // (layout["dp"] * layout["tp"])


def bubble(record, skip_steps=1):
    """The PipelineBubble of a pipeline run's RunRecord; UserError if the run had no pipeline."""
    layout, cfg = record.meta.get("layout_json") or {}, record.meta.get("config_json") or {}
    pp = int(layout.get("pp", 1))
    if pp < 2 or "pp_wait" not in record.times:
        raise UserError(f"{record.path}: not a pipeline run (parallel.pp = {pp})")
    rows = slice(min(skip_steps, max(record.n_steps - 1, 0)), None)
    busy = record.times["forward"][rows] + record.times["backward"][rows]         # (S, P)
    window = busy + record.times["pp_wait"][rows]                                # (S, P)
    span = window.max(axis=1)                                                    # (S,) the longest window
    stages = np.array([stage_of_rank(layout, r) for r in range(record.world_size)])
    per_stage = [float(np.median(1.0 - busy[:, stages == s].mean(axis=1) / span)) for s in range(pp)]
    whole = 1.0 - busy.sum(axis=1) / (record.world_size * span)
    par = cfg.get("parallel", {})
    name, m, v = str(par.get("schedule", "?")), int(par.get("micro_batches", 1)), int(par.get("chunks", 1))
    ops_per_step = m * v
    per_op = [[float(np.median(record.times[kind][rows][:, stages == s].mean(axis=1))) / ops_per_step
               for s in range(pp)] for kind in ("forward", "backward")]               # (2, p) seconds
    return PipelineBubble(pp, m, name, float(np.median(whole)), per_stage, v, *per_op)


def format_bubble(b):
    stages = " ".join(f"{x:.3f}" for x in b.per_stage)
    form = "(p-1)/(m+p-1)" if b.chunks == 1 else f"(p-1)/(v m+p-1), v {b.chunks}"
    return (f"  pipeline bubble: measured {b.measured:.3f} ({b.schedule}, p {b.pp}, m {b.micro_batches}; "
            f"closed form {form} {b.expected:.3f}); per stage {stages}; slowest stage {b.slowest_stage} "
            f"idle {b.slowest_idle:.3f}")


def trace_boxes(trace_json, pp, layout=None):
    """{stage: [(kind, micro, start s, end s)]} of the first traced step's forward ("F"), backward
    ("B") and pp_wait ("W", micro -1) regions on the first dp replica of each stage."""
    layout = layout or {"dp": 1, "tp": 1}
    events = [e for e in trace_json.get("traceEvents", []) if e.get("ph") == "X"]
    by_rank = {}
    for e in events:
        by_rank.setdefault(e["tid"], []).append(e)
    boxes = {}
    for rank, evs in sorted(by_rank.items()):
        s = stage_of_rank(layout, rank)
        if s in boxes or s >= pp:
            continue
        evs.sort(key=lambda e: e["ts"])
        fwd = [e for e in evs if e["name"] == "forward"]
        bwd = [e for e in evs if e["name"] == "backward"]
        m = len(bwd)
        for e in evs:                                       # the step's micro-batches: until the optimizer
            if e["name"] == "optimizer":
                m = sum(1 for b in bwd if b["ts"] < e["ts"])
                break
        if m == 0:
            raise UserError(f"trace: rank {rank} has no backward region in the traced steps")
        t0, t1 = fwd[0]["ts"], bwd[m - 1]["ts"] + bwd[m - 1]["dur"]
        out = [("F", j, e["ts"], e["ts"] + e["dur"]) for j, e in enumerate(fwd[:m])]
        out += [("B", j, e["ts"], e["ts"] + e["dur"]) for j, e in enumerate(bwd[:m])]
        out += [("W", -1, e["ts"], e["ts"] + e["dur"]) for e in evs
                if e["name"] == "pp_wait" and t0 - 1 <= e["ts"] <= t1]
        boxes[s] = [(k, j, a * 1e-6, b * 1e-6) for k, j, a, b in out]
    if len(boxes) != pp:
        raise UserError(f"trace: found {len(boxes)} of the {pp} stages")
    return boxes


def timeline(path, trace_path, record):
    """The pipeline timeline figure (GPipe / Megatron papers' style) of the run's first traced step."""
    from hpclm.analysis.plots import _pyplot
    layout = record.meta.get("layout_json") or {}
    pp = int(layout.get("pp", 1))
    try:
        trace = json.loads(trace_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the trace {trace_path}: {exc}") from None
    boxes = trace_boxes(trace, pp, layout)
    origin = min(a for bs in boxes.values() for _, _, a, _ in bs)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 0.7 * pp + 1.6))
    cmap = plt.get_cmap("tab20")
    for s, bs in boxes.items():
        for kind, j, a, b in bs:
            a, b = (a - origin) * 1e3, (b - origin) * 1e3                     # ms
            if kind == "W":
                ax.barh(s, b - a, left=a, height=0.3, color="0.85", edgecolor="none")
                continue
            color = cmap((2 * j) % 20) if kind == "F" else cmap((2 * j + 1) % 20)
            ax.barh(s, b - a, left=a, height=0.8, color=color, edgecolor="k", linewidth=0.5,
                    hatch=None if kind == "F" else "//")
            ax.text((a + b) / 2, s, f"{kind}{j}", ha="center", va="center", fontsize=6)
    par = (record.meta.get("config_json") or {}).get("parallel", {})
    ax.set_yticks(range(pp), [f"stage {s}" for s in range(pp)])
    ax.invert_yaxis()
    ax.set_xlabel("time in the step (ms)")
    ax.set_title(f"{record.name}: {par.get('schedule', '?')}, p {pp}, m {par.get('micro_batches', '?')} "
                 f"(F forward, B backward hatched, grey: pp_wait)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_timelines(out_dir, records, summaries):
    """timeline_<run>.png for every pipeline run whose directory holds a trace; the paths written."""
    written = []
    for record, summary in zip(records, summaries):
        trace = record.path.parent / schema.TRACE_FILE_NAME
        if int((record.meta.get("layout_json") or {}).get("pp", 1)) > 1 and trace.exists():
            written.append(out_dir / f"timeline_{summary.name}.png")
            timeline(written[-1], trace, record)
    return written


def bubble_figure(path, rows):
    """rows: [(schedule, p, m, measured)]: measured bubble against m, the closed form as lines."""
    from hpclm.analysis.plots import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in sorted({r[1] for r in rows}):
        ms = np.array(sorted({r[2] for r in rows if r[1] == p}))
        line, = ax.plot(ms, [closed_form(p, m) for m in ms], "-", lw=1, label=f"(p-1)/(m+p-1), p {p}")
        for sched, marker in (("gpipe", "o"), ("1f1b", "s")):
            pts = sorted((r[2], r[3]) for r in rows if r[1] == p and r[0] == sched)
            if pts:
                ax.plot(*zip(*pts), marker, color=line.get_color(), mfc="none" if sched == "1f1b" else None,
                        label=f"measured {sched}, p {p}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble fraction")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
