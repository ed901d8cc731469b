"""`hpclm bench collectives`: time each all-reduce algorithm next to MPI's own, with the cost
model's prediction beside every measurement; `--overlap` measures a non-blocking all-reduce
hidden behind host work instead (`--overlap-compute matmul`: busy cores; `sleep`: an idle host,
as while a GPU computes).

Run as `mpiexec -n P hpclm bench collectives [--sizes 4:64M] [--algorithms ring,...]`.
Timing: per size, every algorithm is warmed up, then repetitions run round-robin over the
algorithms (so drifting load on a shared machine hits all alike), each one between a barrier
and the end of the call; a repetition's time is the max over ranks; the table reports the min
and median over repetitions. algbw = bytes / median time, busbw = algbw * 2(P-1)/P (nccl-tests).
The buffer is all-reduced in place and holds zeros, so repeated sums cannot overflow; `--check`
verifies every algorithm against MPI's Allreduce on rank-dependent data first.

Cost model: from `--calibration FILE` (`hpclm bench calibrate`, run before), or with
`--calibrate` fitted from calibration probes timed *in this sweep*: calibrate's point-to-point
step and local reduction at every size join the round-robin beside the algorithms, so the
calibration sees the same machine state (cache contents, load, the VM's speed of the moment) as
the measurements it predicts; the fit (calibrate.fit) runs after the sweep, so `auto` still
chooses with the calibration file or defaults it finds (comm.allreduce.cost_params) meanwhile.
"""
import json
import socket
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import mpi4py
import numpy
from mpi4py import MPI

from hpclm import comm
from hpclm.bench import calibrate
from hpclm.bench.common import human_bytes, parse_sizes, print_table, write_json, zeros_of
from hpclm.comm import costmodel
from hpclm.comm.allreduce import cost_params
from hpclm.errors import UserError
from hpclm.parallel.agree import collectively

DEFAULT_ALGORITHMS = "ring,recursive_doubling,rabenseifner,tree,hierarchical"
COLUMNS = [("size", ""), ("algorithm", ""), ("min_us", ".1f"), ("median_us", ".1f"), ("algbw_GBps", ".3f"),
           ("busbw_GBps", ".3f"), ("vs_mpi", ".2f"), ("model_us", ".1f"), ("model_err", "+.0%")]


def add_arguments(parser):
    parser.add_argument("--sizes", default="4:64M", help="'lo:hi' powers of two or a list '4,8K,16M' (bytes)")
    parser.add_argument("--algorithms", default=DEFAULT_ALGORITHMS, help="comma list; mpi is always timed too")
    parser.add_argument("--iters", type=int, default=20, help="timed repetitions per size and algorithm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--dtype", default="float32", help="element type of the messages")
    parser.add_argument("--op", default="sum", choices=comm.OPS, help="reduction operation")
    parser.add_argument("--check", action="store_true", help="verify results against MPI's Allreduce first")
    parser.add_argument("--calibration", help="cost-model JSON from `hpclm bench calibrate` (default: "
                        "results/calibration.json if present, else model defaults)")
    parser.add_argument("--calibrate", action="store_true", help="fit the cost model from calibration "
                        "probes timed in this sweep (needs sizes <= 1K and >= 64K; adds ring and recursive_doubling)")
    parser.add_argument("--ranks-per-node", type=int, help="for the hierarchical model (default: all ranks)")
    parser.add_argument("--overlap", action="store_true", help="measure comm/compute overlap instead")
    parser.add_argument("--overlap-size", default="16M", help="all-reduce size for --overlap")
    parser.add_argument("--overlap-compute", choices=("matmul", "sleep"), default="matmul",
                        help="--overlap's host work: matmuls (busy cores) or a sleep (idle host, as under "
                        "a GPU kernel)")
    parser.add_argument("--txt", help="also write the table to this file (rank 0)")
    parser.add_argument("--json", help="write the results as JSON (rank 0)")
    parser.add_argument("--h5", help="write the results as HDF5 (rank 0)")
    parser.add_argument("--plot", help="size sweep: write time and busbw against size as a PNG (rank 0)")


