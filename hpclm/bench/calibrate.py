"""`hpclm bench calibrate`: fit the cost model's alpha, beta, gamma on this machine, for this P.

Every quantity is the *median* over repetitions of the max over ranks of one timed call, the
same statistic `hpclm bench collectives` reports (a minimum would describe an idle machine,
not the one the collectives run on). All ranks measure at once, so at `-n 4` on two cores the
four ranks share cores and memory bandwidth as they do in a 4-rank all-reduce.

alpha: the per-step cost of our own point-to-point step, i.e. one `send_recv_reduce` round with
       a partner (rank ^ 1) exactly as ring/Rabenseifner run it (Irecv/Isend/Wait + a numpy
       reduction + the Python around them), at small sizes (<= 1 KiB) where the bytes cost
       nothing; alpha = median of those step times.
beta:  from Sendrecv exchanges with the partner at >= 64 KiB: t - t0 = n*beta, with t0 the
       Sendrecv time at <= 1 KiB (its own latency); fitted separately below and above the
       cache threshold found for gamma (beta, beta_large).
gamma: every rank times `add(a, b, out=a)` on n-byte arrays at >= 64 KiB; t = n*gamma is fitted
       in two regimes split where the relative error is least (costmodel.fit_two_slopes), on
       the per-rank working set 2n: gamma (in cache), gamma_large, cache_bytes.
The file records P (`world_size`); `hpclm bench collectives --calibration` refuses a file made
at another P. Calibrate at the rank count you will run (`mpiexec -n P hpclm bench calibrate`).
"""
import math
import time

import numpy
from mpi4py import MPI

from hpclm.bench.common import human_bytes, parse_sizes, print_table
from hpclm.comm import costmodel
from hpclm.comm.algorithms import send_recv_reduce
from hpclm.comm.ops import combine
from hpclm.comm.wire import Wire

SMALL = 1 << 10      # sizes <= this measure latency (alpha, t0)
LARGE = 64 << 10     # sizes >= this measure bandwidth (beta, gamma)


def add_arguments(parser):
    parser.add_argument("--sizes", default="4,64,1K,16K,64K,256K,1M,4M,16M,64M", help="message sizes (bytes)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default="results/calibration.json", help="where to write the fitted parameters")


def _timed(world, fn, iters):
    """Median over repetitions of the max over ranks of one call of fn() (the statistic the
    collectives benchmark compares predictions with)."""
    fn()
    times = numpy.zeros(iters)
    for i in range(iters):
        world.Barrier()
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    world.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return float(numpy.median(times))


def _partner(world):
    rank, P = world.Get_rank(), world.Get_size()
    return rank ^ 1 if (rank ^ 1) < P else None            # an odd last rank sits out


def measure_exchange(world, sizes, iters):
    wire, partner = Wire(world, "calibrate"), _partner(world)
    out = []
    for nbytes in sizes:
        send, recv = numpy.zeros(nbytes, numpy.uint8), numpy.empty(nbytes, numpy.uint8)
        step = (lambda: wire.sendrecv(send, partner, recv, partner)) if partner is not None else (lambda: None)
        out.append(_timed(world, step, iters))
    return out


def measure_step(world, sizes, iters):
    """One send_recv_reduce round (float32, sum) with the partner, per size."""
    wire, partner = Wire(world, "calibrate"), _partner(world)
    out = []
    for nbytes in sizes:
        send = numpy.zeros(max(nbytes // 4, 1), numpy.float32)
        acc = numpy.zeros_like(send)
        step = (lambda: send_recv_reduce(wire, send, partner, acc, partner, "sum")) if partner is not None else (lambda: None)
        out.append(_timed(world, step, iters))
    return out


def measure_reduce(world, sizes, iters):
    out = []
    for nbytes in sizes:
        a = numpy.zeros(nbytes // 4, numpy.float32)             # (n/4,) float32
        b = numpy.ones_like(a)
        out.append(_timed(world, lambda: combine(a, b, "sum"), iters))
    return out


def fit(sizes, step, exchange, reduce_sizes, reduce_times):
    """CostParams from the measurements (pure arithmetic; see the module docstring)."""
    small = [i for i, n in enumerate(sizes) if n <= SMALL]
    big = [i for i, n in enumerate(sizes) if n >= LARGE]
    alpha = float(numpy.median([step[i] for i in small]))
    t0 = float(numpy.median([exchange[i] for i in small]))
    gamma, gamma_large, cache = costmodel.fit_two_slopes([2 * n for n in reduce_sizes], reduce_times)
    # beta: per byte of n, split at the same working-set threshold (2n vs cache)
    ws = [2 * sizes[i] for i in big]
    net = [max(exchange[i] - t0, 1e-9) for i in big]
    b2, b2_large, _ = costmodel.fit_two_slopes(ws, net, threshold=cache)
    beta, beta_large = 2 * b2, 2 * b2_large          # slopes were per working-set byte (2n)
    gamma, gamma_large = 2 * gamma, 2 * gamma_large
    return costmodel.CostParams(alpha=alpha, beta=beta, gamma=gamma, beta_large=beta_large,
                                gamma_large=gamma_large, cache_bytes=None if math.isinf(cache) else cache)


def run(args):
    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        print("hpclm bench calibrate needs at least 2 ranks (mpiexec -n 2 ...)")
        return 2
    sizes = parse_sizes(args.sizes)
    if not any(n <= SMALL for n in sizes) or sum(n >= LARGE for n in sizes) < 2:
        print(f"hpclm bench calibrate needs sizes <= {SMALL} B and two or more >= {LARGE} B")
        return 2
    step = measure_step(world, [n for n in sizes if n <= SMALL], args.iters) + [math.nan] * sum(n > SMALL for n in sizes)
    exchange = measure_exchange(world, sizes, args.iters)
    big = [n for n in sizes if n >= LARGE]
    reduce_times = measure_reduce(world, big, args.iters)
    params = fit(sizes, step, exchange, big, reduce_times)
    if world.Get_rank() == 0:
        red = dict(zip(big, reduce_times))
        rows = [{"size": human_bytes(n), "step_us": s * 1e6, "exchange_us": t * 1e6,
                 "reduce_us": red.get(n, math.nan) * 1e6,
                 "model_step_us": (params.alpha + n * (params.beta_at(n) + params.gamma_at(n))) * 1e6}
                for n, s, t in zip(sizes, step, exchange)]
        print_table(rows, [("size", ""), ("step_us", ".1f"), ("exchange_us", ".1f"), ("reduce_us", ".1f"),
                           ("model_step_us", ".1f")])
        gb = lambda x: 1 / x / 1e9 if x else math.inf  # noqa: E731
        cache = "none" if params.cache_bytes is None else human_bytes(int(params.cache_bytes))
        print(f"alpha = {params.alpha * 1e6:.2f} us, beta = 1/({gb(params.beta):.2f} GB/s) | 1/({gb(params.beta_large):.2f} GB/s), "
              f"gamma = 1/({gb(params.gamma):.2f} GB/s) | 1/({gb(params.gamma_large):.2f} GB/s), "
              f"threshold 2n > {cache}  (P={world.Get_size()}, medians of {args.iters}) -> {args.out}")
        costmodel.save_params(args.out, params, world_size=world.Get_size(), sizes=sizes, step_s=step,
                              exchange_s=exchange, reduce_sizes=big, reduce_s=reduce_times, statistic="median",
                              iters=args.iters, mpi_library=MPI.Get_library_version().split("\n")[0])
    return 0
