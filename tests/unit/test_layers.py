"""hpclm.model.layers: every forward/backward pair against central finite differences in float64,
backward ADDS into gradient views, GELU formula, causal attention, cross-entropy = -log softmax."""
import math

import numpy as np
import pytest

from hpclm.model import layers as L

EPS = 1e-6
TOL = 1e-6


def numeric_grad(f, a, eps=EPS):
    """Central differences of the scalar f() with respect to every element of a (changed in place)."""
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a)
    g = np.zeros(a.size)
    for i in range(a.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g.reshape(a.shape)


def rel_err(analytic, numeric):
    assert np.linalg.norm(numeric) > 0, "a zero numeric gradient checks nothing"
    return np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------- embedding

def embedding_case(rng):
    V, C, block, B, T = 5, 3, 7, 2, 4                          # T < block
    idx = np.array([[1, 3, 1, 1], [3, 0, 1, 2]])               # id 1 repeated four times, id 3 twice
    wte = rng.normal(size=(V, C))
    wpe = rng.normal(size=(block, C))
    R = rng.normal(size=(B * T, C))
    return idx, wte, wpe, R


def test_embedding_forward_values_and_no_aliasing(rng):
    idx, wte, wpe, _ = embedding_case(rng)
    wte0 = wte.copy()
    x, _ = L.embedding_forward(idx, wte, wpe)
    B, T = idx.shape
    for b in range(B):
        for t in range(T):
            np.testing.assert_array_equal(x[b * T + t], wte0[idx[b, t]] + wpe[t])
    x += 1.0
    np.testing.assert_array_equal(wte, wte0)                   # x is not a view of wte


def test_embedding_gradients_with_repeated_ids(rng):
    idx, wte, wpe, R = embedding_case(rng)
    f = lambda: float((L.embedding_forward(idx, wte, wpe)[0] * R).sum())
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    _, cache = L.embedding_forward(idx, wte, wpe)
    L.embedding_backward(R, cache, dwte, dwpe)
    assert rel_err(dwte, numeric_grad(f, wte)) <= TOL
    assert rel_err(dwpe, numeric_grad(f, wpe)) <= TOL
    np.testing.assert_array_equal(dwpe[idx.shape[1]:], 0.0)    # positions >= T get nothing
    # row 1 is used four times: its gradient is the sum of the four upstream rows
    rows = np.flatnonzero(idx.reshape(-1) == 1)
    np.testing.assert_allclose(dwte[1], R[rows].sum(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------------------- layernorm

def test_layernorm_forward_normalises(rng):
    x = rng.normal(3.0, 2.0, size=(6, 8))
    out, _ = L.layernorm_forward(x, np.ones(8), np.zeros(8))
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=1), 1.0 / (1.0 + L.LN_EPS / x.var(axis=1)), rtol=1e-12)


def test_layernorm_gradients(rng):
    N, C = 5, 7
    x = rng.normal(1.0, 2.0, size=(N, C))
    w = rng.normal(1.0, 0.5, size=C)
    b = rng.normal(size=C)
    R = rng.normal(size=(N, C))
    f = lambda: float((L.layernorm_forward(x, w, b)[0] * R).sum())
    dw, db = np.zeros(C), np.zeros(C)
    _, cache = L.layernorm_forward(x, w, b)
    dx = L.layernorm_backward(R.copy(), cache, dw, db)
    assert rel_err(dx, numeric_grad(f, x)) <= TOL
    assert rel_err(dw, numeric_grad(f, w)) <= TOL
    assert rel_err(db, numeric_grad(f, b)) <= TOL


# ---------------------------------------------------------------------------------------- linear

@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradients(rng, with_bias):
    N, Cin, Cout = 6, 4, 5
    x = rng.normal(size=(N, Cin))
    W = rng.normal(size=(Cin, Cout))
    b = rng.normal(size=Cout) if with_bias else None
    R = rng.normal(size=(N, Cout))
    out, _ = L.linear_forward(x, W, b)
    np.testing.assert_allclose(out, x @ W + (b if with_bias else 0.0), rtol=1e-14)
    f = lambda: float((L.linear_forward(x, W, b)[0] * R).sum())
    dW = np.zeros_like(W)
    db = np.zeros(Cout) if with_bias else None
    _, cache = L.linear_forward(x, W, b)
    dx = L.linear_backward(R, cache, W, dW, db)
    assert rel_err(dx, numeric_grad(f, x)) <= TOL
    assert rel_err(dW, numeric_grad(f, W)) <= TOL
    if with_bias:
        assert rel_err(db, numeric_grad(f, b)) <= TOL
    assert L.linear_backward(R, cache, W, np.zeros_like(W), db, need_dx=False) is None


# ---------------------------------------------------------------------------------------- GELU

def test_gelu_forward_matches_tanh_formula(rng):
    h = np.concatenate([rng.normal(0.0, 3.0, size=50), [-10.0, -1.0, 0.0, 1.0, 10.0]])
    h0 = h.copy()
    out, _ = L.gelu_forward(h)
    expect = [0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))) for v in h0]
    np.testing.assert_allclose(out, expect, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(h, h0)                       # input untouched
    assert out[-3] == 0.0 and abs(out[-1] - 10.0) < 1e-12 and abs(out[-5]) < 1e-12


def test_gelu_gradient(rng):
    h = rng.normal(0.0, 2.0, size=(4, 9))
    R = rng.normal(size=h.shape)
    f = lambda: float((L.gelu_forward(h)[0] * R).sum())
    _, cache = L.gelu_forward(h)
    dh = L.gelu_backward(R, cache)
    assert rel_err(dh, numeric_grad(f, h)) <= TOL


# ---------------------------------------------------------------------------------------- attention

B, T, H, D, BLOCK = 2, 5, 2, 3, 8
C = H * D


def attention_case(rng):
    qkv = rng.normal(size=(B * T, 3 * C))
    mask = L.causal_mask(BLOCK, np.float64, np)[:T, :T]        # T smaller than the mask's block
    return qkv, mask


def test_causal_mask():
    m = L.causal_mask(4, np.float64, np)
    assert m.shape == (4, 4) and m.dtype == np.float64
    assert np.all(m[np.tril_indices(4)] == 0.0)
    assert np.all(np.isneginf(m[np.triu_indices(4, k=1)]))


def test_attention_gradient_through_causal_mask(rng):
    qkv, mask = attention_case(rng)
    R = rng.normal(size=(B * T, C))
    f = lambda: float((L.attention_forward(qkv, B, T, H, mask)[0] * R).sum())
    y, cache = L.attention_forward(qkv, B, T, H, mask)
    assert y.shape == (B * T, C)
    dqkv = L.attention_backward(R, cache)
    assert dqkv.shape == qkv.shape
    assert rel_err(dqkv, numeric_grad(f, qkv)) <= TOL


def test_attention_is_causal(rng):
    qkv, mask = attention_case(rng)
    y0, _ = L.attention_forward(qkv, B, T, H, mask)
    t = 3
    changed = qkv.copy().reshape(B, T, 3, C)
    changed[:, t, 1:] += rng.normal(size=(B, 2, C))           # k and v of the token at position t
    y1, _ = L.attention_forward(changed.reshape(B * T, 3 * C), B, T, H, mask)
    y0, y1 = y0.reshape(B, T, C), y1.reshape(B, T, C)
    np.testing.assert_array_equal(y1[:, :t], y0[:, :t])        # earlier positions see nothing of it
    assert np.all(np.abs(y1[:, t:] - y0[:, t:]).max(axis=(0, 2)) > 1e-3)


def test_attention_first_position_returns_its_own_value(rng):
    qkv, mask = attention_case(rng)
    y, _ = L.attention_forward(qkv, B, T, H, mask)
    v0 = qkv.reshape(B, T, 3, C)[:, 0, 2]                      # (B, C)
    np.testing.assert_allclose(y.reshape(B, T, C)[:, 0], v0, rtol=1e-13)


def test_query_blocks_tile_the_rows():
    for T in (1, L.ATTENTION_BLOCK, L.ATTENTION_BLOCK + 1, 3 * L.ATTENTION_BLOCK - 5):
        blocks = L.query_blocks(T)
        assert blocks[0][0] == 0 and blocks[-1][1] == T
        assert all(b0[1] == b1[0] for b0, b1 in zip(blocks, blocks[1:]))
        assert all(0 < b - a <= L.ATTENTION_BLOCK for a, b in blocks)


@pytest.mark.parametrize("T", [L.ATTENTION_BLOCK - 1, 2 * L.ATTENTION_BLOCK, 2 * L.ATTENTION_BLOCK + 22])
def test_attention_blocks_equal_the_full_products(rng, T):
    """Skipping the blocks above the diagonal (query_blocks) changes nothing: forward and backward
    against the full T x T products with the additive mask, written out here."""
    B, H, D = 2, 2, 4
    C = H * D
    qkv, dy = rng.normal(size=(B * T, 3 * C)), rng.normal(size=(B * T, C))
    y, cache = L.attention_forward(qkv, B, T, H, L.causal_mask(T, np.float64, np))
    dqkv = L.attention_backward(dy, cache)

    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)         # (B, H, T, D) each
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + L.causal_mask(T, np.float64, np)
    att = np.exp(s - s.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)                                 # (B, H, T, T)
    g = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)                       # (B, H, T, D)
    datt = g @ v.transpose(0, 1, 3, 2)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) / math.sqrt(D)
    full = np.stack([ds @ k, ds.transpose(0, 1, 3, 2) @ q, att.transpose(0, 1, 3, 2) @ g])  # (3, B, H, T, D)
    np.testing.assert_allclose(cache[1], att, rtol=0, atol=1e-14)
    np.testing.assert_allclose(y, (att @ v).transpose(0, 2, 1, 3).reshape(B * T, C), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dqkv, full.transpose(1, 3, 0, 2, 4).reshape(B * T, 3 * C), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------- cross-entropy

def test_cross_entropy_is_minus_log_softmax(rng):
    N, V = 7, 11
    logits = rng.normal(0.0, 30.0, size=(N, V))                # large: needs the max shift
    targets = rng.integers(0, V, size=N)
    loss, _ = L.cross_entropy_forward(logits.copy(), targets)
    expect = np.mean([np.logaddexp.reduce(logits[i]) - logits[i, targets[i]] for i in range(N)])
    assert np.isfinite(loss)
    assert abs(loss - expect) <= 1e-12 * abs(expect)
    uniform, _ = L.cross_entropy_forward(np.zeros((3, V)), np.array([0, 5, 10]))
    assert abs(uniform - math.log(V)) < 1e-14


def test_cross_entropy_gradient(rng):
    N, V = 6, 9
    logits = rng.normal(size=(N, V))
    targets = np.array([0, 3, 3, 8, 1, 0])
    f = lambda: float(L.cross_entropy_forward(logits, targets)[0])
    _, cache = L.cross_entropy_forward(logits, targets)
    dlogits = L.cross_entropy_backward(cache)
    assert rel_err(dlogits, numeric_grad(f, logits)) <= TOL
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-15)


