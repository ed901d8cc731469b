"""`hpclm train` in-process on every rank of an MPI job: it completes, rank 0 writes the checkpoint
and a timing record of P ranks with bytes on the wire, and the result equals the single-process
run with the same global batch (float64, to round-off). Setup errors end every rank with exit 2."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import env, read_ckpt, summary, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.timing.reader import read_run  # noqa: E402

MPI_SIZES = (2, 4)
STEPS = 5


def shared_dir(comm):
    return Path(comm.bcast(tempfile.mkdtemp(prefix="hpclm-train-mpi-") if comm.Get_rank() == 0 else None, root=0))


def args(cache, *extra):
    return tiny_args(cache, "--set", "train.batch_size=8", *extra, steps=STEPS, dtype="float64")


def single_process(run_dir, cache, *extra):
    """The P=1 run, in a child process that is no part of this MPI job (PMI variables removed)."""
    child_env = {k: v for k, v in env().items() if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_"))}
    cmd = [sys.executable, "-m", "hpclm.cli", "train", "--out", str(run_dir)] + args(cache, *extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env)
    return proc.returncode, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def base():
    """(shared directory, token cache, P=1 run dir) with the reference run made on rank 0."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    root = shared_dir(world)
    cache, ref = root / "cache", root / "p1"
    problem = None
    if world.Get_rank() == 0:
        rc, err = single_process(ref, cache)
        problem = None if rc == 0 else f"single-process run failed ({rc}): {err}"
    problem = world.bcast(problem, root=0)
    assert problem is None, problem
    return root, cache, ref


@pytest.mark.parametrize("comm_sets", [(), ("--set", "comm.algorithm=ring", "--set", "comm.bucket_mb=0.01"),
                                       ("--set", "comm.algorithm=tree", "--set", "comm.overlap=false")],
                         ids=["mpi", "ring-buckets", "tree-no-overlap"])
def test_train_matches_single_process(world, base, comm_sets):
    root, cache, ref = base
    rank, size = world.Get_rank(), world.Get_size()
    run_dir = root / ("run-" + "-".join(comm_sets[1::2]).replace("=", "_").replace(".", "_") if comm_sets else "run-mpi")
    rc = main(["train", "--out", str(run_dir)] + args(cache, *comm_sets))
    assert_all(world, rc == 0, f"rc {rc}")
    problems = []
    if rank == 0:
        params, optim, attrs = read_ckpt(run_dir)
        ref_params, ref_optim, _ = read_ckpt(ref)
        if attrs["step"] != STEPS:
            problems.append(f"checkpoint step {attrs['step']}")
        if not np.allclose(params, ref_params, rtol=1e-10, atol=1e-13):
            problems.append(f"params differ from P=1: max |d| {np.max(np.abs(params - ref_params)):.3e}")
        if not np.allclose(optim["exp_avg_sq"], ref_optim["exp_avg_sq"], rtol=1e-9, atol=1e-18):
            problems.append("optimizer state differs from P=1")
        s, s_ref = summary(run_dir), summary(ref)
        if s["world_size"] != size or s["end_step"] != STEPS:
            problems.append(f"summary {s}")
        if abs(s["val_loss"] - s_ref["val_loss"]) > 1e-10 * abs(s_ref["val_loss"]):
            problems.append(f"val loss {s['val_loss']!r} vs P=1 {s_ref['val_loss']!r}")
        run = read_run(run_dir)
        if run.world_size != size or list(run.step) != list(range(STEPS)):
            problems.append(f"timing record: world_size {run.world_size}, steps {list(run.step)}")
        sent = run.per_rank["bytes_sent"]
        if sent.shape != (STEPS, size) or not np.all(sent > 0):
            problems.append(f"bytes_sent {sent.tolist()}")
        if not np.all(run.per_rank["tokens"] == 8 * 16 // size):
            problems.append(f"tokens per rank {run.per_rank['tokens'].tolist()}")
    else:
        if os.path.exists(run_dir / "ckpt.h5.tmp-{}".format(os.getpid())):
            problems.append("rank wrote a checkpoint temp file")
    assert_all(world, not problems, "; ".join(problems))


def test_bad_config_on_every_rank_exits_2_once(world, base, capsys):
    root, cache, _ = base
    capsys.readouterr()
    rc = main(["train", "--out", str(root / "bad")] + args(cache, "--set", "model.n_layer=abc"))
    err = capsys.readouterr().err
    assert_all(world, rc == 2, f"rc {rc}")
    lines = [line for line in err.splitlines() if line.strip()]
    if world.Get_rank() == 0:
        ok = len(lines) == 1 and lines[0].startswith("hpclm: error: ") and "model.n_layer" in lines[0]
        assert_all(world, ok and "rank" not in lines[0], err)
    else:
        assert_all(world, lines == [], err)     # printed once, by rank 0


def test_bad_config_on_one_rank_names_it(world, base, capsys):
    root, cache, _ = base
    rank, size = world.Get_rank(), world.Get_size()
    bad = ["--set", "train.seed=x"] if rank == size - 1 else []
    capsys.readouterr()
    rc = main(["train", "--out", str(root / "bad1")] + args(cache, *bad))
    err = capsys.readouterr().err
    assert_all(world, rc == 2, f"rc {rc}")
    if rank == 0:
        assert_all(world, err.startswith("hpclm: error: ") and f"on rank {size - 1}" in err
                   and "train.seed" in err and err.count("\n") == 1, err)
    else:
        assert_all(world, err == "", err)


def test_indivisible_batch_fails_everywhere(world, base, capsys):
    root, cache, _ = base
    size = world.Get_size()
    capsys.readouterr()
    rc = main(["train", "--out", str(root / "bad2")] + args(cache, "--set", f"train.batch_size={size + 1}"))
    err = capsys.readouterr().err
    assert_all(world, rc == 2, f"rc {rc}")
    if world.Get_rank() == 0:
        assert_all(world, "batch_size" in err and str(size) in err, err)
    else:
        assert_all(world, err == "", err)
    assert_all(world, not (root / "bad2" / "ckpt.h5").exists(), "a failed run wrote a checkpoint")
