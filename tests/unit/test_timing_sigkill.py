"""A run killed with SIGKILL keeps every flushed step, and `hpclm analyze` reads it."""
import signal
import subprocess
import sys
import textwrap

from hpclm.cli import main
from hpclm.timing.reader import read_run

WRITER = textwrap.dedent("""
    import os, signal, sys
    from hpclm.timing.recorder import Recorder
    rec = Recorder(sys.argv[1], None, {"git_commit": "killed"}, flush_every=5)
    for step in range(1000):
        rec.log_step(step, {"forward": 0.010, "comm": 0.002 + step * 1e-6}, step_time=0.015,
                     tokens=64, loss=5.0 - step * 0.01, global_loss=5.0 - step * 0.01, bytes_sent=4096)
        if step == 23:
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_killed_run_is_readable_and_analyzable(tmp_path, capsys):
    run_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = read_run(run_dir)
    assert run.n_steps >= 20 and list(run.step) == list(range(run.n_steps))
    assert run.per_rank["tokens"][:, 0].tolist() == [64.0] * run.n_steps
    assert main(["analyze", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "killed: 1 ranks" in out and "tokens/s" in out
