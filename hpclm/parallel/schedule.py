"""Pipeline schedules as data: for each stage, the ordered list of its operations, produced by pure
functions (no MPI) and checked by a small simulator before any executor runs them.

    ops = schedule("1f1b", stages=4, micro_batches=8)     # ops[s] = [Op("F", 0, 0), Op("F", 1, 0), ...]
    timeline = simulate(ops, forward=1, backward=2)        # when each op runs, given dependencies
    print(diagram(timeline))                               # one text row per stage

An `Op(kind, micro, chunk)` is the forward ("F") or backward ("B") of one micro-batch through one
model chunk of the stage (chunk 0 unless interleaved). Dependencies: F(j) of virtual stage k needs
F(j) of virtual stage k-1; B(j) of virtual stage k needs B(j) of k+1, and F(j) of the last virtual
stage precedes its own B(j). Virtual stage k of an interleaved schedule with v chunks on p ranks
is chunk k // p on rank k % p (Narayanan et al. 2021, §2.2).

    gpipe        all forwards, then all backwards (Huang et al. 2019): m micro-batches' activations
                 are alive on every stage at the peak.
    1f1b         PipeDream-flush: p - s - 1 warm-up forwards on stage s, then one forward and one
                 backward alternately, then the remaining backwards: at most p - s micro-batches alive.
    interleaved  1F1B over v chunks per rank (Megatron-LM): m must be a multiple of p; the bubble
                 shrinks by v.

With forward and backward times f and b per micro-batch and stage (balanced), GPipe and 1F1B take
(m + p - 1)(f + b) and their bubble fraction is (p - 1) / (m + p - 1). Interleaved over v chunks
(each f / v and b / v) takes (m + (p - 1) / v)(f + b): the bubble fraction (p - 1) / (v m + p - 1)
(Narayanan et al. 2021, §2.2: the bubble time shrinks by v). Its first stage holds at most
min(v m, 2 (p - 1) + (v - 1) p + 1) micro-batch chunks' activations (Megatron-LM's warm-up + 1).
"""
from typing import NamedTuple

from hpclm.errors import UserError

SCHEDULES = ("gpipe", "1f1b", "interleaved")


class Op(NamedTuple):
    kind: str        # "F" or "B"
    micro: int
    chunk: int = 0


def _check(stages, micro_batches, chunks):
    if stages < 1 or micro_batches < 1 or chunks < 1:
        raise UserError(f"schedule: stages ({stages}), micro_batches ({micro_batches}) and chunks ({chunks}) "
                        f"must be >= 1")


def gpipe(stages, micro_batches):
    _check(stages, micro_batches, 1)
    one = [Op("F", j) for j in range(micro_batches)] + [Op("B", j) for j in range(micro_batches)]
    return [list(one) for _ in range(stages)]


def one_f_one_b(stages, micro_batches):
    _check(stages, micro_batches, 1)
    out = []
    for s in range(stages):
        warm = min(stages - s - 1, micro_batches)
        ops = [Op("F", j) for j in range(warm)]
        for i in range(micro_batches - warm):
            ops += [Op("F", warm + i), Op("B", i)]
        ops += [Op("B", j) for j in range(micro_batches - warm, micro_batches)]
        out.append(ops)
    return out


