"""Gossip SGD (hpclm.parallel.gossip) under MPI: the neighbour all-reduce equals W @ X computed
locally (and counts degree x G bytes under the dp group); adapt-then-combine gossip on the fully
connected graph equals all-reduce data parallelism (plain SGD, no clipping) to float64 round-off;
AD-PSGD conserves the mean, shrinks the consensus distance, and lets fast ranks run ahead of a 10x
slower one without deadlock."""
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.parallel.gossip import NeighbourAllreduce
from hpclm.parallel.topology import TOPOLOGY_NAMES, build_topology
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 3, 4)
VOCAB, BLOCK, SEED, STEPS = 29, 16, 11, 3
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
_ZIPF = 1.0 / np.arange(1, VOCAB + 1)
SKEWED = np.random.default_rng(6).choice(VOCAB, size=4000, p=_ZIPF / _ZIPF.sum()).astype(np.uint16)  # learnable


def dp_group(world):
    group = world.Dup()
    group.Set_name("dp")
    return group


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
def test_neighbour_allreduce_equals_W_times_X(world, name):
    group = dp_group(world)
    P, rank, G = group.Get_size(), group.Get_rank(), 1000
    X = np.random.default_rng(7).standard_normal((P, G))          # (P, G): row p is rank p's model
    topo = build_topology(name, P)
    mix, x = NeighbourAllreduce(group, topo), X[rank].copy()
    for step in range(3):
        collectives.counters.reset()
        mix(x, step)
        X = topo.matrix(step) @ X
        sent = collectives.counters.by_group().get("dp", {"bytes_sent": 0})["bytes_sent"]
        want = len(topo.peers(rank, step)[2]) * G * 8
        assert_all(group, np.allclose(x, X[rank], rtol=1e-13, atol=1e-13), f"{name} step {step}: "
                   f"max |d| {np.abs(x - X[rank]).max():.2e}")
        assert_all(group, sent == want, f"{name}: counted {sent} bytes sent, expected {want}")
    group.Free()


def run(comm, sets, steps=STEPS, slow_rank=None, sleep=0.0, tokens=TOKENS):
    """`steps` train_steps of the strategy for `sets` (config overrides); (strategy, seconds in the loop)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    cfg = Config(model=MODEL, optim=OptimConfig(name="sgd", lr=0.5, min_lr=0.5, warmup_steps=0, grad_clip=0.0))
    cfg.train.max_steps, cfg.train.batch_size = steps, 12
    for section, key, value in sets:
        setattr(getattr(cfg, section), key, value)
    cfg.validate()
    model = GPT(MODEL, seed=SEED, dtype="float64")
    strategy = build_strategy(cfg, comm, model)
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(tokens, BLOCK, 12, SEED, rank=rank, world=size))
    t0 = time.perf_counter()
    for step in range(steps):
        if rank == slow_rank:
            time.sleep(sleep)
        train_step(session, step)
    return strategy, time.perf_counter() - t0


def test_atc_on_fully_connected_equals_allreduce_dp(world):
    group = dp_group(world)
    gossip, _ = run(group, [("parallel", "sync", "gossip"), ("gossip", "topology", "fully_connected"),
                            ("gossip", "algorithm", "dpsgd_atc")])
    dp, _ = run(group, [])
    a, b = gossip.model.flat, dp.model.flat
    assert_all(group, not np.allclose(a, GPT(MODEL, seed=SEED, dtype="float64").flat), "parameters did not move")
    assert_all(group, np.allclose(a, b, rtol=1e-11, atol=1e-13), f"gossip vs DP: max |d| {np.abs(a - b).max():.2e}")
    group.Free()


def test_cta_mean_model_follows_dp_for_one_step(world):
    """Combine-then-adapt takes its gradient before averaging: x̄ after one step is DP's step."""
    group = dp_group(world)
    gossip, _ = run(group, [("parallel", "sync", "gossip"), ("gossip", "topology", "ring")], steps=1)
    dp, _ = run(group, [], steps=1)
    mean = gossip.mean_params()
    assert_all(group, np.allclose(mean, dp.model.flat, rtol=1e-11, atol=1e-13), "x̄ vs DP after one step")
    assert_all(group, gossip.consensus_distance() > 0, "ranks' own models should differ")
    group.Free()


def test_adpsgd_conserves_the_mean_and_contracts(world):
    """With lr = 0 AD-PSGD is pure pairwise averaging of differing models: the mean stays, the spread shrinks."""
    group = dp_group(world)
    rank = group.Get_rank()
    cfg = Config(model=MODEL, optim=OptimConfig(name="sgd", lr=0.0, min_lr=0.0, warmup_steps=0, grad_clip=0.0))
    cfg.parallel.sync, cfg.gossip.algorithm, cfg.gossip.consensus_every = "gossip", "adpsgd", 0
    model = GPT(MODEL, seed=SEED, dtype="float64")
    model.flat[...] = np.random.default_rng(rank).standard_normal(model.flat.size)
    strategy = build_strategy(cfg, group, model)
    mean0, dist0 = strategy.mean_params(), strategy.consensus_distance()
    for _ in range(8):
        model.grad_flat[...] = 0.0
        strategy.step(0.0)
    pairwise = strategy.pairwise
    strategy.close()                                   # agreed point: every exchange has finished
    exchanges = pairwise.exchanges
    mean1, dist1 = strategy.mean_params(), strategy.consensus_distance()
    assert_all(group, np.allclose(mean0, mean1, rtol=1e-12, atol=1e-12), f"mean moved {np.abs(mean0 - mean1).max():.2e}")
    assert_all(group, dist1 < 0.2 * dist0, f"consensus distance {dist0:.3e} -> {dist1:.3e}")
    assert_all(group, exchanges == 8, f"{exchanges} of 8 exchanges finished")
    group.Free()


def test_adpsgd_runs_ahead_of_a_slow_rank(world):
    """Rank 0 sleeps 10x a step's compute (at most 3 s); the others finish their steps long before it."""
    group = dp_group(world)
    rank, P = group.Get_rank(), group.Get_size()
    if P < 2:
        return
    t0 = time.perf_counter()
    step_s = max(group.allgather(run(group, [], steps=2)[1] / 2 + 0.01))       # a step's compute time
    strategy, loop_s = run(group, [("parallel", "sync", "gossip"), ("gossip", "algorithm", "adpsgd"),
                                   ("gossip", "consensus_every", 0)], steps=4, slow_rank=0,
                           sleep=min(10 * step_s, 3.0), tokens=SKEWED)
    loss_before = GPT(MODEL, seed=SEED, dtype="float64").loss(*batch(rank))
    loss_after = strategy.model.loss(*batch(rank))
    strategy.close()                                                          # agreed point: waits for rank 0
    times = group.allgather(loop_s)
    assert_all(group, max(times[1:]) < 0.5 * times[0], f"loop seconds per rank {times}: fast ranks waited")
    assert_all(group, loss_after < loss_before, f"loss {loss_before:.4f} -> {loss_after:.4f}")
    assert_all(group, time.perf_counter() - t0 < 120, "took too long")
    group.Free()


def batch(rank):
    from hpclm.data import get_batch
    return get_batch(SKEWED, BLOCK, np.arange(8) * 37 + rank)
