"""A DiLoCo run (parallel.sync=local, topk pseudo-gradient with error feedback) checkpointed in the
middle of a period and resumed through the CLI ends bit for bit where the uninterrupted run does:
params (x̄), the mean inner state, and every rank's own row in /extra (parameters, AdamW moments,
anchor, outer momentum, error buffers)."""
import subprocess
import sys

import h5py
import numpy as np
from trainutil import env, mpiexec, read_ckpt, tiny_args

STEPS, H = 7, 2


def train(n, argv, timeout=240):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "hpclm.cli", "train"] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env(), MPIR_CVAR_ENABLE_HEAVY_YIELD="1"),
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def extra(run_dir):
    with h5py.File(run_dir / "ckpt.h5", "r") as f:
        return {name: ds[...] for name, ds in f["extra"].items()}


def test_diloco_resume_mid_period_is_bit_exact(tmp_path):
    sets = tiny_args(tmp_path / "cache", "--set", "parallel.sync=local", "--set", "local.outer=diloco",
                     "--set", f"local.steps={H}", "--set", "compress.name=topk", "--set", "train.eval_interval=1",
                     steps=STEPS)
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(2, ["--out", str(straight)] + sets)
    train(2, ["--out", str(part)] + sets + ["--set", "train.max_steps=3"])          # step 3: mid-period
    train(2, ["--resume", str(part), "--set", f"train.max_steps={STEPS}"])
    (pa, oa, aa), (pb, ob, ab) = read_ckpt(straight), read_ckpt(part)
    assert aa["step"] == ab["step"] == STEPS and np.array_equal(pa, pb)
    assert sorted(oa) == sorted(ob) and all(np.array_equal(oa[k], ob[k]) for k in oa)
    ea, eb = extra(straight), extra(part)
    assert {"local.params", "local.anchor", "local.outer_momentum", "local.optim.exp_avg"} <= set(ea)
    assert sorted(ea) == sorted(eb) and all(np.array_equal(ea[k], eb[k]) for k in ea), \
        [k for k in ea if not np.array_equal(ea[k], eb[k])]
    assert not np.array_equal(ea["local.params"][0], ea["local.params"][1])     # mid-period at the end too
