"""Shared helpers for the `hpclm train` tests: a tiny, fast configuration and checkpoint readers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def tiny_args(cache_dir, *extra, steps=4, dtype="float32"):
    """--set flags for a model that trains in well under a second on one core.

    optim.decay_steps is pinned so that the LR schedule does not depend on train.max_steps (a run
    stopped early and resumed with a larger max_steps then follows the straight run exactly)."""
    sets = {
        "data.builtin_chars": 20000, "data.cache_dir": str(cache_dir),
        "model.n_layer": 1, "model.n_embd": 16, "model.n_head": 2, "model.block_size": 16,
        "train.max_steps": steps, "train.batch_size": 4, "train.eval_batches": 2, "train.threads": 1,
        "train.log_interval": 1, "train.timing_flush": 2, "train.dtype": dtype,
        "optim.warmup_steps": 2, "optim.decay_steps": 8, "optim.lr": 1e-2, "optim.min_lr": 1e-3,
        "comm.check_every": 1,
    }
    out = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out + list(extra)


def read_ckpt(path):
    """(params, {optim state name: array}, attrs) of a checkpoint file or run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.h5"
    with h5py.File(path, "r") as f:
        params = f["params"][...]
        optim = {name: ds[...] for name, ds in f["optim"].items()}
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return params, optim, attrs


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def mpiexec():
    exe = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    assert exe is not None, "mpiexec not found: run the tests through jobscripts/test.sh, which installs MPICH"
    return exe


def env():
    """Environment for child processes: unbuffered, one BLAS thread, this checkout importable."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
             MKL_NUM_THREADS="1")
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("HPCLM_UNDER_MPI", None)
    return e


def assert_same_state(a, b):
    """Two checkpoints hold bit-identical parameters and optimizer state."""
    pa, oa, aa = read_ckpt(a)
    pb, ob, ab = read_ckpt(b)
    assert pa.dtype == pb.dtype and np.array_equal(pa, pb), f"params differ: max |d| = {np.max(np.abs(pa - pb))}"
    assert sorted(oa) == sorted(ob) and oa, (sorted(oa), sorted(ob))
    for name in oa:
        assert np.array_equal(oa[name], ob[name]), f"optimizer state {name} differs"
    assert aa["step"] == ab["step"] and aa["optim_t"] == ab["optim_t"]


def popen(cmd):
    """Start `cmd` in its own session (so `finish` can kill the whole group), output captured."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)


def wait_for_file(proc, path, limit, what):
    """Wait until `path` exists; fail with `what` if `proc` ends or `limit` seconds pass first."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None and time.monotonic() - t0 < limit, what
        time.sleep(0.05)


def signal_at_line(proc, prefix, sig=signal.SIGTERM):
    """Read `proc`'s stdout until a line starts with `prefix`, then send it `sig` (mpiexec forwards
    it to every rank)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            break
    proc.send_signal(sig)


def finish(proc, timeout):
    """(returncode, stdout, stderr, seconds); kills the whole process group on timeout."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"job did not end within {timeout} s (hang)\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err, time.monotonic() - t0
