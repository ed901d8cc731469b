"""Local SGD and DiLoCo (hpclm.parallel.local) under MPI, stepped by hpclm.train.train_step: with
plain SGD, H = 1 and no clipping both equal all-reduce data parallelism with the same global batch
(float64 round-off); with AdamW they differ; at H = 4 the replicas are identical right after each
synchronisation and differ in between, and nothing is sent between synchronisations; a
compressed pseudo-gradient sends fewer bytes than the model; checkpoint/restore mid-period
continues the run bit for bit."""
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.checkpoint import Checkpoint, save
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 3)
VOCAB, BLOCK, SEED, BATCH = 29, 16, 11, 12
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)


def config(sync="local", optim="sgd", steps=1, outer="average", outer_lr=1.0, momentum=0.0, clip=0.0,
           compress="none", grad_accum=2):
    cfg = Config(model=MODEL, optim=OptimConfig(name=optim, lr=3e-2, min_lr=1e-3, warmup_steps=1, decay_steps=8,
                                                grad_clip=clip, weight_decay=0.1))
    cfg.train.grad_accum, cfg.train.batch_size, cfg.train.dtype, cfg.train.max_steps = grad_accum, BATCH, "float64", 8
    cfg.comm.algorithm = "ring"
    cfg.parallel.sync = sync
    cfg.local.steps, cfg.local.outer, cfg.local.outer_lr, cfg.local.outer_momentum = steps, outer, outer_lr, momentum
    cfg.compress.name = compress
    return cfg.validate()


def session(comm, cfg, model=None, strategy=None):
    rank, size = comm.Get_rank(), comm.Get_size()
    model = model or GPT(MODEL, seed=SEED, dtype=cfg.train.dtype)
    strategy = strategy or build_strategy(cfg, comm, model)
    return SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                           sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=rank, world=size))


def steps(s, first, stop, on_step=None):
    """train_step for steps first..stop-1; on_step(step, bytes this rank sent in the step)."""
    name = collectives.group_name(s.strategy.group)
    for step in range(first, stop):
        before = collectives.counters.by_group().get(name, {}).get("bytes_sent", 0)
        train_step(s, step)
        sent = collectives.counters.by_group().get(name, {}).get("bytes_sent", 0) - before
        if on_step:
            on_step(step, sent)
    return s


def same_everywhere(comm, flat):
    return len(set(comm.allgather(zlib.crc32(np.ascontiguousarray(flat).view(np.uint8))))) == 1


def relative_gap(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def reference(world, optim):
    return steps(session(world, config("allreduce", optim)), 0, 3).model.flat


@pytest.mark.parametrize("outer", ["average", "diloco"])
def test_h1_equals_allreduce_data_parallel(world, outer):
    s = steps(session(world, config(outer=outer)), 0, 3)
    gap = relative_gap(s.model.flat, reference(world, "sgd"))
    assert_all(world, gap < 1e-12, f"{outer}: H = 1 differs from all-reduce DP by {gap:.2e}")


@pytest.mark.parametrize("outer", ["average", "diloco"])
def test_h1_with_adamw_differs_from_data_parallel(world, outer):
    """AdamW's moments see per-rank gradients: local SGD at H = 1 is not DP (by design)."""
    s = steps(session(world, config(optim="adamw", outer=outer)), 0, 3)
    gap = relative_gap(s.model.flat, reference(world, "adamw"))
    assert_all(world, gap > 1e-6 and same_everywhere(world, s.model.flat), f"{outer}: AdamW gap {gap:.2e}")


@pytest.mark.parametrize("outer, momentum", [("average", 0.0), ("diloco", 0.9)])
def test_h4_syncs_every_fourth_step_and_sends_nothing_between(world, outer, momentum):
    s = session(world, config(optim="adamw", steps=4, outer=outer, outer_lr=0.7, momentum=momentum, clip=1.0))
    model_bytes = s.model.flat.nbytes
    seen = []

    def on_step(step, sent):
        seen.append((step + 1, same_everywhere(world, s.model.flat), sent))
        s.strategy.check_replicas(step)                  # raises if a synchronised replica differs

    steps(s, 0, 8, on_step)
    P = world.Get_size()
    for t, same, sent in seen:
        synced = t % 4 == 0
        ring = 2 * (P - 1) * model_bytes // P
        ok = same == synced and (sent == 0 if not synced else abs(sent - ring) <= 16 * P)
        assert_all(world, ok, f"step {t}: identical={same}, sent {sent} (ring {ring})")


def test_compressed_pseudo_gradient_sends_fewer_bytes(world):
    s = session(world, config(optim="adamw", steps=2, outer="diloco", outer_lr=0.7, momentum=0.9, compress="topk"))
    sent_at = {}
    steps(s, 0, 4, lambda step, sent: sent_at.__setitem__(step + 1, sent))
    full = s.strategy.uncompressed_bytes()
    ok = sent_at[1] == sent_at[3] == 0 and 0 < sent_at[2] < full / 4 and 0 < sent_at[4] < full / 4 \
        and same_everywhere(world, s.model.flat) and np.all(np.isfinite(s.model.flat))
    assert_all(world, ok, f"sent per step {sent_at}, all-reduce {full}")


def test_evaluation_uses_the_mean_of_the_replicas(world):
    s = steps(session(world, config(optim="adamw", steps=4)), 0, 2)              # mid-period: replicas differ
    x, y = s.sampler.batch(0, 0, 1)
    mean = world.allreduce(s.model.flat) / world.Get_size()
    own = s.model.flat.copy()
    loss = s.strategy.loss(s.model, x, y)
    check = GPT(MODEL, seed=SEED, dtype="float64")
    check.flat[...] = mean
    expected = check.loss(x, y)
    ok = abs(loss - expected) < 1e-12 * abs(expected) and np.array_equal(own, s.model.flat) \
        and not same_everywhere(world, own)
    assert_all(world, ok, f"loss {loss} vs loss of the mean {expected}")


@pytest.mark.parametrize("outer, H, compress", [("average", 4, "none"), ("diloco", 2, "topk")])
def test_resume_mid_period_is_bit_exact(world, tmp_path_factory, outer, H, compress):
    cfg = config(optim="adamw", steps=H, outer=outer, outer_lr=0.7, momentum=0.9 if outer == "diloco" else 0.0,
                 clip=1.0, compress=compress)
    straight = steps(session(world, cfg), 0, 7)
    part = steps(session(world, cfg), 0, 3)
    state = part.strategy.checkpoint()
    path = world.bcast(str(tmp_path_factory.mktemp("local") / "ckpt.h5") if world.Get_rank() == 0 else None)
    if world.Get_rank() == 0:
        save(path, params=state.params, layout=part.model.layout, optim_state=state.optim_state, step=3,
             config_json=cfg.to_json(), tokenizer_json="{}", rng_state=[], extra=state.extra)
    world.Barrier()
    resumed = session(world, cfg)
    resumed.strategy.restore(Checkpoint(path), 3)
    steps(resumed, 3, 7)
    a, b = straight.strategy, resumed.strategy
    ok = np.array_equal(a.model.flat, b.model.flat) and all(
        np.array_equal(a.optimizer.state[k], b.optimizer.state[k]) for k in a.optimizer.state)
    if outer == "diloco":
        ok = ok and np.array_equal(a.anchor, b.anchor) and np.array_equal(a.momentum, b.momentum)
    assert_all(world, ok and not same_everywhere(world, a.model.flat), "resumed run differs from the straight one")
