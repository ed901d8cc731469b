"""Tensor parallelism (hpclm.parallel.tensor) under MPI: a tp-sharded model equals the single
process (float64: the loss and every gradient after one step to 1e-12 relative; steps of
training with clipping and accumulation), also as tp x dp with ZeRO-1; each conjugate pair is
the adjoint of its forward; the vocab-parallel cross-entropy equals the full softmax on
adversarial logits; the bytes in the tp group per step equal the closed form; checkpoints are
unsharded (a tp run resumes at tp = 1 and the other way round)."""
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import checkpoint as ckpt_io
from hpclm import comm as collectives
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model import layers as L
from hpclm.model.tensor_parallel import (parallel_cross_entropy_backward, parallel_cross_entropy_forward, shard_flat,
                                         tp_message_elements, vocab_range)
from hpclm.parallel.build import build_strategy
from hpclm.parallel.tensor import TensorCollectives, build_tensor_model
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 3, 4)
VOCAB, BLOCK, SEED, BATCH = 29, 12, 11, 12
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
PATTERN = np.tile(np.random.default_rng(6).permutation(VOCAB), 150).astype(np.uint16)   # learnable


def model_config(world, tie_weights=True):
    """n_head 6 at P = 3 (tp 3), else 4; vocab 29 is padded at every tp > 1."""
    n_head = 6 if world.Get_size() == 3 else 4
    return ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=n_head, n_embd=8 * n_head,
                       tie_weights=tie_weights)


def config(world, tp, optim="adamw", grad_accum=2, dtype="float64", steps=3, zero=0, algorithm="ring", tie=True,
           sp=False):
    cfg = Config(model=model_config(world, tie), optim=OptimConfig(name=optim, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                                                                  decay_steps=steps, grad_clip=0.05, weight_decay=0.1))
    cfg.train.grad_accum, cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype = grad_accum, steps, BATCH, dtype
    cfg.train.seed = SEED
    cfg.comm.algorithm = algorithm
    cfg.parallel.tp, cfg.parallel.zero, cfg.parallel.sequence_parallel = tp, zero, sp
    return cfg.validate()


def run(cfg, groups=None, steps=None, model=None, strategy=None, start=0, tokens=TOKENS):
    """Steps of train_step; groups None is the single process. Returns (model, strategy, losses)."""
    if model is None:
        if groups is None or groups.layout.tp == 1:
            model = GPT(cfg.model, seed=SEED, dtype=cfg.train.dtype)
        else:
            model = build_tensor_model(cfg, groups.tp)
        strategy = build_strategy(cfg, None if groups is None else groups.dp, model)
    dp = None if groups is None else groups.dp
    rank, size = (0, 1) if dp is None else (dp.Get_rank(), dp.Get_size())
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(tokens, BLOCK, BATCH, SEED, rank=rank, world=size))
    losses = [train_step(session, step)[0] for step in range(start, start + (steps or cfg.train.max_steps))]
    return model, strategy, losses


def full_state(world, strategy):
    """(full params, optimizer state) through the checkpoint path, on every rank."""
    state = strategy.checkpoint()
    return world.bcast(None if state is None else (state.params, state.optim_state), root=0)


def close(a, b, rtol=1e-12):
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=1e-14)


def close_to_scale(a, b, rtol=1e-12):
    """Equal to rtol of b's largest element (AdamW's steps amplify round-off where the moments are tiny)."""
    return a.shape == b.shape and np.abs(a - b).max() <= rtol * np.abs(b).max()


@pytest.fixture
def tp_world(world):
    groups = collectives.Groups.build(world, tp=world.Get_size())
    yield groups
    groups.free()


def batch(rows=4):
    rng = np.random.default_rng(3)
    starts = rng.integers(0, len(TOKENS) - BLOCK - 1, size=rows)
    x = np.stack([TOKENS[s:s + BLOCK] for s in starts]).astype(np.int64)
    y = np.stack([TOKENS[s + 1:s + BLOCK + 1] for s in starts]).astype(np.int64)
    return x, y


