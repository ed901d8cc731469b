"""A ZeRO checkpoint is one file in the ordinary layout: written at dp = 4, it resumes at dp = 2
(and the other way) and continues the trajectory of the uninterrupted run to float64 round-off."""
import subprocess
import sys

import numpy as np
import pytest
from trainutil import env, mpiexec, read_ckpt, tiny_args

STEPS = 4


def train(n, argv, timeout=240):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "hpclm.cli", "train"] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env(), MPIR_CVAR_ENABLE_HEAVY_YIELD="1"),
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("first, then", [(4, 2), (2, 3)])
def test_resume_on_another_dp_size(tmp_path, stage, first, then):
    sets = tiny_args(tmp_path / "cache", "--set", f"parallel.zero={stage}", "--set", "train.dtype=float64",
                     "--set", "comm.algorithm=ring", "--set", "train.batch_size=12", "--set", "comm.check_every=1",
                     steps=STEPS)
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(first, ["--out", str(straight)] + sets)
    train(first, ["--out", str(part)] + sets + ["--set", f"train.max_steps={STEPS // 2}"])
    train(then, ["--resume", str(part), "--set", f"train.max_steps={STEPS}"])
    (pa, oa, aa), (pb, ob, ab) = read_ckpt(straight), read_ckpt(part)
    assert aa["step"] == ab["step"] == STEPS and aa["optim_t"] == ab["optim_t"]
    assert np.allclose(pa, pb, rtol=1e-12, atol=1e-13), np.abs(pa - pb).max()
    for name in oa:
        assert np.allclose(oa[name], ob[name], rtol=1e-10, atol=1e-13), (name, np.abs(oa[name] - ob[name]).max())
