"""Faults of a running `hpclm train` job (issue 12): SIGTERM while set-up waits for a peer ends
the job at once with one line (item 8); a NaN loss stops every rank with one line naming the
step and writes no checkpoint (item 4); Ctrl-C (SIGINT) during training checkpoints like
SIGTERM (item 9)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainutil import env, finish, mpiexec, popen, read_ckpt, tiny_args, wait_for_file  # noqa: E402

LONG = 100_000

# Rank 1 never finishes building its model (a stuck peer); rank 0 waits for it inside MPI.
LAUNCHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mpi4py import MPI
    import hpclm.train as T
    marker = Path(sys.argv[1])
    def build(cfg, threads, *rest):
        if MPI.COMM_WORLD.Get_rank() == 1:
            marker.write_text("stuck")
            while True:
                time.sleep(1)
        return orig(cfg, threads, *rest)
    orig, T.build_model = T.build_model, build
    from hpclm.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def hpclm_lines(err):
    return [line for line in err.splitlines() if line.startswith("hpclm:")]


def test_sigterm_while_setup_waits_for_a_peer_ends_the_job(tmp_path):
    marker = tmp_path / "stuck"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-c", LAUNCHER, str(marker), "train", "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache")
    proc = popen(cmd)
    wait_for_file(proc, marker, 60, "rank 1 never reached the model build")
    time.sleep(0.5)                                   # rank 0 is now waiting in the collective
    proc.send_signal(signal.SIGTERM)                  # to mpiexec, which forwards it to both ranks
    rc, out, err, seconds = finish(proc, 30)
    assert rc != 0 and seconds < 10, (rc, seconds, err[-2000:])
    assert hpclm_lines(err) == ["hpclm: stopped by SIGTERM during set-up, before the first step; nothing to save"], err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "ckpt.h5").exists()


def test_nan_loss_stops_every_rank_with_one_line(tmp_path):
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpclm.cli", "train", "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache", "--set", "optim.lr=1e30", steps=8)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    rc, out, err, _ = finish(proc, 120)
    assert rc == 2, out[-2000:] + err[-2000:]
    lines = hpclm_lines(err)
    assert len(lines) == 1 and lines[0].startswith("hpclm: error: step ") and "nan" in lines[0], err
    assert "on rank 0, 1" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "r" / "ckpt.h5").exists() and not (tmp_path / "r" / "summary.json").exists()


def test_ctrl_c_during_training_checkpoints_and_exits_0(tmp_path):
    run_dir = tmp_path / "r"
    cmd = [sys.executable, "-m", "hpclm.cli", "train", "--out", str(run_dir)] \
        + tiny_args(tmp_path / "cache", "--set", f"train.log_interval={LONG}", "--set", "train.eval_interval=0", steps=LONG)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("step 1/"):
            break
    proc.send_signal(signal.SIGINT)
    rc, out, err, _ = finish(proc, 60)
    assert rc == 0, out[-2000:] + err[-2000:]
    assert "signal received: checkpointing at step" in out
    assert 1 <= read_ckpt(run_dir)[2]["step"] < LONG


def test_sigterm_while_reading_the_data_ends_the_run(tmp_path):
    """One process blocked reading --data (a FIFO nobody writes to): SIGTERM ends it, one line."""
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "hpclm.cli", "train", "--data", str(fifo), "--out", str(tmp_path / "r")] \
        + tiny_args(tmp_path / "cache")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    t0 = time.monotonic()
    while True:                                        # opening the write end succeeds once the run reads it
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() - t0 < 60, "the run never opened its data"
            time.sleep(0.05)
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        rc, out, err, seconds = finish(proc, 30)
    finally:
        os.close(writer)
    assert rc == 128 + signal.SIGTERM and seconds < 10, (rc, err)
    assert err == "hpclm: stopped by SIGTERM during set-up, before the first step; nothing to save\n"
    assert not (tmp_path / "r" / "ckpt.h5").exists()
