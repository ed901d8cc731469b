"""Data parallelism (hpclm.parallel: AllReduceSync inside the DistributedOptimizer) under MPI: P
ranks with their shards of the global batch, stepped by hpclm.train.train_step, follow the
single-process run with the same global batch to float64 round-off, for every all-reduce
algorithm, with and without overlapped buckets and gradient accumulation; check_identical catches a
diverged rank."""
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.config import CommConfig, Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.parallel.replicas import check_identical
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (1, 2, 3, 4)
VOCAB, BLOCK, SEED, STEPS = 29, 16, 11, 3
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
OPTIM = OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1, decay_steps=STEPS, grad_clip=1.0)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
RTOL, ATOL = 1e-10, 1e-13


def train(comm, batch_size, comm_cfg, grad_accum=1):
    """STEPS steps of hpclm.train.train_step; comm=None is the single-process reference.
    Returns (flat parameters, optimizer state, the gradient sync)."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    cfg = Config(model=MODEL, optim=OPTIM, comm=comm_cfg or CommConfig())
    cfg.train.grad_accum, cfg.train.max_steps, cfg.train.batch_size = grad_accum, STEPS, batch_size
    model = GPT(MODEL, seed=SEED, dtype="float64")
    strategy = build_strategy(cfg, comm, model)
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(TOKENS, BLOCK, batch_size, SEED, rank=rank, world=size))
    for step in range(STEPS):
        train_step(session, step)
    return model.flat.copy(), {k: v.copy() for k, v in strategy.optimizer.state.items()}, strategy.sync


_REFERENCE = {}


def reference(batch_size, grad_accum=1):
    key = (batch_size, grad_accum)
    if key not in _REFERENCE:
        _REFERENCE[key] = train(None, batch_size, None, grad_accum)[:2]
    return _REFERENCE[key]


def close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL)


def worst(a, b):
    return f"max |d| = {np.max(np.abs(a - b)):.3e}"


@pytest.mark.parametrize("algorithm", collectives.ALGORITHMS)
@pytest.mark.parametrize("overlap", [False, True], ids=["after-backward", "overlapped"])
def test_matches_single_process(world, algorithm, overlap):
    cfg = CommConfig(algorithm=algorithm, bucket_mb=0.02, overlap=overlap)     # ~20 KB buckets
    flat, state, dp = train(world, 12, cfg)
    ref_flat, ref_state = reference(12)
    init = GPT(MODEL, seed=SEED, dtype="float64").flat
    assert_all(world, len(dp.buckets) >= 4, f"only {len(dp.buckets)} buckets")
    assert_all(world, not np.allclose(flat, init), "parameters did not move")
    assert_all(world, close(flat, ref_flat), f"{algorithm}: params vs single process: {worst(flat, ref_flat)}")
    for name in ref_state:
        assert_all(world, close(state[name], ref_state[name]), f"{algorithm}: optimizer {name}: "
                   f"{worst(state[name], ref_state[name])}")
    # every rank holds the same parameters (bit for bit: all ranks apply the same averaged gradient)
    assert_all(world, world.allgather(flat.tobytes()) == [flat.tobytes()] * world.Get_size(),
               "ranks disagree on their parameters")


@pytest.mark.parametrize("algorithm", ["ring", "mpi"])
def test_overlapped_equals_not_overlapped(world, algorithm):
    a, _, dp_a = train(world, 12, CommConfig(algorithm=algorithm, bucket_mb=0.01, overlap=True))
    b, _, dp_b = train(world, 12, CommConfig(algorithm=algorithm, bucket_mb=0.01, overlap=False))
    c, _, _ = train(world, 12, CommConfig(algorithm=algorithm, bucket_mb=0, overlap=False))    # one bucket
    assert_all(world, len(dp_a.buckets) >= 8 and dp_a.buckets == dp_b.buckets, f"{len(dp_a.buckets)} buckets")
    assert_all(world, close(a, b), f"overlap vs not: {worst(a, b)}")
    assert_all(world, close(a, c), f"buckets vs one all-reduce: {worst(a, c)}")


@pytest.mark.parametrize("overlap", [False, True], ids=["after-backward", "overlapped"])
def test_grad_accumulation_equals_one_batch(world, overlap):
    cfg = CommConfig(algorithm="ring", bucket_mb=0.02, overlap=overlap)
    acc, acc_state, _ = train(world, 24, cfg, grad_accum=2)
    one, _, _ = train(world, 24, cfg, grad_accum=1)
    ref, ref_state = reference(24, grad_accum=1)
    assert_all(world, close(acc, one), f"accumulated vs one micro-batch: {worst(acc, one)}")
    assert_all(world, close(acc, ref), f"accumulated vs single process: {worst(acc, ref)}")
    assert_all(world, close(acc_state["exp_avg_sq"], ref_state["exp_avg_sq"]), "optimizer state differs")


def test_check_identical(world):
    rank, size = world.Get_rank(), world.Get_size()
    flat, _, dp = train(world, 12, CommConfig(algorithm="ring", bucket_mb=0.02, overlap=True))
    check_identical(world, flat, 2)                      # agreeing parameters: no error anywhere
    if size == 1:
        flat[0] += 1.0                                   # nothing to disagree with
        check_identical(world, flat, 2)
        return
    odd = size - 1
    if rank == odd:
        flat[7] = np.nextafter(flat[7], np.inf)          # one ulp on one rank is enough
    with pytest.raises(UserError) as info:
        check_identical(world, flat, 41)
    msg = str(info.value)
    assert_all(world, getattr(info.value, "collective", False), "error is not marked collective")
    assert_all(world, "step 41" in msg and f"ranks [{odd}]" in msg, msg)
    others = list(range(odd))
    assert_all(world, f"differ from ranks {others}" in msg, msg)
