"""Gossip SGD through `hpclm train` under mpiexec: a run stopped and resumed at the same world size
continues every rank's own model (the checkpoint's /extra rows) to float64 round-off, the
checkpoint's params are the ranks' average, resume at another world size starts from that average,
and bad [gossip] input ends every rank with one `hpclm: error:` line and exit 2."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from trainutil import env, mpiexec, read_ckpt, tiny_args

STEPS = 4


def train(n, argv, timeout=240):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "hpclm.cli", "train"] + argv
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(env(), MPIR_CVAR_ENABLE_HEAVY_YIELD="1"),
                          timeout=timeout)


def extra(run_dir, name):
    with h5py.File(run_dir / "ckpt.h5", "r") as f:
        return f[f"extra/{name}"][...]


@pytest.mark.parametrize("algorithm, topology", [("dpsgd", "ring"), ("dpsgd_atc", "star")])
def test_resume_continues_every_rank(tmp_path, algorithm, topology):
    """(At P = 3 the ring is the complete graph with weights 1/3: adapt-then-combine would keep the
    replicas equal, so it runs on the star.)"""
    sets = tiny_args(tmp_path / "cache", "--set", "parallel.sync=gossip", "--set", f"gossip.algorithm={algorithm}",
                     "--set", f"gossip.topology={topology}", "--set", "gossip.consensus_every=1",
                     "--set", "train.batch_size=12", steps=STEPS, dtype="float64")
    straight, part = tmp_path / "straight", tmp_path / "part"
    for proc in (train(3, ["--out", str(straight)] + sets),
                 train(3, ["--out", str(part)] + sets + ["--set", f"train.max_steps={STEPS // 2}"]),
                 train(3, ["--resume", str(part), "--set", f"train.max_steps={STEPS}"])):
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows_a, rows_b = extra(straight, "gossip.params"), extra(part, "gossip.params")
    assert rows_a.shape[0] == 3 and not np.allclose(rows_a[0], rows_a[1])          # replicas differ
    assert np.allclose(rows_a, rows_b, rtol=1e-12, atol=1e-13), np.abs(rows_a - rows_b).max()
    (pa, oa, aa), (pb, ob, ab) = read_ckpt(straight), read_ckpt(part)
    assert aa["step"] == ab["step"] == STEPS
    assert np.allclose(pa, rows_a.mean(axis=0), rtol=1e-12, atol=1e-14)             # params = x̄
    assert np.allclose(pa, pb, rtol=1e-12, atol=1e-13)
    for name in oa:
        assert np.allclose(oa[name], ob[name], rtol=1e-10, atol=1e-13), name
    # another world size starts from x̄ (its rows do not fit) and trains on
    again = train(2, ["--resume", str(straight), "--out", str(tmp_path / "two"), "--set", f"train.max_steps={STEPS + 1}"])
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert extra(tmp_path / "two", "gossip.params").shape[0] == 2


@pytest.mark.parametrize("bad, words", [(["--set", "gossip.topology=hypercube"], "gossip.topology"),
                                        (["--set", "parallel.zero=1"], "parallel.sync=gossip")])
def test_bad_gossip_input(tmp_path, bad, words):
    proc = train(2, ["--out", str(tmp_path / "r"), "--set", "parallel.sync=gossip"]
                 + tiny_args(tmp_path / "cache") + bad, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hpclm: error:")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) >= 1 and all(words in line for line in lines) and "Traceback" not in proc.stderr, proc.stderr
