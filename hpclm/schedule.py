"""`hpclm schedule`: print a pipeline schedule as a text diagram (hpclm.parallel.schedule), with its
bubble fraction against the closed form (p - 1) / (v m + p - 1) (v = 1 but for interleaved).

    hpclm schedule --pp 4 --micro-batches 8 --schedule 1f1b
    hpclm schedule --pp 4 --micro-batches 8 --schedule interleaved --chunks 2   # parallel.chunks = 2
    hpclm schedule --run RUN_DIR      # a pipeline run's schedule with its own per-stage op times

With --run, the schedule runs on the ideal machine with each stage's measured forward and backward
time per op: the bubble that the schedule implies for these (unequal) stages, next to the run's
measured bubble and the closed form for equal stages. Measured minus this is what execution adds
(hand-offs between the stages, waits, the spread of op times).
"""
from hpclm.analysis.pipeline import bubble, closed_form, format_bubble
from hpclm.parallel.schedule import SCHEDULES, bubble_fraction, diagram, peak_in_flight, schedule, simulate
from hpclm.timing.reader import read_run


def add_arguments(p):
    p.add_argument("--pp", type=int, default=4, help="pipeline stages (default %(default)s)")
    p.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step (default %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default="1f1b", help="default %(default)s")
    p.add_argument("--chunks", type=int, default=2,
                   help="model chunks per stage (parallel.chunks), interleaved only (default %(default)s)")
    p.add_argument("--backward", type=float, default=2.0, help="backward time in forward times (default %(default)s)")
    p.add_argument("--run", metavar="RUN_DIR", help="a pipeline run: its schedule with the run's measured per-stage "
                   "op times, next to its measured bubble (the other options are taken from the run)")


def with_stage_times(b):
    """The bubble fraction of PipelineBubble b's schedule on the ideal machine with its stages' op times."""
    return bubble_fraction(simulate(schedule(b.schedule, b.pp, b.micro_batches, b.chunks), b.forward_op, b.backward_op))


def run(args):
    if args.run:
        b = bubble(read_run(args.run))
        ms = lambda xs: " ".join(f"{1e3 * x:.2f}" for x in xs)          # noqa: E731
        print(format_bubble(b).strip())
        print(f"  the schedule with the run's stage times (ms per op: forward {ms(b.forward_op)}, backward "
              f"{ms(b.backward_op)}): bubble {with_stage_times(b):.3f}")
        return 0
    chunks = args.chunks if args.schedule == "interleaved" else 1
    ops = schedule(args.schedule, args.pp, args.micro_batches, chunks)
    slots = simulate(ops, forward=1.0 / chunks, backward=args.backward / chunks)
    p, m = args.pp, args.micro_batches
    print(f"{args.schedule}: {p} stages, {m} micro-batches" + (f", {chunks} chunks per stage" if chunks > 1 else "")
          + "; digits: forward of micro-batch j (mod 10), letters: its backward (a = 0)")
    print(diagram(slots))
    form = "(p-1)/(m+p-1)" if chunks == 1 else "(p-1)/(v m+p-1)"
    print(f"bubble {bubble_fraction(slots):.3f} (closed form {form} = {closed_form(p, m, chunks):.3f}); "
          f"{'micro-batch chunks' if chunks > 1 else 'micro-batches'} in flight per stage: "
          f"{[peak_in_flight(s) for s in ops]}")
    return 0
