"""`hpclm bench calibrate`: fit the cost model's alpha, beta, gamma on this machine, for this P.

Every quantity is the *median* over repetitions of the max over ranks of one timed call, the
same statistic `hpclm bench collectives` reports (a minimum would describe an idle machine,
not the one the collectives run on). All ranks measure at once, so at `-n 4` on two cores the
four ranks share cores and memory bandwidth as they do in a 4-rank all-reduce.

gamma: every rank times `add(a, b, out=a)` on n-byte arrays at >= 64 KiB; t = n*gamma is fitted
       in two regimes split where the relative error is least (costmodel.fit_two_slopes), on
       the per-rank working set 2n: gamma (in cache), gamma_large, cache_bytes.
step:  our own point-to-point step as recursive doubling runs it (Sendrecv of the whole buffer
       with the partner rank ^ 1, then a numpy reduction into it), at every size.
beta:  from the step at >= 64 KiB minus its reduction (n*gamma(n)): t = c + n*beta is fitted
       (relative least squares) on the in-cache sizes, and n*beta_large on (t - c) above the
       threshold. c is the latency of one large (rendezvous-protocol) step.
alpha: the per-step cost in the regime the model is used for (>= 64 KiB): c, plus the per-call
       overhead of `comm.allreduce` (argument checks, Wire, counters, and at P > cores the
       waits for descheduled partners) spread over the steps: the per-step time of our own
       all-reduces at <= 1 KiB (mean of recursive doubling / log2(P) and ring / 2(P-1)) minus
       the isolated step at <= 1 KiB.
       Smaller messages (eager protocol) cost less than alpha, so the model over-predicts below
       64 KiB; the calibration table shows both.
The file records P (`world_size`); `hpclm bench collectives --calibration` refuses a file made
at another P. Calibrate at the rank count you will run (`mpiexec -n P hpclm bench calibrate`).
"""
import math
import time

import numpy
from mpi4py import MPI

from hpclm.bench.common import human_bytes, parse_sizes, print_table, zeros_of
from hpclm import comm
from hpclm.comm import costmodel
from hpclm.comm.ops import combine
from hpclm.comm.wire import Wire, scratch
from hpclm.errors import UserError
from hpclm.parallel.agree import collectively

SMALL = 1 << 10      # sizes <= this measure latency (alpha, t0)
LARGE = 64 << 10     # sizes >= this measure bandwidth (beta, gamma)


def add_arguments(parser):
    parser.add_argument("--sizes", default="4,64,1K,16K,64K,256K,1M,2M,4M,8M,16M,32M,64M", help="message sizes (bytes)")
    parser.add_argument("--iters", type=int, default=20, help="timed repetitions per message size")
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


def step_probe(world, buf):
    """fn() doing one recursive-doubling step (sum) of `buf` with the partner, as the algorithm
    does it: Sendrecv into the shared receive scratch (comm.wire.scratch), then reduce into buf.
    `bench collectives --calibrate` passes the buffer its algorithms run on, so the probe meets
    the same cache contents as they do."""
    wire, partner = Wire(world, "calibrate"), _partner(world)
    tmp = scratch(buf, buf.size)                                        # (n,)

    def step():
        if partner is not None:
            wire.sendrecv(buf, partner, tmp, partner)
            combine(buf, tmp, "sum")
    return step


def reduce_probe(buf):
    """fn() doing one local reduction buf += scratch (zeroed here, so buf keeps its values)."""
    tmp = scratch(buf, buf.size)                                        # (n,)
    tmp[:] = 0
    return lambda: combine(buf, tmp, "sum")


def per_step_call(rd_time, ring_time, P):
    """Per-step time of a small all-reduce through the public entry point: the mean of recursive
    doubling's time / log2(P) and ring's time / 2(P-1), the two step patterns."""
    return (rd_time / max(P.bit_length() - 1, 1) + ring_time / (2 * (P - 1))) / 2


def measure_step(world, sizes, iters):
    return [_timed(world, step_probe(world, zeros_of(n)), iters) for n in sizes]


def measure_call(world, sizes, iters):
    out = []
    for nbytes in sizes:
        buf = zeros_of(nbytes)
        rd = _timed(world, lambda: comm.allreduce(world, buf, op="sum", algorithm="recursive_doubling"), iters)
        ring = _timed(world, lambda: comm.allreduce(world, buf, op="sum", algorithm="ring"), iters)
        out.append(per_step_call(rd, ring, world.Get_size()))
    return out


def measure_reduce(world, sizes, iters):
    return [_timed(world, reduce_probe(zeros_of(n)), iters) for n in sizes]


