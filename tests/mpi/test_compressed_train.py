"""`hpclm train` with gradient compression under MPI (in-process on every rank): short runs with
topk + error feedback (overlapped buckets and after backward), PowerSGD and the 1-bit all-reduce
complete, every rank ends with the same parameters, the timing record has bytes_sent far below
bytes_uncompressed, and a run stopped half-way and resumed from its checkpoint (error buffers /
PowerSGD Q in /extra) reproduces the straight run bit for bit."""
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import read_ckpt, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.timing.reader import read_run  # noqa: E402

MPI_SIZES = (2,)
STEPS = 4

CASES = {
    "topk": ["--set", "compress.name=topk", "--set", "compress.density=0.02", "--set", "comm.bucket_mb=0.005"],
    "topk-no-overlap": ["--set", "compress.name=topk", "--set", "compress.density=0.02",
                        "--set", "comm.bucket_mb=0.005", "--set", "comm.overlap=false"],
    "powersgd": ["--set", "compress.name=powersgd", "--set", "compress.powersgd_rank=2"],
    "onebit": ["--set", "compress.name=ef_sign", "--set", "comm.bucket_mb=0.005"],
}


def shared_dir(comm):
    return Path(comm.bcast(tempfile.mkdtemp(prefix="hpclm-compressed-") if comm.Get_rank() == 0 else None, root=0))


@pytest.fixture(scope="module")
def root():
    from mpi4py import MPI
    return shared_dir(MPI.COMM_WORLD)


def available(name):
    from hpclm import compress
    return name in ("powersgd", "ef_sign") or name in compress.REGISTRY


def extras(path):
    with h5py.File(Path(path) / "ckpt.h5", "r") as f:
        return {name: ds[...] for name, ds in f.get("extra", {}).items()}


@pytest.mark.parametrize("case", list(CASES))
def test_train_and_resume(world, root, case):
    sets = CASES[case]
    if not available(sets[1].split("=")[1]):
        pytest.skip("compressor not in the registry yet")
    cache = root / "cache"
    straight, part = root / f"{case}-straight", root / f"{case}-part"
    base = lambda steps: tiny_args(cache, "--set", "train.batch_size=8", *sets, steps=steps)  # noqa: E731
    rc = main(["train", "--out", str(straight)] + base(STEPS))
    assert_all(world, rc == 0, f"straight run rc {rc}")
    rc = main(["train", "--out", str(part)] + base(STEPS // 2))
    assert_all(world, rc == 0, f"first half rc {rc}")
    rc = main(["train", "--resume", str(part), "--set", f"train.max_steps={STEPS}"])
    assert_all(world, rc == 0, f"resume rc {rc}")
    problems = []
    if world.Get_rank() == 0:
        pa, oa, aa = read_ckpt(straight)
        pb, ob, ab = read_ckpt(part)
        if not np.array_equal(pa, pb):
            problems.append(f"resumed params differ: max |d| {np.max(np.abs(pa - pb)):.3e}")
        if any(not np.array_equal(oa[k], ob[k]) for k in oa):
            problems.append("resumed optimizer state differs")
        ea, eb = extras(straight), extras(part)
        if not ea or sorted(ea) != sorted(eb):
            problems.append(f"extras {sorted(ea)} vs {sorted(eb)}")
        for k in ea:
            if ea[k].shape[0] != world.Get_size() or not np.array_equal(ea[k], eb.get(k)):
                problems.append(f"extra {k} differs or has shape {ea[k].shape}")
        if not np.any([np.any(v != 0) for v in ea.values()]):
            problems.append("all compression state is zero")
        run = read_run(straight)
        sent, unc = run.per_rank["bytes_sent"], run.per_rank["bytes_uncompressed"]
        ratio = unc.sum() / max(sent.sum(), 1)
        if not (np.all(sent > 0) and ratio > 4):
            problems.append(f"bytes_sent {sent.mean():.0f} vs uncompressed {unc.mean():.0f} (ratio {ratio:.1f})")
        comp = run.times["compress"]
        if not np.all(comp > 0) or not np.all(run.times["decompress"] > 0):
            problems.append("compress/decompress regions empty")
        print(f"\n{case}: bytes ratio uncompressed/sent {ratio:.1f}")
    assert_all(world, not problems, "; ".join(problems))


def test_one_rank_compression_applies(world, root):
    """A single-process run (a sub-communicator of one) still compresses: topk at 2% trains
    differently from no compression."""
    from mpi4py import MPI
    del MPI
    if not available("topk"):
        pytest.skip("topk not in the registry yet")
    from hpclm.config import CompressConfig, ModelConfig
    from hpclm.model import GPT
    from hpclm.compress.memory import build_with_memory
    from hpclm.parallel.compressed import CompressedSync
    from hpclm.parallel.exchange import Compressed
    from hpclm.config import CommConfig
    self_comm = world.Split(world.Get_rank(), 0)
    model = GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=1)
    x = np.random.default_rng(0).integers(0, 11, size=(4, 8))
    model.forward_backward(x, np.roll(x, 1, axis=1))
    before = model.grad_flat.copy()
    cfg = CompressConfig(name="topk", density=0.02)
    sync = CompressedSync(self_comm, model.grad_flat, CommConfig(bucket_mb=0),
                          lambda n, dt: Compressed(build_with_memory(cfg, n, dt), "gather"))
    sync.finish()
    kept = np.count_nonzero(model.grad_flat)
    self_comm.Free()
    assert_all(world, 0 < kept <= int(0.02 * before.size) + 1 and not np.array_equal(before, model.grad_flat),
               f"{kept} nonzero of {before.size}")


@pytest.mark.parametrize("case", ["topk", "powersgd", "onebit"])
def test_warmup_averages_uncompressed(world, root, case):
    """With compress.warmup_steps covering the run, every strategy trains exactly like no compression."""
    cache = root / "cache"
    plain, warm = root / f"{case}-plain", root / f"{case}-warm"
    pairs = zip(CASES[case][::2], CASES[case][1::2])
    sets = [word for flag, value in pairs if not value.startswith("comm.") for word in (flag, value)]
    args = lambda *extra: tiny_args(cache, "--set", "train.batch_size=8", "--set", "comm.bucket_mb=0.005",  # noqa: E731
                                    *extra, steps=STEPS)
    assert main(["train", "--out", str(plain)] + args()) == 0
    assert main(["train", "--out", str(warm)] + args(*sets, "--set", f"compress.warmup_steps={STEPS}")) == 0
    if world.Get_rank() == 0:
        same = np.array_equal(read_ckpt(warm)[0], read_ckpt(plain)[0])
    else:
        same = True
    assert_all(world, same, f"{case}: warm-up steps differ from uncompressed training")
