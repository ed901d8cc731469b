"""The asynchronous strategies through `hpclm train` (hpclm.train.asynchronous_round): the stop
agreement is a non-blocking round, so a fast worker runs ahead of a slow one (async PS: more
pushes and staleness > 1, in the servers' report and in the timing record; ssp: ahead by at most
s; AD-PSGD: more steps), an ssp checkpoint taken while the workers' clocks differ resumes, a
NaN loss on one rank still stops every rank with one line and no checkpoint, and SIGTERM still
checkpoints at a round boundary and exits 0."""
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainutil import finish, mpiexec, popen, read_ckpt, signal_at_line, summary, tiny_args  # noqa: E402

# argv: SLOW_RANK SLEEP_S NAN_RANK NAN_FROM_STEP train ...: world rank SLOW_RANK sleeps after each
# step; world rank NAN_RANK reports a NaN loss from round NAN_FROM_STEP on (-1: none).
LAUNCHER = textwrap.dedent("""
    import math, sys, time
    from mpi4py import MPI
    import hpclm.train as T
    slow, sleep_s, nan_rank, nan_from = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rank = MPI.COMM_WORLD.Get_rank()
    def step(s, n, **kw):
        loss, norm, lr = orig(s, n, **kw)
        if rank == slow:
            time.sleep(sleep_s)
        if rank == nan_rank and n >= nan_from:
            loss = math.nan
        return loss, norm, lr
    orig, T.train_step = T.train_step, step
    from hpclm.cli import main
    sys.exit(main(sys.argv[5:]))
""")
SLOW_S = 0.15
PS = ("--set", "parallel.sync=ps", "--set", "ps.servers=1")
ADPSGD = ("--set", "parallel.sync=gossip", "--set", "gossip.algorithm=adpsgd", "--set", "gossip.consensus_every=2")


def command(tmp_path, n, *sets, slow=1, nan_rank=-1, nan_from=0, steps=6, out="r", resume=None):
    head = [mpiexec(), "-n", str(n), sys.executable, "-c", LAUNCHER, str(slow), str(SLOW_S), str(nan_rank),
            str(nan_from), "train"]
    if resume is not None:
        cmd = head + ["--resume", str(tmp_path / resume), "--set", f"train.max_steps={steps}"]
    else:
        cmd = head + ["--out", str(tmp_path / out)] + tiny_args(tmp_path / "cache", *sets, "--set",
                                                                "train.batch_size=4", steps=steps)
    return cmd


def train(tmp_path, n, *sets, **kw):
    return finish(popen(command(tmp_path, n, *sets, **kw)), 180)


def server_report(run_dir):
    return json.loads((run_dir / "ps-server-0.json").read_text())


def pushes_of(report, worker):
    return [staleness for _, w, staleness in report["applied"] if w == worker]


def record_metric(run_dir, name):
    from hpclm.timing.reader import read_run
    return read_run(run_dir).metrics[name]                     # (rounds, ranks)


def test_async_ps_worker_runs_ahead_of_a_slow_one(tmp_path):
    rc, out, err, _ = train(tmp_path, 3, *PS, "--set", "ps.mode=async")
    assert rc == 0, out[-2000:] + err[-2000:]
    run = tmp_path / "r"
    report, steps = server_report(run), summary(run)["steps_per_rank"]
    fast, slow = pushes_of(report, 0), pushes_of(report, 1)
    assert len(slow) == steps[1] and len(fast) == steps[0] and len(fast) > len(slow) >= 6, (steps, report)
    assert max(slow) > 1, slow                          # the fast worker's pushes landed between two of the slow one's
    from hpclm.timing.reader import read_run
    record = read_run(run)
    staleness, pushes = record.metrics["staleness"], record.metrics["pushes"]          # (rounds, workers)
    assert staleness.shape == (6, 2) and np.nanmax(staleness[:, 1]) > 1, staleness
    assert np.array_equal(pushes.sum(axis=0), steps), (pushes, steps)
    # a round's uncompressed bytes are its pushes' gradients; the ps bytes have their own column
    assert np.array_equal(record.per_rank["bytes_uncompressed"], pushes * record.memory["grads"])
    assert (record.per_group["ps"]["bytes_sent"] > pushes * record.memory["grads"]).all()
    assert not record.per_group["other"]["bytes_sent"].any()


def test_ssp_runs_ahead_by_at_most_s_and_resumes_from_a_checkpoint_between_clocks(tmp_path):
    sets = (*PS, "--set", "ps.mode=ssp", "--set", "ps.staleness=2", "--set", "train.checkpoint_interval=3")
    rc, out, err, _ = train(tmp_path, 3, *sets)
    assert rc == 0, out[-2000:] + err[-2000:]
    run = tmp_path / "r"
    report, steps = server_report(run), summary(run)["steps_per_rank"]
    staleness = [s for _, _, s in report["applied"]]
    assert max(staleness) == 2 and steps[0] > steps[1], (report["staleness_histogram"], steps)
    assert read_ckpt(run)[2]["optim_t"] == report["updates"] == min(steps), (report["updates"], steps)
    rc, out, err, _ = train(tmp_path, 3, resume="r", steps=8)
    assert rc == 0, out[-2000:] + err[-2000:]
    again = server_report(run)
    assert max(s for _, _, s in again["applied"]) <= 2 and again["updates"] > report["updates"], again


def test_adpsgd_fast_rank_takes_more_steps(tmp_path):
    rc, out, err, _ = train(tmp_path, 2, *ADPSGD)
    assert rc == 0, out[-2000:] + err[-2000:]
    steps = summary(tmp_path / "r")["steps_per_rank"]
    assert steps[0] > steps[1] >= 6, steps
    consensus = record_metric(tmp_path / "r", "consensus")
    assert np.isfinite(consensus[1::2]).all() and np.isnan(consensus[0::2]).all(), consensus


@pytest.mark.parametrize("n, sets", [(3, PS + ("--set", "ps.mode=async")), (2, ADPSGD)], ids=["ps_async", "adpsgd"])
def test_nan_on_one_rank_stops_every_rank(tmp_path, n, sets):
    rc, out, err, _ = train(tmp_path, n, *sets, slow=0, nan_rank=1, nan_from=3, steps=50)
    assert rc == 2, out[-2000:] + err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("hpclm:")]
    assert len(lines) == 1 and lines[0].startswith("hpclm: error: step 4: the training loss is nan"), err[-2000:]
    assert "on rank 1;" in lines[0] and "Traceback" not in err, lines
    assert not (tmp_path / "r" / "ckpt.h5").exists()


def test_sigterm_stops_async_ps_at_a_round_and_checkpoints(tmp_path):
    proc = popen(command(tmp_path, 3, *PS, "--set", "ps.mode=async", steps=100_000))
    signal_at_line(proc, "step 3/")                 # mpiexec forwards it to the workers and the server
    rc, out, err, _ = finish(proc, 60)
    assert rc == 0 and "signal received: checkpointing at step" in out, out[-2000:] + err[-2000:]
    step = read_ckpt(tmp_path / "r")[2]["step"]
    steps = summary(tmp_path / "r")["steps_per_rank"]
    assert 3 <= step < 100_000 and steps[0] > steps[1] >= step, (step, steps)