# ------------------------------------------------------------------------------ one step, exactly
@pytest.mark.parametrize("tie, sp", [(True, False), (False, False), (True, True)])
def test_loss_and_every_gradient_equal_single_process(world, tp_world, tie, sp):
    """One forward/backward through the strategy's hook (which sums the row-partial gradients of
    the replicated tensors under sequence parallelism)."""
    cfg = config(world, world.Get_size(), tie=tie, sp=sp, grad_accum=1)
    full = GPT(cfg.model, seed=SEED, dtype="float64")
    x, y = batch()
    ref_loss = full.forward_backward(x, y)
    model = build_tensor_model(cfg, tp_world.tp)
    strategy = build_strategy(cfg, tp_world.dp, model)
    assert_all(world, close(model.flat, shard_flat(full.flat, full.layout, model.layout, model.specs)),
               "the shard does not start as the full model's initialisation")
    loss = model.forward_backward(x, y, grad_ready=strategy.backward_hook(0, 1))
    assert_all(world, abs(loss - ref_loss) <= 1e-12 * abs(ref_loss), f"loss {loss!r} vs {ref_loss!r}")
    ref = model.layout.views(shard_flat(full.grad_flat, full.layout, model.layout, model.specs))
    for name, grad in model.grads.items():
        scale = max(np.abs(ref[name]).max(), 1e-300)
        err = np.abs(grad - ref[name]).max() / scale
        assert_all(world, err <= 1e-12, f"{name}: relative error {err:.2e}")
    replicated = np.concatenate([model.grad_flat[a:b] for a, b in model.replicated])
    everyone = world.allgather(replicated)
    assert_all(world, all(np.array_equal(r, everyone[0]) for r in everyone),
               "replicated gradients differ across the tp group")
    logits = model.forward(x)
    assert_all(world, close(logits, full.forward(x)), "gathered logits differ from the full model's")


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("optim, sp", [("sgd", False), ("adamw", False), ("adamw", True)])
def test_steps_equal_single_process(world, tp_world, optim, sp):
    """float64, clipping active, two micro-batches: parameters and optimizer state after 3 steps."""
    cfg = config(world, world.Get_size(), optim=optim, sp=sp)
    _, strategy, losses = run(cfg, tp_world)
    params, state = full_state(world, strategy)
    _, ref_strategy, ref_losses = run(config(world, 1, optim=optim))
    ref_params, ref_state = ref_strategy.checkpoint().params, ref_strategy.checkpoint().optim_state
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")
    assert_all(world, close_to_scale(params, ref_params), f"max |d| {np.abs(params - ref_params).max():.2e}")
    for name in ref_state:
        if name != "t":
            assert_all(world, close_to_scale(state[name], ref_state[name]), f"optimizer {name} differs")
    strategy.check_replicas(3)


def test_twenty_steps_float32_trajectory(world, tp_world):
    if world.Get_size() != 2:
        pytest.skip("run at tp = 2 (the exact float64 steps run at every size)")
    cfg, single = (config(world, tp, dtype="float32", steps=20, grad_accum=1) for tp in (world.Get_size(), 1))
    cfg.optim.grad_clip = single.optim.grad_clip = 1.0
    _, strategy, losses = run(cfg, tp_world, tokens=PATTERN)
    _, _, ref = run(single, tokens=PATTERN)
    assert_all(world, np.allclose(losses, ref, rtol=2e-5), f"max |d loss| {np.abs(np.subtract(losses, ref)).max():.2e}")
    assert_all(world, ref[-1] < ref[0] - 0.05, f"the reference did not learn: {ref[0]} -> {ref[-1]}")


@pytest.mark.parametrize("zero", [0, 1])
def test_tp2_by_dp2_equals_single_process(world, zero):
    if world.Get_size() != 4:
        pytest.skip("tp 2 x dp 2 needs P = 4")
    groups = collectives.Groups.build(world, tp=2)
    try:
        _, strategy, losses = run(config(world, 2, zero=zero), groups)
        params, _ = full_state(world, strategy)
        _, ref_strategy, ref_losses = run(config(world, 1))
        ref = ref_strategy.checkpoint().params
        assert_all(world, close_to_scale(params, ref), f"zero {zero}: max |d| {np.abs(params - ref).max():.2e}")
        losses = groups.dp.allreduce(np.array(losses)) / groups.dp.Get_size()    # a dp rank's loss is its shard's
        assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")
        strategy.check_replicas(3)
    finally:
        groups.free()


