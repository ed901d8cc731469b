"""Parameter servers through `hpclm train` (parallel.sync = ps): a worker killed mid-run ends the
whole job within seconds with MPI's report of the killed process (no hang of the servers or the
other workers); a clean run ends with every server's report written; SIGTERM checkpoints (the
server answers) and exits 0; ps.servers >= world size
is one line `hpclm: error: ...` and exit 2 (a batch the workers do not divide: tests/mpi/test_ps.py)."""
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainutil import finish, mpiexec, popen, read_ckpt, signal_at_line, tiny_args, wait_for_file  # noqa: E402

# World rank 1 (a worker) kills itself with SIGKILL when it starts step 3.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mpi4py import MPI
    import hpclm.train as T
    marker = Path(sys.argv[1])
    def step(s, n, **kw):
        if MPI.COMM_WORLD.Get_rank() == 1 and n == 3:
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(s, n, **kw)
    orig, T.train_step = T.train_step, step
    from hpclm.cli import main
    sys.exit(main(sys.argv[2:]))
""")
PS = ["--set", "parallel.sync=ps", "--set", "ps.servers=1"]


def hpclm_lines(err):
    return [line for line in err.splitlines() if line.startswith("hpclm:")]


def train(tmp_path, n, *extra, steps=4):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "hpclm.cli", "train", "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache", *extra, steps=steps)
    return finish(popen(cmd), 120)


def test_a_killed_worker_ends_the_job_within_seconds(tmp_path):
    marker = tmp_path / "killed"
    cmd = [mpiexec(), "-n", "3", sys.executable, "-c", KILLER, str(marker), "train", "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache", *PS, "--set", "ps.mode=async", steps=100_000)
    proc = popen(cmd)
    wait_for_file(proc, marker, 90, "rank 1 never reached step 3")
    rc, out, err, seconds = finish(proc, 30)
    assert rc != 0 and seconds < 15, (rc, seconds, err[-2000:])
    report = out + err                                 # MPICH reports the dead rank on stdout
    assert "BAD TERMINATION" in report and "Killed (signal 9)" in report, report[-2000:]


def test_a_clean_run_releases_the_server(tmp_path):
    rc, out, err, _ = train(tmp_path, 3, *PS)
    assert rc == 0, err[-2000:]
    report = json.loads((tmp_path / "r" / "ps-server-0.json").read_text())
    assert report["workers"] == 2 and report["updates"] == 4 and report["pushes_applied"] == 8, report


def test_sigterm_checkpoints_through_the_server_and_exits_0(tmp_path):
    cmd = [mpiexec(), "-n", "3", sys.executable, "-m", "hpclm.cli", "train", "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache", *PS, "--set", "train.eval_interval=0", steps=100_000)
    proc = popen(cmd)
    signal_at_line(proc, "step 2/")                 # mpiexec forwards it to the workers and the server
    rc, out, err, _ = finish(proc, 60)
    assert rc == 0 and "signal received: checkpointing at step" in out, out[-2000:] + err[-2000:]
    step = read_ckpt(tmp_path / "r")[2]["step"]
    report = json.loads((tmp_path / "r" / "ps-server-0.json").read_text())
    assert 2 <= step < 100_000 and report["updates"] == step, (step, report["updates"])


def test_servers_not_below_the_world_size_is_one_line(tmp_path):
    rc, out, err, _ = train(tmp_path, 2, "--set", "parallel.sync=ps", "--set", "ps.servers=2")
    assert rc == 2 and hpclm_lines(err) == ["hpclm: error: ps.servers (2) must be smaller than the world size (2): "
                                            "at least one rank must work"], err[-2000:]
    assert "Traceback" not in err