def interleaved(stages, micro_batches, chunks):
    """Megatron-LM's interleaved 1F1B: rank s holds chunks c = 0..v-1 (virtual stage c p + s)."""
    _check(stages, micro_batches, chunks)
    p, m, v = stages, micro_batches, chunks
    if m % p:
        raise UserError(f"schedule interleaved: micro_batches ({m}) must be a multiple of the stages ({p})")
    total = m * v

    def forward(k):                     # the k-th forward on a rank: groups of p micro-batches per chunk
        return Op("F", (k // (p * v)) * p + k % p, (k // p) % v)

    def backward(k):                    # backwards visit the chunks in reverse
        return Op("B", (k // (p * v)) * p + k % p, v - 1 - (k // p) % v)

    out = []
    for s in range(p):
        warm = min((p - s - 1) * 2 + (v - 1) * p, total)
        ops = [forward(k) for k in range(warm)]
        for i in range(total - warm):
            ops += [forward(warm + i), backward(i)]
        ops += [backward(k) for k in range(total - warm, total)]
        out.append(ops)
    return out


def schedule(name, stages, micro_batches, chunks=1):
    """The per-stage op lists of schedule `name` (see the module docstring)."""
    if name in ("gpipe", "1f1b") and chunks != 1:
        raise UserError(f"schedule {name} runs one model chunk per stage, not {chunks} (interleaved runs several)")
    if name == "gpipe":
        return gpipe(stages, micro_batches)
    if name == "1f1b":
        return one_f_one_b(stages, micro_batches)
    if name == "interleaved":
        return interleaved(stages, micro_batches, chunks)
    raise UserError(f"schedule: unknown {name!r}; choose one of {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------------- simulation
class Slot(NamedTuple):
    stage: int
    op: Op
    start: float
    end: float


def simulate(ops, forward=1.0, backward=2.0):
    """Run the schedule on an ideal machine (each op takes `forward` or `backward`, transfers are
    free): [Slot] in execution order. forward / backward: one time for every stage, or a sequence
    of p, stage s's (unbalanced stages). Raises UserError if the schedule deadlocks or misses an op."""
    p = len(ops)
    forward = list(forward) if hasattr(forward, "__len__") else [forward] * p      # (p,) per op
    backward = list(backward) if hasattr(backward, "__len__") else [backward] * p
    v = 1 + max(op.chunk for stage in ops for op in stage)
    last = p * v - 1
    done = {}                                  # (kind, micro, virtual stage) -> end time
    clock = [0.0] * p
    position = [0] * p
    slots = []
    while any(position[s] < len(ops[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            if position[s] == len(ops[s]):
                continue
            op = ops[s][position[s]]
            k = op.chunk * p + s                   # virtual stage
            if op.kind == "F":
                need = [("F", op.micro, k - 1)] if k > 0 else []
            else:
                need = [("B", op.micro, k + 1)] if k < last else []
                need.append(("F", op.micro, k))
            if all(n in done for n in need):
                start = max([clock[s]] + [done[n] for n in need])
                end = start + (forward[s] if op.kind == "F" else backward[s])
                done[(op.kind, op.micro, k)] = end
                clock[s] = end
                position[s] += 1
                slots.append(Slot(s, op, start, end))
                progressed = True
        if not progressed:
            stuck = {s: ops[s][position[s]] for s in range(p) if position[s] < len(ops[s])}
            raise UserError(f"schedule deadlocks: every stage waits ({stuck})")
    return slots


def bubble_fraction(slots):
    """Idle time over total time, summed over stages, from the first start to the last end."""
    p = 1 + max(x.stage for x in slots)
    span = max(x.end for x in slots) - min(x.start for x in slots)
    busy = sum(x.end - x.start for x in slots)
    return 1.0 - busy / (p * span)


def peak_in_flight(ops_of_stage, size=None):
    """The most micro-batch chunks whose forward ran and whose backward has not (live activations);
    with size(chunk) (e.g. the bytes of one micro-batch's caches in that chunk) the largest sum of
    their sizes instead of their count (chunks of one rank differ: the embedding, the head)."""
    size = size or (lambda chunk: 1)
    alive = peak = 0
    for op in ops_of_stage:
        alive += size(op.chunk) if op.kind == "F" else -size(op.chunk)
        peak = max(peak, alive)
    return peak


def diagram(slots, unit=None):
    """One text row per stage, one character per time unit: a forward as its micro-batch's digit
    (mod 10), a backward as its letter (a = micro-batch 0), '.' where the stage idles."""
    unit = unit or min(x.end - x.start for x in slots)
    p = 1 + max(x.stage for x in slots)
    width = int(round(max(x.end for x in slots) / unit))
    rows = [["."] * width for _ in range(p)]
    for x in slots:
        label = f"{x.op.micro % 10}" if x.op.kind == "F" else chr(ord("a") + x.op.micro % 26)
        for t in range(int(round(x.start / unit)), int(round(x.end / unit))):
            rows[x.stage][t] = label
    return "\n".join(f"stage {s}: " + "".join(r) for s, r in enumerate(rows))
