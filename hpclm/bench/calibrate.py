"""`hpclm bench calibrate`: fit the cost model's alpha, beta, gamma on this machine.

alpha, beta: every rank exchanges messages with a partner (rank ^ 1) at once, through the same
counted Sendrecv path the algorithms use (Python overhead included), and t = alpha + n*beta is
fitted (relative least squares) to the fastest exchange time (max over ranks) per size. Running
all pairs at once measures a link as the collectives load it: at `-n 4` on two cores the four
ranks share the cores and memory bandwidth, as they do in a 4-rank all-reduce.
gamma: every rank times `add(a, b, out=a)` on its own arrays at once, fitted as t = n*gamma.
Calibrate at the rank count you will run (`mpiexec -n P hpclm bench calibrate --out ...`).
"""
import time

import numpy
from mpi4py import MPI

from hpclm.bench.common import human_bytes, parse_sizes, print_table
from hpclm.comm import costmodel
from hpclm.comm.ops import combine
from hpclm.comm.wire import Wire


def add_arguments(parser):
    parser.add_argument("--sizes", default="4,64,1K,16K,64K,256K,1M,4M,16M,64M", help="message sizes (bytes)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default="results/calibration.json", help="where to write the fitted parameters")


def _timed(world, fn, iters):
    """Min over repetitions of the max over ranks of one call of fn() (robust to other jobs'
    interference on a shared machine, as is usual for ping-pong calibration)."""
    fn()
    times = numpy.zeros(iters)
    for i in range(iters):
        world.Barrier()
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    world.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return float(times.min())


def measure_exchange(world, sizes, iters):
    wire, rank, P = Wire(world, "calibrate"), world.Get_rank(), world.Get_size()
    partner = rank ^ 1 if (rank ^ 1) < P else None            # an odd last rank sits out
    out = []
    for nbytes in sizes:
        send, recv = numpy.zeros(nbytes, numpy.uint8), numpy.empty(nbytes, numpy.uint8)
        step = (lambda: wire.sendrecv(send, partner, recv, partner)) if partner is not None else (lambda: None)
        out.append(_timed(world, step, iters))
    return out


def measure_reduce(world, sizes, iters):
    out = []
    for nbytes in sizes:
        a = numpy.zeros(nbytes // 4, numpy.float32)             # (n/4,) float32
        b = numpy.ones_like(a)
        out.append(_timed(world, lambda: combine(a, b, "sum"), iters))
    return out


def run(args):
    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        print("hpclm bench calibrate needs at least 2 ranks (mpiexec -n 2 ...)")
        return 2
    sizes = parse_sizes(args.sizes)
    exchange = measure_exchange(world, sizes, args.iters)
    big = [n for n in sizes if n >= 64 << 10]
    reduce_times = measure_reduce(world, big, args.iters)
    alpha, beta = costmodel.fit_alpha_beta(sizes, exchange)
    gamma = costmodel.fit_gamma(big, reduce_times)
    params = costmodel.CostParams(alpha=alpha, beta=beta, gamma=gamma)
    if world.Get_rank() == 0:
        rows = [{"size": human_bytes(n), "exchange_us": t * 1e6, "fit_us": (alpha + n * beta) * 1e6,
                 "reduce_us": (dict(zip(big, reduce_times)).get(n, float("nan"))) * 1e6} for n, t in zip(sizes, exchange)]
        print_table(rows, [("size", ""), ("exchange_us", ".1f"), ("fit_us", ".1f"), ("reduce_us", ".1f")])
        print(f"alpha = {alpha * 1e6:.2f} us, beta = 1/({1 / beta / 1e9:.2f} GB/s), gamma = 1/({1 / gamma / 1e9:.2f} GB/s)"
              f"  (P={world.Get_size()}) -> {args.out}")
        costmodel.save_params(args.out, params, world_size=world.Get_size(), sizes=sizes, exchange_s=exchange,
                              reduce_sizes=big, reduce_s=reduce_times, mpi_library=MPI.Get_library_version().split("\n")[0])
    return 0


