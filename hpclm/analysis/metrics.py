"""Summary numbers of a timing record: region statistics, time fractions, communication, throughput,
stragglers, and scaling across runs. Pure NumPy on a RunRecord (hpclm.timing.reader).

Definitions (over the counted steps, i.e. after the first `skip_steps` warm-up rows):
- region statistics: each rank's median seconds per step, then min / median / max across ranks;
  a region that ran in fewer than half the counted steps (eval, checkpoint) is taken over the
  steps where it ran (its time per occurrence), and `region_steps` says in how many;
- fractions: sum over steps and ranks of the region group's time / sum of step_time;
- exposed communication: comm + comm_wait, the time the training thread was blocked on
  communication (inside blocking calls, or waiting for non-blocking ones);
- hidden communication: comm_async - comm_wait (>= 0), the time non-blocking communication was in
  flight while the rank did something else; only when the record has comm_async times;
- tokens/s: all ranks' tokens / sum over steps of the slowest rank's step_time;
- stragglers: ranks whose median step time exceeds the median across ranks by more than 5%;
- scaling: speedup = tokens/s over the smallest run's, efficiency = speedup / world-size ratio.
"""
from dataclasses import dataclass

import numpy as np

from hpclm.errors import UserError
from hpclm.timing import schema

STRAGGLER_THRESHOLD = 0.05


@dataclass
class Spread:
    """min / median / max across ranks of each rank's median over steps (seconds or bytes)."""
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, per_step_per_rank):
        per_rank = np.median(per_step_per_rank, axis=0)
        return cls(float(per_rank.min()), float(np.median(per_rank)), float(per_rank.max()))


@dataclass
class Straggler:
    rank: int
    median_step_time: float
    excess: float       # fraction above the median across ranks
    excess_s: float


@dataclass
class RunSummary:
    name: str
    world_size: int
    steps: int                  # counted steps
    skipped: int
    regions: dict               # region -> Spread (regions with any recorded time)
    region_steps: dict          # region -> steps it ran in, for regions taken per occurrence
    step_time: Spread
    compute_fraction: float
    comm_fraction: float        # exposed communication / step time
    other_fraction: float       # step time not in compute or exposed communication regions
    exposed_comm_s: float       # per step per rank (mean)
    hidden_comm_s: float | None  # per step per rank (mean); None without comm_async times
    tokens_per_s: float
    bytes_sent: float           # per step per rank (mean)
    bytes_recv: float
    compression_ratio: float | None  # bytes_uncompressed / bytes_sent
    stragglers: list
    final_loss: float           # training loss of the last logged step
    final_val_loss: float       # validation loss of the last evaluation (NaN if none)
    group_bytes_sent: dict = None   # group -> bytes per step per rank (mean), groups that moved any
    memory: dict = None         # kind -> bytes held, max over steps and ranks (schema version >= 2)


def _sparse_spread(times):
    """Spread of each rank's median over the steps where the region ran (time > 0). (S, P)."""
    per_rank = [np.median(column[column > 0]) for column in times.T if np.any(column > 0)]
    return Spread(float(np.min(per_rank)), float(np.median(per_rank)), float(np.max(per_rank)))


def _region_spreads(record, rows):
    """(region -> Spread, region -> steps) over the counted rows; sparse regions per occurrence."""
    spreads, steps = {}, {}
    for name, t in record.times.items():
        t = t[rows]
        ran = int(np.max(np.sum(t > 0, axis=0))) if t.size else 0
        if ran == 0:
            continue
        if 2 * ran < t.shape[0]:
            spreads[name], steps[name] = _sparse_spread(t), ran
        else:
            spreads[name] = Spread.of(t)
    return spreads, steps


def _region_sum(record, names, rows):
    total = np.zeros_like(record.per_rank["step_time"][rows])
    for name in names:
        if name in record.times:
            total += record.times[name][rows]
    return total


def _final_loss(record):
    for loss in (record.per_step["loss"], np.mean(record.per_rank["loss"], axis=1)):
        finite = loss[np.isfinite(loss)]
        if finite.size:
            return float(finite[-1])
    return float("nan")


def _final_val_loss(record):
    val = record.evals.get("val_loss", np.array([]))
    finite = val[np.isfinite(val)]
    return float(finite[-1]) if finite.size else float("nan")


def stragglers(step_time):
    """Ranks whose median step time exceeds the median across ranks by > STRAGGLER_THRESHOLD."""
    per_rank = np.median(step_time, axis=0)
    typical = float(np.median(per_rank))
    slow = [Straggler(r, float(t), float(t / typical - 1), float(t - typical))
            for r, t in enumerate(per_rank) if t > typical * (1 + STRAGGLER_THRESHOLD)]
    return sorted(slow, key=lambda s: -s.excess)


def summarize(record, skip_steps=1, name=None):
    """The RunSummary of `record` (called `name`, default the run directory's name), ignoring its
    first `skip_steps` rows (warm-up)."""
    if record.n_steps <= skip_steps:
        raise UserError(f"{record.path}: {record.n_steps} steps recorded, none left after skipping "
                        f"{skip_steps} warm-up steps (see --skip-steps)")
    rows = slice(skip_steps, None)
    step_time = record.per_rank["step_time"][rows]
    total_time = step_time.sum()
    compute = _region_sum(record, schema.COMPUTE_REGIONS, rows)
    exposed = _region_sum(record, schema.EXPOSED_COMM_REGIONS, rows)
    background = record.times.get(schema.BACKGROUND_COMM_REGION)
    hidden = None
    if background is not None and np.any(background[rows] > 0):
        wait = record.times.get("comm_wait", np.zeros_like(background))[rows]
        hidden = float(np.mean(np.maximum(background[rows] - wait, 0.0)))
    spreads, sparse_steps = _region_spreads(record, rows)
    sent = record.per_rank["bytes_sent"][rows]
    uncompressed = record.per_rank["bytes_uncompressed"][rows]
    return RunSummary(
        name=name or record.name, world_size=record.world_size, steps=step_time.shape[0], skipped=skip_steps,
        regions=spreads, region_steps=sparse_steps,
        step_time=Spread.of(step_time),
        compute_fraction=float(compute.sum() / total_time),
        comm_fraction=float(exposed.sum() / total_time),
        other_fraction=float(1 - (compute.sum() + exposed.sum()) / total_time),
        exposed_comm_s=float(exposed.mean()), hidden_comm_s=hidden,
        tokens_per_s=float(record.per_rank["tokens"][rows].sum() / step_time.max(axis=1).sum()),
        bytes_sent=float(sent.mean()), bytes_recv=float(record.per_rank["bytes_recv"][rows].mean()),
        compression_ratio=float(uncompressed.sum() / sent.sum()) if sent.sum() > 0 and uncompressed.sum() > 0 else None,
        stragglers=stragglers(step_time), final_loss=_final_loss(record), final_val_loss=_final_val_loss(record),
        group_bytes_sent={g: float(v["bytes_sent"][rows].mean()) for g, v in record.per_group.items()
                          if np.any(v["bytes_sent"][rows] > 0)},
        memory={k: float(v[rows].max()) for k, v in record.memory.items()})


def scaling(summaries):
    """(speedup, parallel efficiency) of each run against the run with the smallest world size."""
    base = min(summaries, key=lambda s: s.world_size)
    result = []
    for s in summaries:
        speedup = s.tokens_per_s / base.tokens_per_s if base.tokens_per_s > 0 else float("nan")
        result.append((speedup, speedup / (s.world_size / base.world_size)))
    return result