# ------------------------------------------------------------------------------ collectives
def test_conjugate_pairs_are_adjoint(world, tp_world):
    """<f(x), y> = <x, f*(y)> over the group: a replicated space's inner product counts once,
    a per-rank space's is the sum over ranks."""
    hooks = TensorCollectives(tp_world.tp, "ring")
    P, r = hooks.size, hooks.rank
    shared = np.random.default_rng(0)                      # the same on every rank: replicated values
    mine = np.random.default_rng(100 + r)                  # this rank's own values
    total = lambda v: world.allreduce(float(v))            # noqa: E731  sum over ranks

    x, y = shared.normal(size=(6, 5)), mine.normal(size=(6, 5))        # copy_to: replicated -> per rank
    lhs, rhs = total(np.vdot(hooks.copy_to(x.copy()), y)), np.vdot(x, hooks.copy_to_backward(y.copy()))
    assert_all(world, np.isclose(lhs, rhs, rtol=1e-12), f"copy_to: {lhs} vs {rhs}")
    x, y = mine.normal(size=(6, 5)), shared.normal(size=(6, 5))        # reduce_from: per rank -> replicated
    lhs, rhs = np.vdot(hooks.reduce_from(x.copy()), y), total(np.vdot(x, hooks.reduce_from_backward(y.copy())))
    assert_all(world, np.isclose(lhs, rhs, rtol=1e-12), f"reduce_from: {lhs} vs {rhs}")
    x, y = mine.normal(size=(6, 3)), shared.normal(size=(6, 3 * P))    # gather_last: per rank -> replicated
    lhs, rhs = np.vdot(hooks.gather_last(x), y), total(np.vdot(x, hooks.scatter_last(y)))
    assert_all(world, np.isclose(lhs, rhs, rtol=1e-12), f"gather_last: {lhs} vs {rhs}")
    assert_all(world, np.array_equal(hooks.gather_last(x)[:, 3 * r:3 * r + 3], x), "gather_last puts blocks out of order")


@pytest.mark.parametrize("vocab", [29, 5])
def test_vocab_parallel_cross_entropy_adversarial(world, tp_world, vocab):
    """Huge logits, ties, constant rows and a vocab padded so a rank may hold no real id."""
    hooks = TensorCollectives(tp_world.tp, "ring")
    rng = np.random.default_rng(1)
    N = 9
    logits = rng.normal(size=(N, vocab)) * 30
    logits[0] *= 1e3                                        # |logits| ~ 3e4
    logits[1] = 7.0                                         # every id ties
    logits[2, :] = -1e4
    logits[2, vocab - 1] = 1e4                              # one winner at the last real id
    logits[3, [0, vocab - 1]] = logits[3].max() + 5.0       # a tie for the top across ranks
    targets = rng.integers(0, vocab, size=N)
    targets[2], targets[4] = 0, vocab - 1
    _, ref_cache = L.cross_entropy_forward(logits.copy(), targets)
    ref_grad = L.cross_entropy_backward(ref_cache)
    peak = logits.max(axis=1)                               # log-sum-exp: -log(softmax) where it underflows
    ref_loss = np.mean(peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1)) - logits[np.arange(N), targets])
    lo, hi, n_real = vocab_range(vocab, hooks.size, hooks.rank)
    local = np.zeros((N, hi - lo))
    local[:, :n_real] = logits[:, lo:lo + n_real]
    loss, cache = parallel_cross_entropy_forward(local, targets, lo, n_real, hooks)
    grad = parallel_cross_entropy_backward(cache)
    assert_all(world, np.isfinite(loss) and np.isclose(loss, ref_loss, rtol=1e-13), f"loss {loss} vs {ref_loss}")
    assert_all(world, np.allclose(grad[:, :n_real], ref_grad[:, lo:lo + n_real], rtol=1e-12, atol=1e-18),
               "gradient of the real ids differs")
    assert_all(world, not grad[:, n_real:].any(), "padding got a gradient")


