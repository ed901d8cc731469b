"""hpclm.model.GPT: whole-model gradient check, an independent reference forward, learning,
the flat-buffer views and GPT-2 names, gradient accumulation, grad_ready, dtype and input errors."""
import math
import os
import sys

import numpy as np
import pytest

from hpclm.config import ModelConfig, OptimConfig
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.optim import AdamW

sys.path.insert(0, os.path.dirname(__file__))
import reference_gpt  # noqa: E402


def small_cfg(tie=True, **kw):
    base = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, tie_weights=tie)
    base.update(kw)
    return ModelConfig(**base)


def batch(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    return idx, targets


def generic_model(tie, seed=0):
    """A float64 model with every parameter moved off its initial value (nonzero biases, LN gains != 1)."""
    cfg = small_cfg(tie)
    model = GPT(cfg, seed=seed, dtype="float64")
    model.flat += np.random.default_rng(seed + 100).normal(0.0, 0.1, size=model.flat.size)
    return cfg, model


# ---------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_whole_model_finite_difference_all_parameters(tie):
    cfg, model = generic_model(tie)
    idx, targets = batch(cfg, B=2, T=6)                        # T < block_size
    model.forward_backward(idx, targets)
    analytic = model.grad_flat.copy()
    eps = 1e-5
    numeric = np.zeros(model.flat.size)
    for i in range(model.flat.size):
        old = model.flat[i]
        model.flat[i] = old + eps
        fp = model.loss(idx, targets)
        model.flat[i] = old - eps
        fm = model.loss(idx, targets)
        model.flat[i] = old
        numeric[i] = (fp - fm) / (2 * eps)
    err = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert err <= 1e-6, err
    for s in model.layout.slots:                               # and tensor by tensor
        a, n = analytic[s.offset:s.offset + s.size], numeric[s.offset:s.offset + s.size]
        if s.name == "wpe":                                    # rows >= T get no gradient
            np.testing.assert_array_equal(a.reshape(s.shape)[6:], 0.0)
        assert np.linalg.norm(n) > 0, s.name
        assert np.linalg.norm(a - n) <= 1e-6 * np.linalg.norm(n), s.name


def test_loss_of_forward_backward_equals_loss():
    cfg, model = generic_model(True)
    idx, targets = batch(cfg, B=3, T=8)
    assert model.forward_backward(idx, targets) == pytest.approx(model.loss(idx, targets), rel=1e-14)


# ---------------------------------------------------------------------------------------- reference

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_matches_independent_reference(tie):
    cfg, model = generic_model(tie, seed=3)
    idx, targets = batch(cfg, B=2, T=7, seed=3)
    ours = model.forward(idx)
    ref = reference_gpt.logits(model.params, idx, cfg.n_layer, cfg.n_head, tie_weights=tie)
    assert ours.shape == ref.shape == (2, 7, cfg.vocab_size)
    assert np.linalg.norm(ours - ref) <= 1e-10 * np.linalg.norm(ref)
    ref_loss = reference_gpt.loss(model.params, idx, targets, cfg.n_layer, cfg.n_head, tie_weights=tie)
    assert model.loss(idx, targets) == pytest.approx(ref_loss, rel=1e-10)


def test_prefix_logits_do_not_depend_on_later_tokens():
    cfg, model = generic_model(True)
    idx, _ = batch(cfg, B=2, T=8)
    full = model.forward(idx)
    prefix = model.forward(idx[:, :5])
    np.testing.assert_allclose(prefix, full[:, :5], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------- learning

def test_initial_loss_is_log_vocab():
    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0)
    idx, targets = batch(cfg, B=4, T=16)
    assert abs(model.loss(idx, targets) - math.log(65)) < 0.1


def test_overfits_a_fixed_batch():
    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0)
    idx, targets = batch(cfg, B=4, T=16, seed=1)
    opt = AdamW(OptimConfig(lr=3e-3, weight_decay=0.0), model.layout.size, model.dtype,
                model.layout.decay_mask(np, model.dtype))
    first = model.forward_backward(idx, targets)
    for _ in range(150):
        loss = model.forward_backward(idx, targets)
        opt.step(model.flat, model.grad_flat, 3e-3)
    assert first > 4.0
    assert model.loss(idx, targets) < 0.05, loss


# ---------------------------------------------------------------------------------------- layout

def test_gpt2_names_and_shapes():
    C, V, T = 8, 13, 8
    for tie in (True, False):
        model = GPT(small_cfg(tie))
        expect = {"wte": (V, C), "wpe": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
        for i in range(2):
            expect.update({
                f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
                f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
                f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
                f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
                f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
                f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,),
            })
        if not tie:
            expect["lm_head.weight"] = (C, V)
        assert {k: v.shape for k, v in model.params.items()} == expect
        assert {k: v.shape for k, v in model.grads.items()} == expect
        assert list(model.params)[:3] == ["wte", "wpe", "h.0.ln_1.weight"]
        assert model.flat.size == model.grad_flat.size == sum(int(np.prod(s)) for s in expect.values())
        assert model.num_params() == model.flat.size