def check(world, algorithms, sizes, dtype, op):
    """Names of (algorithm, size) pairs whose result differs from MPI's Allreduce (all ranks agree)."""
    failures = []
    for nbytes in sizes:
        n = max(nbytes // numpy.dtype(dtype).itemsize, 1)
        data = (numpy.arange(n) % 13 + world.Get_rank()).astype(dtype)
        expected = comm.mpi(world, data, numpy.empty_like(data), op=op)
        for name in algorithms:
            got = comm.allreduce(world, data, numpy.empty_like(data), op=op, algorithm=name)
            ok = numpy.allclose(got, expected, rtol=1e-3 if dtype == "float16" else 1e-6)
            if not world.allreduce(ok, op=MPI.LAND):
                failures.append(f"{name}@{human_bytes(nbytes)}")
    return failures


STEP, REDUCE = "probe:step", "probe:reduce"          # calibration probes timed beside the algorithms


def time_size(world, algorithms, nbytes, args, calibrating=False):
    """{name: per-repetition times (max over ranks)} for one message size, for every algorithm
    and, when calibrating, the calibration probes on the same buffer, timed round-robin alike."""
    buf = zeros_of(nbytes, args.dtype)
    calls = {name: (lambda name=name: comm.allreduce(world, buf, op=args.op, algorithm=name)) for name in algorithms}
    if calibrating:
        calls[STEP] = calibrate.step_probe(world, buf)
        if nbytes >= calibrate.LARGE:
            calls[REDUCE] = calibrate.reduce_probe(buf)
    for fn in calls.values():
        for _ in range(args.warmup):
            fn()
    local = numpy.zeros((len(calls), args.iters))                         # (A, iters) seconds
    for it in range(args.iters):
        for a, fn in enumerate(calls.values()):
            world.Barrier()
            t0 = time.perf_counter()
            fn()
            local[a, it] = time.perf_counter() - t0
    world.Allreduce(MPI.IN_PLACE, local, op=MPI.MAX)
    return {name: local[a] for a, name in enumerate(calls)}


def fit_same_run(sizes, timings, P):
    """(CostParams, record) from the probes' and the small all-reduces' medians of one sweep."""
    med = [{name: statistics.median(t) for name, t in times.items()} for times in timings]
    step = [m[STEP] for m in med]
    call = [calibrate.per_step_call(m["recursive_doubling"], m["ring"], P)
            for n, m in zip(sizes, med) if n <= calibrate.SMALL]
    big = [n for n in sizes if n >= calibrate.LARGE]
    reduce_times = [m[REDUCE] for n, m in zip(sizes, med) if n >= calibrate.LARGE]
    record = {"how": "same run", "sizes": sizes, "step_s": step, "rd_call_s": call, "reduce_sizes": big,
              "reduce_s": reduce_times, "statistic": "median"}
    return calibrate.fit(sizes, step, call, big, reduce_times), record


def rows_for_size(nbytes, times, P, params, ranks_per_node):
    rows, base = [], statistics.median(times["mpi"])
    for name, t in times.items():
        med = statistics.median(t)
        model = costmodel.predict(name, nbytes, P, params, ranks_per_node) if name != "auto" else None
        algbw = nbytes / med / 1e9 if med > 0 else 0.0
        rows.append({"size": human_bytes(nbytes), "bytes": nbytes, "algorithm": name, "P": P,
                     "min_us": min(t) * 1e6, "median_us": med * 1e6, "algbw_GBps": algbw,
                     "busbw_GBps": algbw * 2 * (P - 1) / P, "vs_mpi": med / base,
                     "model_us": None if model is None else model * 1e6,
                     "model_err": None if model is None or P == 1 else model / med - 1,
                     "times_s": list(map(float, t))})
    return rows


def algorithms_of(text, skip=()):
    """["mpi", then the comma list's other names except `skip`]; UserError on an unknown name."""
    algorithms = ["mpi"] + [a for a in text.split(",") if a and a != "mpi" and a not in skip]
    for name in algorithms:
        if name not in comm.ALGORITHMS:
            raise UserError(f"unknown algorithm {name!r}; choose from {', '.join(comm.ALGORITHMS)}")
    return algorithms


def setup_sizes(args, P):
    """(algorithms, sizes, params, calibration record) from the arguments; UserError on bad ones.
    params is None with --calibrate (fitted after the sweep)."""
    algorithms = algorithms_of(args.algorithms)
    sizes = parse_sizes(args.sizes)
    if args.iters < 1 or args.warmup < 0:
        raise UserError(f"--iters must be >= 1 and --warmup >= 0 (got {args.iters}, {args.warmup})")
    if args.calibrate:
        if args.calibration:
            raise UserError("--calibrate fits the cost model in this run; drop --calibration FILE")
        if P < 2 or not calibrate.sizes_suffice(sizes):
            raise UserError(f"--calibrate needs 2 or more ranks and {calibrate.SIZES_NEEDED.removeprefix('needs ')}")
        algorithms += [a for a in ("recursive_doubling", "ring") if a not in algorithms]
        return algorithms, sizes, None, None
    if args.calibration:
        return algorithms, sizes, costmodel.load_params(args.calibration, world_size=P), {"how": args.calibration}
    return algorithms, sizes, cost_params(), {"how": "$HPCLM_CALIBRATION, results/calibration.json or defaults"}


def run_sizes(world, args):
    """(result dict, exit code) of the size sweep."""
    P = world.Get_size()
    algorithms, sizes, params, calibration = collectively(world, setup_sizes, args, P)
    if args.calibration:
        comm.set_cost_params(params)                                   # `auto` chooses with it too
    if args.check:
        failures = check(world, algorithms, sizes, args.dtype, args.op)
        if world.Get_rank() == 0:
            print(f"# check: {'FAILED ' + ', '.join(failures) if failures else 'all results match MPI_Allreduce'}")
        if failures:
            return None, 1
    timings = [time_size(world, algorithms, n, args, args.calibrate) for n in sizes]
    if args.calibrate:
        params, calibration = fit_same_run(sizes, timings, P)
        if world.Get_rank() == 0:
            print(f"# cost model fitted in this run: {calibrate.describe(params)}")
    rows = []
    for nbytes, times in zip(sizes, timings):
        rows += rows_for_size(nbytes, {a: times[a] for a in algorithms}, P, params, args.ranks_per_node)
    return {"kind": "sizes", "params": asdict(params), "calibration": calibration, "algorithms": algorithms,
            "rows": rows}, 0


def compute_work(kind, seconds, per_matmul, a, c):
    """(fn, description): host work lasting about `seconds`: `matmul` repeats a 256x256 product
    (the host's cores are busy, as in CPU training), `sleep` sleeps (the host is idle, as while an
    accelerator computes: what is left to measure is whether communication progresses meanwhile)."""
    if kind == "sleep":
        return (lambda: time.sleep(seconds)), f"sleep {seconds * 1e3:.2f} ms"
    reps = max(1, int(seconds / per_matmul))

    def matmuls():
        for _ in range(reps):
            numpy.matmul(a, a, out=c)
    return matmuls, f"{reps} matmuls"


def run_overlap(world, args):
    """Compute alone, all-reduce alone, and both overlapped (iallreduce; compute; wait)."""
    algorithms = collectively(world, algorithms_of, args.algorithms, skip=("hierarchical",))
    nbytes = collectively(world, parse_sizes, args.overlap_size)[0]
    buf = zeros_of(nbytes, args.dtype)
    a = numpy.random.default_rng(0).standard_normal((256, 256))          # (256, 256) float64
    c = numpy.empty_like(a)
    t0 = time.perf_counter()
    for _ in range(20):
        numpy.matmul(a, a, out=c)
    per_matmul = world.allreduce((time.perf_counter() - t0) / 20, op=MPI.MAX)
    rows = []
    for name in algorithms:
        comm.allreduce(world, buf, op=args.op, algorithm=name)
        once = []
        for _ in range(3):
            t0 = time.perf_counter()
            comm.allreduce(world, buf, op=args.op, algorithm=name)
            once.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        # host work about as long as the all-reduce
        work, what = compute_work(args.overlap_compute, statistics.median(once), per_matmul, a, c)
        phases = {
            "comm_s": lambda: comm.iallreduce(world, buf, op=args.op, algorithm=name).wait(),
            "compute_s": work,
            "both_s": lambda: (lambda req: (work(), req.wait()))(
                comm.iallreduce(world, buf, op=args.op, algorithm=name)),
        }
        row = {"algorithm": name, "size": human_bytes(nbytes), "bytes": nbytes, "compute": what}
        for key, phase in phases.items():
            phase()
            times = []
            for _ in range(args.iters):
                world.Barrier()
                t0 = time.perf_counter()
                phase()
                times.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            row[key] = statistics.median(times)
        row["serial_s"] = row["comm_s"] + row["compute_s"]
        row["hidden"] = (row["serial_s"] - row["both_s"]) / min(row["comm_s"], row["compute_s"])
        rows.append(row)
    return {"kind": "overlap", "compute": args.overlap_compute, "rows": rows}, 0


OVERLAP_COLUMNS = [("algorithm", ""), ("size", ""), ("compute", ""), ("compute_s", ".4f"), ("comm_s", ".4f"),
                   ("serial_s", ".4f"), ("both_s", ".4f"), ("hidden", ".0%")]


def write_h5(path, result, meta):
    import h5py
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in meta.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        for name in {row["algorithm"] for row in result["rows"]}:
            rows = [r for r in result["rows"] if r["algorithm"] == name]
            group = f.create_group(name)
            for key, value in rows[0].items():
                if isinstance(value, (int, float)) or value is None:
                    group[key] = numpy.array([numpy.nan if r[key] is None else r[key] for r in rows], dtype=float)
                elif isinstance(value, list):
                    group[key] = numpy.array([r[key] for r in rows])            # (sizes, iters)


def run(args):
    world = MPI.COMM_WORLD
    result, rc = (run_overlap if args.overlap else run_sizes)(world, args)
    if result is None or world.Get_rank() != 0:
        return rc
    meta = {"P": world.Get_size(), "command": " ".join(sys.argv), "mpi_library": MPI.Get_library_version().split("\n")[0],
            "mpi4py": mpi4py.__version__, "numpy": numpy.__version__, "host": socket.gethostname(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dtype": args.dtype, "op": args.op, "iters": args.iters}
    text = print_table(result["rows"], OVERLAP_COLUMNS if args.overlap else COLUMNS)
    if args.txt:
        Path(args.txt).parent.mkdir(parents=True, exist_ok=True)
        model = (f"# cost model ({result['calibration']['how']}): "
                 f"{calibrate.describe(costmodel.CostParams(**result['params']))}\n" if "params" in result else "")
        header = f"# {meta['command']}  (P={meta['P']}, {meta['host']}, {meta['date']})\n"
        Path(args.txt).write_text(f"{header}{model}{text}\n")
    if args.json:
        write_json(args.json, {"meta": meta, **result})
    if args.h5:
        write_h5(args.h5, result, {**meta, **({"params": result["params"]} if "params" in result else {})})
    if args.plot and result["kind"] == "sizes":
        from hpclm.analysis import plots
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plots.collectives(args.plot, result["rows"], f"all-reduce, P = {meta['P']}, {args.dtype} {args.op} "
                                                     f"(cost model: {result['calibration']['how']})")
    return rc
