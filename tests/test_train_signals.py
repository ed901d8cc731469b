"""`mpiexec -n 2 hpclm train` as a job: SIGTERM (Slurm pre-emption) checkpoints and exits 0 so that
--resume continues the same trajectory; an exception on one rank aborts the whole job within
seconds; SIGKILL leaves a readable timing record; a setup error on one rank ends every rank.

MPICH's hydra mpiexec forwards SIGTERM (and SIGUSR1) to every rank; the ranks agree at the next
step boundary (hpclm.train), so signalling mpiexec is enough."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainutil import assert_same_state, env, finish, mpiexec, read_ckpt, summary, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.timing.reader import read_run  # noqa: E402

LONG = 100_000   # steps: "until signalled"

# Runs hpclm.cli.main after an optional fault injection; every rank writes its pid to PIDDIR/pid.<rank>.
LAUNCHER = textwrap.dedent("""
    import os, sys
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    piddir, fault = sys.argv[1], sys.argv[2]
    with open(os.path.join(piddir, f"pid.{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    import hpclm.train as T
    from hpclm.errors import UserError
    if fault == "step-error":            # rank 1 raises in its third optimizer step
        import hpclm.parallel.optimizer as O
        orig, calls = O.clip_by_global_norm, [0]
        def clip(g, c):
            calls[0] += 1
            if rank == 1 and calls[0] == 3:
                raise RuntimeError("injected failure in the training loop")
            return orig(g, c)
        O.clip_by_global_norm = clip
    elif fault == "setup-error":         # rank 1 cannot build its model (not a UserError)
        orig_build = T.build_model
        def build(cfg, threads, *rest):
            if rank == 1:
                raise RuntimeError("injected failure while building the model")
            return orig_build(cfg, threads, *rest)
        T.build_model = build
    elif fault == "setup-user-error":    # rank 1 alone finds bad input
        orig_load = T.load_tokens
        def load(cfg, block_size=0):
            if rank == 1:
                raise UserError("injected: this rank cannot read its data")
            return orig_load(cfg, block_size)
        T.load_tokens = load
    from hpclm.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def launch(tmp_path, fault, argv, n=2):
    piddir = tmp_path / f"pids-{fault}"
    piddir.mkdir(exist_ok=True)
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-c", LAUNCHER, str(piddir), fault, "train"] + argv
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    return proc, piddir


def wait_for_line(proc, prefix, timeout=60):
    """Read stdout until a line starts with `prefix`; returns the lines read."""
    seen, t0 = [], time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
        if time.monotonic() - t0 > timeout:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"never saw {prefix!r}: {''.join(seen)[-2000:]} {proc.stderr.read()[-2000:]}")


def run_job(argv, timeout=120):
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpclm.cli", "train"] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


# ------------------------------------------------------------------------------------------ (a)
@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A 2-rank run stopped with SIGTERM to mpiexec: (tmp dir, run dir, cache, rc, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("sigterm")
    cache, run_dir = tmp / "cache", tmp / "stopped"
    argv = ["--out", str(run_dir)] + tiny_args(cache, "--set", f"train.log_interval={LONG}", "--set", "train.eval_interval=0",
                                               steps=LONG, dtype="float64")
    proc, _ = launch(tmp, "none", argv)
    seen = wait_for_line(proc, "step 1/")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)            # to mpiexec; hydra forwards it to the ranks
    rc, out, err, _ = finish(proc, 60)
    stopped_summary = (run_dir / "summary.json").read_text() if rc == 0 else ""   # before a resume rewrites it
    return tmp, run_dir, cache, rc, "".join(seen) + out, err, stopped_summary


def test_sigterm_checkpoints_and_exits_0(sigterm_run):
    _, run_dir, _, rc, out, err, _ = sigterm_run
    assert rc == 0, out[-2000:] + err[-2000:]
    assert "signal received: checkpointing at step" in out
    _, _, attrs = read_ckpt(run_dir)
    assert 1 <= attrs["step"] < LONG
    s = summary(run_dir)
    assert s["end_step"] == attrs["step"] and s["world_size"] == 2
    assert read_run(run_dir).n_steps == attrs["step"]       # every step up to the stop is recorded


def test_sigterm_resume_continues_the_same_trajectory(sigterm_run):
    tmp, run_dir, cache, rc, _, _, _ = sigterm_run
    assert rc == 0
    stopped_at = read_ckpt(run_dir)[2]["step"]
    total = stopped_at + 3
    run_job(["--resume", str(run_dir), "--set", f"train.max_steps={total}"])
    straight = tmp / "straight"
    run_job(["--out", str(straight)] + tiny_args(cache, "--set", f"train.log_interval={LONG}", "--set", "train.eval_interval=0",
                                                 steps=total, dtype="float64"))
    assert read_ckpt(run_dir)[2]["step"] == total
    assert_same_state(run_dir / "ckpt.h5", straight / "ckpt.h5")


def test_sigterm_summary_is_strict_json(sigterm_run):
    """A run stopped by a signal still reports a validation loss: summary.json must be standard JSON
    (json.dump writes a NaN as the bare token NaN, which strict JSON readers reject)."""
    import json
    _, _, _, rc, _, _, text = sigterm_run
    assert rc == 0

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")
    s = json.loads(text, parse_constant=reject)
    assert np.isfinite(s["val_loss"])


# ------------------------------------------------------------------------------------------ (b)
def test_exception_on_one_rank_aborts_the_job(tmp_path):
    argv = ["--out", str(tmp_path / "r")] + tiny_args(tmp_path / "cache", steps=LONG)
    proc, _ = launch(tmp_path, "step-error", argv)
    rc, out, err, seconds = finish(proc, 60)
    assert rc != 0, out[-2000:]
    assert seconds < 20
    assert "uncaught exception on rank 1" in err and "injected failure in the training loop" in err
    assert "Traceback" in err                     # an unexpected error keeps its traceback
    assert not (tmp_path / "r" / "ckpt.h5").exists()


# ------------------------------------------------------------------------------------------ (c)
def test_sigkill_leaves_an_analyzable_timing_record(tmp_path, capsys):
    run_dir = tmp_path / "r"
    argv = ["--out", str(run_dir)] + tiny_args(tmp_path / "cache", "--set", f"train.log_interval={LONG}", steps=LONG)
    proc, piddir = launch(tmp_path, "none", argv)
    wait_for_line(proc, "step 1/")
    t0 = time.monotonic()
    while True:                                   # read the live record (SWMR) until a few flushes landed
        try:
            if read_run(run_dir).n_steps >= 6:
                break
        except Exception:                          # noqa: BLE001  (not created / mid-flush)
            pass
        assert time.monotonic() - t0 < 30, "no steps flushed to timing.h5"
        time.sleep(0.1)
    os.kill(int((piddir / "pid.0").read_text()), signal.SIGKILL)   # the rank that writes the record
    rc, _, err, seconds = finish(proc, 30)
    assert rc != 0 and seconds < 20, err[-2000:]
    run = read_run(run_dir)
    assert run.world_size == 2 and run.n_steps >= 6
    assert list(run.step) == list(range(run.n_steps))
    assert np.all(run.per_rank["bytes_sent"] > 0)
    capsys.readouterr()
    assert main(["analyze", str(run_dir)]) == 0
    assert "2 ranks" in capsys.readouterr().out
    assert not (run_dir / "ckpt.h5").exists()


# ------------------------------------------------------------------------------------------ (d)
def test_user_error_on_one_rank_during_setup(tmp_path):
    argv = ["--out", str(tmp_path / "r")] + tiny_args(tmp_path / "cache")
    proc, _ = launch(tmp_path, "setup-user-error", argv)
    rc, out, err, seconds = finish(proc, 60)
    assert rc == 2, out[-2000:] + err[-2000:]
    assert seconds < 20
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hpclm: error: injected: this rank cannot read its data") and "on rank 1" in lines[0]
    assert "Traceback" not in err


def test_crash_on_one_rank_during_setup(tmp_path):
    argv = ["--out", str(tmp_path / "r")] + tiny_args(tmp_path / "cache")
    proc, _ = launch(tmp_path, "setup-error", argv)
    rc, out, err, seconds = finish(proc, 60)
    assert rc != 0 and seconds < 20, out[-2000:] + err[-2000:]
    assert "uncaught exception on rank 1" in err and "injected failure while building the model" in err
    assert "rank 0" not in err