def test_params_and_grads_are_views_into_the_flat_buffers():
    model = GPT(small_cfg(False), dtype="float64")
    seen = np.zeros(model.flat.size, dtype=int)
    for name, view in model.params.items():
        slot = model.layout.by_name[name]
        assert np.shares_memory(view, model.flat) and np.shares_memory(model.grads[name], model.grad_flat)
        assert not np.shares_memory(view, model.grad_flat)
        view[...] = 7.0
        assert np.all(model.flat[slot.offset:slot.offset + slot.size] == 7.0)
        model.grads[name][...] = 3.0
        assert np.all(model.grad_flat[slot.offset:slot.offset + slot.size] == 3.0)
        seen[slot.offset:slot.offset + slot.size] += 1
    assert np.all(seen == 1)                                   # the views tile the buffer exactly
    model.flat[:] = -1.0                                       # and the other way round
    assert all(np.all(v == -1.0) for v in model.params.values())


def test_init_values():
    model = GPT(small_cfg(True), seed=0)
    p = model.params
    assert np.all(p["h.0.ln_1.weight"] == 1) and np.all(p["ln_f.weight"] == 1)
    assert np.all(p["h.1.attn.c_attn.bias"] == 0) and np.all(p["ln_f.bias"] == 0)
    assert 0.01 < p["wte"].std() < 0.03
    np.testing.assert_array_equal(GPT(small_cfg(True), seed=0).flat, model.flat)
    assert not np.array_equal(GPT(small_cfg(True), seed=1).flat, model.flat)


# ---------------------------------------------------------------------------------------- accumulation

def test_forward_backward_zeroes_then_accumulate_adds():
    cfg, model = generic_model(False)
    idx, targets = batch(cfg, B=4, T=6)
    model.forward_backward(idx, targets)
    full = model.grad_flat.copy()
    model.grad_flat[:] = 123.0                                 # garbage: must be cleared
    model.forward_backward(idx, targets)
    np.testing.assert_array_equal(model.grad_flat, full)
    # two half batches, accumulated: each half's loss is a mean over half the tokens -> 2 x full
    model.forward_backward(idx[:2], targets[:2])
    model.forward_backward(idx[2:], targets[2:], accumulate=True)
    np.testing.assert_allclose(model.grad_flat, 2 * full, rtol=1e-10, atol=1e-14)
    model.forward_backward(idx, targets, accumulate=True)      # adds on top
    np.testing.assert_allclose(model.grad_flat, 3 * full, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_grad_ready_offsets_are_final(tie):
    cfg, model = generic_model(tie)
    idx, targets = batch(cfg, B=2, T=5)
    calls = []
    model.grad_flat[:] = 5.0                                   # check zeroing happens before any call
    model.forward_backward(idx, targets, grad_ready=lambda off: calls.append((off, model.grad_flat[off:].copy())))
    final = model.grad_flat
    offsets = [off for off, _ in calls]
    assert offsets[-1] == 0
    assert offsets == sorted(offsets, reverse=True)
    assert len(offsets) >= cfg.n_layer + 2                     # head/ln_f, every block, embeddings
    assert offsets[0] < model.layout.size
    for off, snapshot in calls:
        np.testing.assert_array_equal(snapshot, final[off:])
    # accumulate=True: same contract, on top of the earlier gradient
    before = final.copy()
    calls.clear()
    model.forward_backward(idx, targets, grad_ready=lambda off: calls.append((off, model.grad_flat[off:].copy())),
                           accumulate=True)
    for off, snapshot in calls:
        np.testing.assert_array_equal(snapshot, model.grad_flat[off:])
    np.testing.assert_allclose(model.grad_flat, 2 * before, rtol=1e-12)


# ---------------------------------------------------------------------------------------- interface

def test_forward_shape_and_default_dtype():
    cfg = small_cfg(True)
    model = GPT(cfg)
    assert model.flat.dtype == model.grad_flat.dtype == np.float32
    assert all(v.dtype == np.float32 for v in model.params.values())
    idx, targets = batch(cfg, B=3, T=cfg.block_size)
    out = model.forward(idx)
    assert out.shape == (3, cfg.block_size, cfg.vocab_size) and out.dtype == np.float32
    out = model.forward(idx[:, :3])                            # T < block_size
    assert out.shape == (3, 3, cfg.vocab_size)
    loss = model.forward_backward(idx[:, :1], targets[:, :1])  # T = 1
    assert np.isfinite(loss) and model.grad_flat.dtype == np.float32


@pytest.mark.parametrize("shape", [(8,), (2, 9), (2, 0), (1, 2, 3)])
def test_bad_input_shape_raises_user_error(shape):
    cfg = small_cfg(True)
    model = GPT(cfg)
    idx = np.zeros(shape, dtype=np.int64)
    with pytest.raises(UserError):
        model.forward(idx)
    with pytest.raises(UserError):
        model.forward_backward(idx, idx)
    with pytest.raises(UserError):
        model.loss(idx, idx)


@pytest.mark.parametrize("tshape", [(2, 3), (2, 5), (4, 4)])
def test_targets_not_matching_idx_raise_user_error(tshape):
    """Targets of another shape must be refused, not silently scored against the wrong positions."""
    model = GPT(small_cfg(True))
    idx = np.zeros((2, 4), dtype=np.int64)
    targets = np.zeros(tshape, dtype=np.int64)
    with pytest.raises(UserError):
        model.forward_backward(idx, targets)
    with pytest.raises(UserError):
        model.loss(idx, targets)


def test_bad_config_raises_user_error():
    with pytest.raises(UserError):
        GPT(small_cfg(True, vocab_size=0))
    with pytest.raises(UserError):
        GPT(small_cfg(True, n_embd=9))                          # not divisible by n_head