@pytest.mark.parametrize("sp", [False, True])
def test_bytes_in_tp_group_equal_closed_form(world, tp_world, sp):
    """MPI's all-reduce is charged 2 (P-1)/P n bytes, its reduce-scatter and all-gather (P-1)/P n
    each: summed over every message of a step. Sequence parallelism moves the same bytes (a
    reduce-scatter + all-gather per all-reduce) plus one all-reduce of each unit's replicated
    gradients per step."""
    cfg = config(world, world.Get_size(), algorithm="mpi", grad_accum=2, steps=1, sp=sp)
    model, strategy, _ = run(cfg, tp_world, steps=1)
    collectives.counters.reset()
    run(cfg, tp_world, steps=1, model=model, strategy=strategy, start=1)
    moved = collectives.counters.by_group()
    P, item = world.Get_size(), 8
    messages = tp_message_elements(cfg.model, BATCH // 2, micro_batches=2)
    expect = sum(2 * (P - 1) * n * item // P for n in messages)
    calls = len(messages)
    if sp:
        replicated = [sum(b - a for a, b in spans) for spans in strategy._partial.values() if spans]
        expect += sum(2 * (P - 1) * n * item // P for n in replicated)
        calls += 2 * (4 * cfg.model.n_layer + 2) + len(replicated)     # 2 calls per (N, C), 2 micro-batches
    assert_all(world, moved["tp"]["bytes_sent"] == expect, f"tp sent {moved['tp']['bytes_sent']} vs {expect}")
    assert_all(world, moved["tp"]["calls"] == calls, f"{moved['tp']['calls']} calls vs {calls}")
    N, C = BATCH * BLOCK // 2, cfg.model.n_embd                # the 4 per block dominate
    assert_all(world, expect >= 2 * (P - 1) * item * 2 * 4 * cfg.model.n_layer * N * C // P, "closed form too small")


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_unsharded_resumes_at_other_tp(world, tp_world, tmp_path_factory):
    """3 steps at tp = P, saved unsharded, 2 more at tp = 1 (and 3 at tp = 1 resumed at tp = P) equal
    5 uninterrupted single-process steps."""
    if world.Get_size() == 3:
        pytest.skip("run at tp = 2 and 4")
    cfg = config(world, world.Get_size(), steps=5)
    single = config(world, 1, steps=5)
    _, ref_strategy, _ = run(single)
    ref = ref_strategy.checkpoint().params
    path = world.bcast(str(tmp_path_factory.mktemp("tp") / "ckpt.h5") if world.Get_rank() == 0 else None)

    def save(strategy):
        state = strategy.checkpoint()
        if world.Get_rank() == 0:
            ckpt_io.save(path, params=state.params, layout=state.layout or GPT(single.model).layout,
                         optim_state=state.optim_state, step=3, config_json="{}", tokenizer_json="{}", rng_state=[])
        world.Barrier()
        return ckpt_io.Checkpoint(path)

    _, strategy, _ = run(cfg, tp_world, steps=3)
    ckpt = save(strategy)
    model = GPT(single.model, seed=0, dtype="float64")
    resumed = build_strategy(single, None, model)
    resumed.restore(ckpt, 3)
    run(single, steps=2, model=model, strategy=resumed, start=3)
    assert_all(world, close_to_scale(model.flat, ref), f"tp {world.Get_size()} -> 1: max |d| {np.abs(model.flat - ref).max():.2e}")

    _, strategy, _ = run(single, steps=3)
    ckpt = save(strategy)
    model = build_tensor_model(cfg, tp_world.tp)
    resumed = build_strategy(cfg, tp_world.dp, model)
    resumed.restore(ckpt, 3)
    run(cfg, tp_world, steps=2, model=model, strategy=resumed, start=3)
    params, _ = full_state(world, resumed)
    assert_all(world, close_to_scale(params, ref), f"1 -> tp {world.Get_size()}: max |d| {np.abs(params - ref).max():.2e}")


# ------------------------------------------------------------------------------ bad input
def test_tp_not_dividing_the_world_is_one_message(world):
    P = world.Get_size()
    with pytest.raises(UserError, match="not divisible by tp"):
        collectives.Groups.build(world, tp=P + 1)