# ---------------------------------------------------------------------------------------- backward adds

def _fresh_and_prefilled(run, shapes, rng):
    """run(grads) calls a backward into `grads`; returns (fresh increments, prefill, prefilled result)."""
    fresh = [np.zeros(s) for s in shapes]
    run(fresh)
    pre = [rng.normal(size=s) for s in shapes]
    filled = [p.copy() for p in pre]
    run(filled)
    return fresh, pre, filled


def _adds_cases(rng):
    idx, wte, wpe, Re = embedding_case(rng)
    x = rng.normal(size=(5, 4))
    w, b = rng.normal(size=4), rng.normal(size=4)
    W = rng.normal(size=(4, 3))
    R4, R3 = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    _, emb = L.embedding_forward(idx, wte, wpe)
    _, ln = L.layernorm_forward(x, w, b)
    _, lin = L.linear_forward(x, W, b[:3])
    return {
        "embedding": (lambda g: L.embedding_backward(Re, emb, g[0], g[1]), [wte.shape, wpe.shape]),
        "layernorm": (lambda g: L.layernorm_backward(R4.copy(), ln, g[0], g[1]), [(4,), (4,)]),
        "linear": (lambda g: L.linear_backward(R3, lin, W, g[0], g[1]), [W.shape, (3,)]),
    }


