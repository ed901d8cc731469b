"""`hpclm schedule`: print a pipeline schedule as a text diagram (hpclm.parallel.schedule), with its
bubble fraction against the closed form (p - 1) / (v m + p - 1) (v = 1 but for interleaved).

    hpclm schedule --pp 4 --micro-batches 8 --schedule 1f1b
    hpclm schedule --pp 4 --micro-batches 8 --schedule interleaved --chunks 2   # parallel.chunks = 2
"""
from hpclm.analysis.pipeline import closed_form
from hpclm.parallel.schedule import SCHEDULES, bubble_fraction, diagram, peak_in_flight, schedule, simulate


def add_arguments(p):
    p.add_argument("--pp", type=int, default=4, help="pipeline stages (default %(default)s)")
    p.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step (default %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default="1f1b", help="default %(default)s")
    p.add_argument("--chunks", type=int, default=2,
                   help="model chunks per stage (parallel.chunks), interleaved only (default %(default)s)")
    p.add_argument("--backward", type=float, default=2.0, help="backward time in forward times (default %(default)s)")


def run(args):
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
