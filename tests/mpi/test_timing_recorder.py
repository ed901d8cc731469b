"""The Recorder under MPI: every rank's known rows reach rank 0's file exactly, trace has one track per rank."""
import json
import tempfile
from pathlib import Path

import numpy as np
from conftest import assert_all

from hpclm.timing import schema
from hpclm.timing.reader import read_run
from hpclm.timing.recorder import Recorder
from hpclm.timing.timer import Timer

MPI_SIZES = (1, 2, 3)
N_STEPS = 11          # two full flushes of 4 and a partial one at close


def known(step, rank, column):
    return step * 10000 + rank * 100 + column + 0.25


def shared_dir(comm):
    return Path(comm.bcast(tempfile.mkdtemp(prefix="hpclm-timing-") if comm.Get_rank() == 0 else None, root=0))


def test_rank_rows_arrive_exactly(world):
    rank, size = world.Get_rank(), world.Get_size()
    run_dir = shared_dir(world)
    rec = Recorder(run_dir, world, {"git_commit": "mpi"}, regions=("bucket_0",), flush_every=4)
    n_regions = len(rec.regions)
    for step in range(N_STEPS):
        times = {r: known(step, rank, i) for i, r in enumerate(rec.regions)}
        rec.log_step(step, times, step_time=known(step, rank, n_regions), bytes_sent=known(step, rank, n_regions + 1),
                     bytes_recv=known(step, rank, n_regions + 2), bytes_uncompressed=known(step, rank, n_regions + 3),
                     loss=known(step, rank, n_regions + 4), tokens=known(step, rank, n_regions + 5),
                     lr=0.5 * step, grad_norm=1.0, global_loss=2.0)
    rec.close()
    problems = []
    if rank == 0:
        run = read_run(run_dir)
        steps, ranks = np.meshgrid(np.arange(N_STEPS), np.arange(size), indexing="ij")
        columns = [run.times[r] for r in rec.regions] + [run.per_rank[f] for f in schema.RANK_FIELDS]
        for c, array in enumerate(columns):
            if array.shape != (N_STEPS, size) or not np.array_equal(array, known(steps, ranks, c)):
                problems.append(f"column {c} differs")
        if list(run.step) != list(range(N_STEPS)) or not np.array_equal(run.per_step["lr"], 0.5 * np.arange(N_STEPS)):
            problems.append("global fields differ")
        if run.world_size != size or len(run.meta["hostnames_json"]) != size:
            problems.append(f"meta {run.meta}")
    assert_all(world, not problems, problems)


def test_trace_has_one_track_per_rank(world):
    run_dir = shared_dir(world)
    timer = Timer(trace_steps=(1, 3))
    rec = Recorder(run_dir, world, {}, flush_every=2)
    for step in range(4):
        with timer.region("forward"):
            pass
        timer.start("comm")
        world.Barrier()
        timer.stop("comm")
        rec.log_step(step, timer.collect())
    rec.write_trace(timer)
    rec.close()
    ok = True
    if world.Get_rank() == 0:
        events = json.loads((run_dir / schema.TRACE_FILE_NAME).read_text())["traceEvents"]
        complete = [e for e in events if e["ph"] == "X"]
        ok = len(complete) == 4 * world.Get_size() and {e["tid"] for e in complete} == set(range(world.Get_size()))
    assert_all(world, ok, "trace events or tracks wrong")