@pytest.mark.parametrize("layer", ["embedding", "layernorm", "linear"])
def test_backward_adds_into_gradient_views(rng, layer):
    run, shapes = _adds_cases(rng)[layer]
    fresh, pre, filled = _fresh_and_prefilled(run, shapes, rng)
    for f, p, g in zip(fresh, pre, filled):
        assert np.abs(f).max() > 0
        np.testing.assert_allclose(g, p + f, rtol=1e-13, atol=1e-14)


def test_backward_adds_into_views_of_a_flat_buffer(rng):
    """Gradients are views into one flat buffer in the model: the backward must write through them."""
    N, Cin, Cout = 4, 3, 2
    flat = np.zeros(Cin * Cout + Cout)
    dW, db = flat[:Cin * Cout].reshape(Cin, Cout), flat[Cin * Cout:]
    x, W, R = rng.normal(size=(N, Cin)), rng.normal(size=(Cin, Cout)), rng.normal(size=(N, Cout))
    _, cache = L.linear_forward(x, W, None)
    L.linear_backward(R, cache, W, dW, db)
    L.linear_backward(R, cache, W, dW, db)
    np.testing.assert_allclose(flat[:Cin * Cout], 2 * (x.T @ R).reshape(-1), rtol=1e-13)
    np.testing.assert_allclose(flat[Cin * Cout:], 2 * R.sum(axis=0), rtol=1e-13)
