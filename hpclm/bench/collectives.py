"""`hpclm bench collectives`: time each all-reduce algorithm next to MPI's own, with the cost
model's prediction beside every measurement; `--overlap` measures a non-blocking all-reduce
hidden behind computation instead.

Run as `mpiexec -n P hpclm bench collectives [--sizes 4:64M] [--algorithms ring,...]`.
Timing: per size, every algorithm is warmed up, then repetitions run round-robin over the
algorithms (so drifting load on a shared machine hits all alike), each one between a barrier
and the end of the call; a repetition's time is the max over ranks; the table reports the min
and median over repetitions. algbw = bytes / median time, busbw = algbw * 2(P-1)/P (nccl-tests).
The buffer is all-reduced in place and holds zeros, so repeated sums cannot overflow; `--check`
verifies every algorithm against MPI's Allreduce on rank-dependent data first.
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
from hpclm.bench.common import human_bytes, parse_sizes, print_table, write_json
from hpclm.comm import costmodel
from hpclm.comm.allreduce import cost_params
from hpclm.errors import UserError

DEFAULT_ALGORITHMS = "ring,recursive_doubling,rabenseifner,tree,hierarchical"
COLUMNS = [("size", ""), ("algorithm", ""), ("min_us", ".1f"), ("median_us", ".1f"), ("algbw_GBps", ".3f"),
           ("busbw_GBps", ".3f"), ("vs_mpi", ".2f"), ("model_us", ".1f"), ("model_err", "+.0%")]


def add_arguments(parser):
    parser.add_argument("--sizes", default="4:64M", help="'lo:hi' powers of two or a list '4,8K,16M' (bytes)")
    parser.add_argument("--algorithms", default=DEFAULT_ALGORITHMS, help="comma list; mpi is always timed too")
    parser.add_argument("--iters", type=int, default=20, help="timed repetitions per size and algorithm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--op", default="sum", choices=comm.OPS)
    parser.add_argument("--check", action="store_true", help="verify results against MPI's Allreduce first")
    parser.add_argument("--calibration", help="cost-model JSON from `hpclm bench calibrate` (default: "
                        "results/calibration.json if present, else model defaults)")
    parser.add_argument("--ranks-per-node", type=int, help="for the hierarchical model (default: all ranks)")
    parser.add_argument("--overlap", action="store_true", help="measure comm/compute overlap instead")
    parser.add_argument("--overlap-size", default="16M", help="all-reduce size for --overlap")
    parser.add_argument("--txt", help="also write the table to this file (rank 0)")
    parser.add_argument("--json", help="write the results as JSON (rank 0)")
    parser.add_argument("--h5", help="write the results as HDF5 (rank 0)")


def _buffers(nbytes, dtype):
    itemsize = numpy.dtype(dtype).itemsize
    return numpy.zeros(max(nbytes // itemsize, 1), dtype=dtype)        # (n,)


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


def time_size(world, algorithms, nbytes, args):
    """{algorithm: per-repetition times (max over ranks)} for one message size."""
    buf = _buffers(nbytes, args.dtype)
    for name in algorithms:
        for _ in range(args.warmup):
            comm.allreduce(world, buf, op=args.op, algorithm=name)
    local = numpy.zeros((len(algorithms), args.iters))                    # (A, iters) seconds
    for it in range(args.iters):
        for a, name in enumerate(algorithms):
            world.Barrier()
            t0 = time.perf_counter()
            comm.allreduce(world, buf, op=args.op, algorithm=name)
            local[a, it] = time.perf_counter() - t0
    world.Allreduce(MPI.IN_PLACE, local, op=MPI.MAX)
    return {name: local[a] for a, name in enumerate(algorithms)}


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


def run_sizes(world, args):
    """(result dict, exit code) of the size sweep."""
    algorithms = ["mpi"] + [a for a in args.algorithms.split(",") if a and a != "mpi"]
    for name in algorithms:
        if name not in comm.ALGORITHMS:
            raise UserError(f"unknown algorithm {name!r}; choose from {', '.join(comm.ALGORITHMS)}")
    sizes, P = parse_sizes(args.sizes), world.Get_size()
    params = costmodel.load_params(args.calibration, world_size=P) if args.calibration else cost_params()
    if args.check:
        failures = check(world, algorithms, sizes, args.dtype, args.op)
        if world.Get_rank() == 0:
            print(f"# check: {'FAILED ' + ', '.join(failures) if failures else 'all results match MPI_Allreduce'}")
        if failures:
            return None, 1
    rows = []
    for nbytes in sizes:
        rows += rows_for_size(nbytes, time_size(world, algorithms, nbytes, args), P, params, args.ranks_per_node)
    return {"kind": "sizes", "params": asdict(params), "algorithms": algorithms, "rows": rows}, 0


def _compute(a, b, c, reps):
    for _ in range(reps):
        numpy.matmul(a, b, out=c)


def run_overlap(world, args):
    """Compute alone, all-reduce alone, and both overlapped (iallreduce; compute; wait)."""
    algorithms = ["mpi"] + [x for x in args.algorithms.split(",") if x and x not in ("mpi", "hierarchical")]
    nbytes = parse_sizes(args.overlap_size)[0]
    buf = _buffers(nbytes, args.dtype)
    a = numpy.random.default_rng(0).standard_normal((256, 256))          # (256, 256) float64
    c = numpy.empty_like(a)
    t0 = time.perf_counter()
    _compute(a, a, c, 20)
    per_matmul = world.allreduce((time.perf_counter() - t0) / 20, op=MPI.MAX)
    rows = []
    for name in algorithms:
        comm.allreduce(world, buf, op=args.op, algorithm=name)
        t0 = time.perf_counter()
        comm.allreduce(world, buf, op=args.op, algorithm=name)
        reps = max(1, int(world.allreduce(time.perf_counter() - t0, op=MPI.MAX) / per_matmul))
        phases = {
            "comm_s": lambda: comm.iallreduce(world, buf, op=args.op, algorithm=name).wait(),
            "compute_s": lambda: _compute(a, a, c, reps),
            "both_s": lambda: (lambda req: (_compute(a, a, c, reps), req.wait()))(
                comm.iallreduce(world, buf, op=args.op, algorithm=name)),
        }
        row = {"algorithm": name, "size": human_bytes(nbytes), "bytes": nbytes, "matmuls": reps}
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
    return {"kind": "overlap", "rows": rows}, 0


OVERLAP_COLUMNS = [("algorithm", ""), ("size", ""), ("matmuls", "d"), ("compute_s", ".4f"), ("comm_s", ".4f"),
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
        Path(args.txt).write_text(f"# {meta['command']}  (P={meta['P']}, {meta['host']}, {meta['date']})\n{text}\n")
    if args.json:
        write_json(args.json, {"meta": meta, **result})
    if args.h5:
        write_h5(args.h5, result, {**meta, **({"params": result["params"]} if "params" in result else {})})
    return rc
