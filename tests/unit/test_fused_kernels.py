"""The compiled model and AdamW kernels (hpclm.model.fused) against the NumPy code of hpclm.model.layers
and hpclm.optim: each layer's forward and backward on edge shapes (one row, odd widths, T = 1), in
float64 to 1e-12 relative (reductions run in another order) and float32 to 1e-5; the whole model's
loss and gradients to 1e-12 (float64); AdamW bit for bit, frozen variance and momentum hook included."""
import sys
from pathlib import Path

import numpy as np
import pytest

from hpclm.config import ModelConfig, OptimConfig
from hpclm.model import GPT
from hpclm.model import layers as L
from hpclm.optim import AdamW

pytest.importorskip("numba")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernelutil import both, restore_kernels  # noqa: E402,F401

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def close(a, b, dtype):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(a).max(), 1e-300) if a.size else 1.0
    assert np.abs(a - b).max(initial=0) <= TOL[dtype] * scale


DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 1), (1, 7), (5, 33), (64, 256)])
def test_layernorm(N, C, dtype, restore_kernels):
    rng = np.random.default_rng(N * C)
    x, dout = (rng.standard_normal((N, C)).astype(dtype) for _ in range(2))
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)

    def run():
        out, cache = L.layernorm_forward(x.copy(), w, b)
        dw, db = np.ones(C, dtype), np.ones(C, dtype)                  # backward adds into these
        dx = L.layernorm_backward(dout, cache, dw, db)
        return out, dx, dw, db
    for a, c in zip(*both(run)):
        close(a, c, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 1024)])
def test_gelu(shape, dtype, restore_kernels):
    rng = np.random.default_rng(shape[1])
    h, dout = (rng.standard_normal(shape).astype(dtype) * 3 for _ in range(2))

    def run():
        out, cache = L.gelu_forward(h.copy())
        return out, L.gelu_backward(dout, cache)
    for a, c in zip(*both(run)):
        close(a, c, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 1), (2, 5, 3, 4), (2, 64, 4, 16), (1, 150, 2, 8)])
def test_attention(B, T, H, D, dtype, restore_kernels):
    rng = np.random.default_rng(T)
    C = H * D
    qkv, dy = rng.standard_normal((B * T, 3 * C)).astype(dtype), rng.standard_normal((B * T, C)).astype(dtype)
    mask = L.causal_mask(T, dtype, np)

    def run():
        y, cache = L.attention_forward(qkv.copy(), B, T, H, mask)
        return y, cache[1].copy(), L.attention_backward(dy, cache)
    (y0, a0, d0), (y1, a1, d1) = both(run)
    assert np.all(np.triu(a1, 1) == 0)                                  # nothing above the diagonal
    for a, c in ((y0, y1), (a0, a1), (d0, d1)):
        close(a, c, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(1, 1), (1, 65), (37, 65), (256, 1000)])
def test_cross_entropy(N, V, dtype, restore_kernels):
    rng = np.random.default_rng(N + V)
    logits = (rng.standard_normal((N, V)) * 5).astype(dtype)
    logits[0, 0] = 40                                                   # a dominant logit: exp of the others underflows
    targets = rng.integers(0, V, N)

    def run():
        loss, cache = L.cross_entropy_forward(logits.copy(), targets)
        return np.float64(loss), L.cross_entropy_backward(cache).copy()
    (l0, g0), (l1, g1) = both(run)
    assert abs(l0 - l1) <= TOL[dtype] * abs(l0)
    close(g0, g1, dtype)


def test_whole_model_loss_and_gradients(restore_kernels):
    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 65, (3, 16)), rng.integers(0, 65, (3, 16))

    def run():
        model = GPT(cfg, seed=0, dtype="float64")
        loss = model.forward_backward(idx, targets)
        return loss, model.grad_flat.copy(), model.forward(idx[:, :7])
    (l0, g0, f0), (l1, g1, f1) = both(run)
    assert abs(l0 - l1) <= 1e-12 * abs(l0)
    assert np.abs(g0 - g1).max() <= 1e-12 * np.abs(g0).max()
    assert np.abs(f0 - f1).max() <= 1e-12 * np.abs(f0).max()           # T < block_size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("freeze,hook", [(0, False), (2, False), (0, True)])
def test_adamw_bit_identical(dtype, freeze, hook, restore_kernels):
    n = 200003                                                           # several chunks and a tail
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) * 1e-2 for _ in range(4)]
    mask = (rng.random(n) < 0.5).astype(dtype)

    def run():
        opt = AdamW(OptimConfig(weight_decay=0.1, freeze_variance_step=freeze), n, dtype, mask)
        p = p0.copy()
        for g in grads:
            if hook:                              # the two halves with m changed between them (1-bit Adam)
                opt.t += 1
                opt.decay(p, 3e-3)
                opt.update_moments(g)
                opt.state["exp_avg"] *= 0.5
                opt.apply_moments(p, 3e-3)
            else:
                opt.step(p, g, 3e-3)
        return p, opt.state["exp_avg"].copy(), opt.state["exp_avg_sq"].copy()
    for a, b in zip(*both(run)):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V,C", [(0, 3, 4), (1, 1, 1), (37, 5, 33), (256, 65, 128)])
def test_embedding_backward_bit_identical(N, V, C, dtype, restore_kernels):
    """The scatter-add of the token gradient rows, repeated ids included, adds in np.add.at's order."""
    rng = np.random.default_rng(N + V)
    idx = rng.integers(0, V, (1, N))
    dx = rng.standard_normal((N, C)).astype(dtype)
    start = rng.standard_normal((V, C)).astype(dtype)                 # accumulation onto earlier micro-batches

    def run():
        dwte, dwpe = start.copy(), np.zeros((max(N, 1), C), dtype)
        L.embedding_backward(dx, idx, dwte, dwpe)
        return dwte, dwpe
    for a, c in zip(*both(run)):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 1001])
def test_add_scaled_bit_identical(n, dtype, restore_kernels):
    """ThreadedGPT's weighted sum of slice gradients: first part written, later parts added."""
    rng = np.random.default_rng(n)
    parts = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    start = rng.standard_normal(n).astype(dtype)
    from hpclm.model.threaded import _add_scaled

    def run():
        out, scratch = start.copy(), np.empty(n, dtype)
        for i, part in enumerate(parts):
            _add_scaled(out, part, 1 / 3, i == 0, scratch)
        again = out.copy()
        _add_scaled(again, parts[0], 0.3, False, scratch)                # accumulating onto earlier sums
        return out, again
    for a, b in zip(*both(run)):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(0, 4), (1, 1), (5, 33), (1024, 256)])
def test_bias_residual_bit_identical(N, C, dtype, restore_kernels):
    """A projection's bias + the residual forward, and the residual's gradient + the bias's backward."""
    rng = np.random.default_rng(N + C)
    h, x, d, dr = (rng.standard_normal((N, C)).astype(dtype) for _ in range(4))
    b, db0 = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)

    def run():
        out = L.bias_residual_forward(h.copy(), b, x)
        db = db0.copy()                                                  # backward adds into it
        dd = L.residual_bias_backward(d.copy(), dr, db)
        return out, dd, db
    for a, c in zip(*both(run)):
        assert np.array_equal(a.view(np.uint8), c.view(np.uint8))