SIZES_NEEDED = f"needs sizes <= {SMALL} B and two or more >= {LARGE} B"


def sizes_suffice(sizes):
    return any(n <= SMALL for n in sizes) and sum(n >= LARGE for n in sizes) >= 2


def _sizes(text, iters):
    sizes = parse_sizes(text)
    if not sizes_suffice(sizes) or iters < 1:
        raise UserError(f"hpclm bench calibrate {SIZES_NEEDED}, and --iters >= 1")
    return sizes


def fit(sizes, step, call, reduce_sizes, reduce_times):
    """CostParams from the measurements (pure arithmetic; see the module docstring).
    step: per size; call: per size <= SMALL (recursive doubling all-reduce); reduce_*: >= LARGE."""
    small = [i for i, n in enumerate(sizes) if n <= SMALL]
    gamma, gamma_large, cache = costmodel.fit_two_slopes([2 * n for n in reduce_sizes], reduce_times)
    gamma, gamma_large = 2 * gamma, 2 * gamma_large     # slopes were per working-set byte (2n)
    params = costmodel.CostParams(alpha=0.0, beta=0.0, gamma=gamma, gamma_large=gamma_large,
                                  cache_bytes=None if math.isinf(cache) else cache)
    big = [(n, t - n * params.gamma_at(n)) for n, t in zip(sizes, step) if n >= LARGE]
    inside = [(n, t) for n, t in big if not params._large(n)]
    outside = [(n, t) for n, t in big if params._large(n)]
    if len(inside) >= 2:
        c, beta = costmodel.fit_alpha_beta([n for n, _ in inside], [t for _, t in inside])
    else:
        c, beta = 0.0, costmodel.fit_gamma([n for n, _ in big], [t for _, t in big])
    beta_large = (costmodel.fit_gamma([n for n, _ in outside], [max(t - c, 1e-9) for _, t in outside])
                  if outside else beta)
    per_call = float(numpy.median([call[k] - step[i] for k, i in enumerate(small)]))
    alpha = c + max(per_call, 0.0)
    return costmodel.CostParams(alpha=alpha, beta=beta, gamma=gamma, beta_large=beta_large,
                                gamma_large=gamma_large, cache_bytes=params.cache_bytes)


def describe(params):
    """One line: the fitted alpha, beta | beta_large, gamma | gamma_large and the threshold."""
    gb = lambda x: 1 / x / 1e9 if x else math.inf  # noqa: E731
    cache = "none" if params.cache_bytes is None else human_bytes(int(params.cache_bytes))
    return (f"alpha = {params.alpha * 1e6:.2f} us, beta = 1/({gb(params.beta):.2f} GB/s) | "
            f"1/({gb(params.beta_at(math.inf)):.2f} GB/s), gamma = 1/({gb(params.gamma):.2f} GB/s) | "
            f"1/({gb(params.gamma_at(math.inf)):.2f} GB/s), threshold 2n > {cache}")


def run(args):
    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        raise UserError("hpclm bench calibrate needs at least 2 ranks (mpiexec -n 2 ...)")
    sizes = collectively(world, _sizes, args.sizes, args.iters)
    step = measure_step(world, sizes, args.iters)
    call = measure_call(world, [n for n in sizes if n <= SMALL], args.iters)
    big = [n for n in sizes if n >= LARGE]
    reduce_times = measure_reduce(world, big, args.iters)
    params = fit(sizes, step, call, big, reduce_times)
    if world.Get_rank() == 0:
        red = dict(zip(big, reduce_times))
        calls = dict(zip(sizes, call))
        rows = [{"size": human_bytes(n), "small_step_us": calls.get(n, math.nan) * 1e6, "step_us": s * 1e6,
                 "reduce_us": red.get(n, math.nan) * 1e6,
                 "model_step_us": (params.alpha + n * (params.beta_at(n) + params.gamma_at(n))) * 1e6}
                for n, s in zip(sizes, step)]
        print_table(rows, [("size", ""), ("small_step_us", ".1f"), ("step_us", ".1f"), ("reduce_us", ".1f"),
                           ("model_step_us", ".1f")])
        print(f"{describe(params)}  (P={world.Get_size()}, medians of {args.iters}) -> {args.out}")
        costmodel.save_params(args.out, params, world_size=world.Get_size(), sizes=sizes, step_s=step,
                              rd_call_s=call, reduce_sizes=big, reduce_s=reduce_times, statistic="median",
                              iters=args.iters, mpi_library=MPI.Get_library_version().split("\n")[0])
    return 0
