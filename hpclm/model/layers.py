"""GPT layers as forward/backward pairs, written against the active array module (NumPy or CuPy).

`<layer>_forward(...) -> (out, cache)` keeps only what the backward needs.
`<layer>_backward(dout, cache, <grad views>) -> dx` ADDS parameter gradients into the given
(preallocated) views and returns the gradient of the input.

Element-wise passes go through the compiled kernels of hpclm.model.fused when hpclm.kernels is
on and the arrays are NumPy's (`_fused`); the code below is their NumPy twin (and the CuPy path).

Dimension legend:
    B batch, T time (sequence), C channels (n_embd), H heads, D = C / H head size,
    V vocabulary, N = B * T rows. Activations are kept as (N, C) row matrices.
"""
import math

import numpy

from hpclm import kernels
from hpclm import xp as X

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
LN_EPS = 1e-5
ATTENTION_BLOCK = 64                                           # query rows per causal block


def _fused(a):
    """hpclm.model.fused when the compiled kernels are on and `a` is a NumPy array, else None."""
    if isinstance(a, numpy.ndarray) and kernels.enabled():
        from hpclm.model import fused
        return fused
    return None


# ---------------------------------------------------------------------------------------- embedding
def embedding_forward(idx, wte, wpe):
    """idx (B, T) ints -> x (N, C) = wte[idx] + wpe[t]."""
    B, T = idx.shape
    C = wte.shape[1]
    x = wte[idx.reshape(-1)]                                   # (N, C)
    x.reshape(B, T, C)[...] += wpe[:T]                         # broadcast over B
    return x, idx


def embedding_backward(dx, idx, dwte, dwpe):
    B, T = idx.shape
    C = dx.shape[1]
    xp = X.array_module(dx)
    dwpe[:T] += dx.reshape(B, T, C).sum(axis=0)                # (T, C)
    if _fused(dx):
        _fused(dx).scatter_add_rows(dwte, idx.reshape(-1), dx)
        return
    xp.add.at(dwte, idx.reshape(-1), dx)                       # scatter-add rows (repeated ids add up)


# ---------------------------------------------------------------------------------------- layernorm
def layernorm_forward(x, weight, bias):
    """x (N, C) -> weight * (x - mean) / sqrt(var + eps) + bias."""
    if _fused(x):
        return _fused(x).layernorm_forward(x, weight, bias)
    xp = X.array_module(x)
    mean = x.mean(axis=1, keepdims=True)                       # (N, 1)
    xhat = x - mean                                            # (N, C)
    var = xp.einsum("nc,nc->n", xhat, xhat)[:, None] / x.shape[1]
    rstd = 1.0 / xp.sqrt(var + LN_EPS)                         # (N, 1)
    xhat *= rstd
    out = xhat * weight
    out += bias
    return out, (xhat, rstd, weight)


def layernorm_backward(dout, cache, dweight, dbias):
    if _fused(dout):
        return _fused(dout).layernorm_backward(dout, cache, dweight, dbias)
    xhat, rstd, weight = cache
    xp = X.array_module(dout)
    dbias += dout.sum(axis=0)
    dweight += xp.einsum("nc,nc->c", dout, xhat)
    dxhat = dout * weight                                      # (N, C)
    C = dout.shape[1]
    mean_dxhat = dxhat.mean(axis=1, keepdims=True)             # (N, 1)
    mean_dxhat_xhat = xp.einsum("nc,nc->n", dxhat, xhat)[:, None] / C
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dxhat -= mean_dxhat
    xhat_term = xhat * mean_dxhat_xhat
    dxhat -= xhat_term
    dxhat *= rstd
    return dxhat


# ---------------------------------------------------------------------------------------- linear
def linear_forward(x, weight, bias):
    """x (N, Cin) @ weight (Cin, Cout) + bias (Cout,) -> (N, Cout)."""
    out = x @ weight
    if bias is not None:
        out += bias
    return out, x


def linear_backward(dout, x, weight, dweight, dbias, need_dx=True):
    """dout (N, Cout). Adds x^T dout into dweight and column sums into dbias; returns dout @ W^T."""
    dweight += x.T @ dout                                      # (Cin, Cout)
    if dbias is not None:
        dbias += dout.sum(axis=0)
    return dout @ weight.T if need_dx else None                # (N, Cin)


# ---------------------------------------------------------------------------------------- bias + residual
def bias_residual_forward(h, bias, residual):
    """h (N, C) <- (h + bias) + residual, in place: a projection's bias and the residual stream."""
    if _fused(h):
        return _fused(h).bias_residual_forward(h, bias, residual)
    h += bias
    h += residual
    return h


def residual_bias_backward(d, dresidual, dbias):
    """d (N, C) += dresidual (the residual's gradient), then dbias (C,) += the column sums of d
    (the gradient of the bias added before the residual); returns d."""
    if _fused(d):
        return _fused(d).residual_bias_backward(d, dresidual, dbias)
    d += dresidual
    dbias += d.sum(axis=0)
    return d


# ---------------------------------------------------------------------------------------- GELU
def gelu_forward(h):
    """GELU, tanh form: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))."""
    if _fused(h):
        return _fused(h).gelu_forward(h)
    xp = X.array_module(h)
    t = h * h                                                  # (N, 4C)
    t *= GELU_CUBIC
    t += 1.0
    t *= h
    t *= GELU_SCALE
    xp.tanh(t, out=t)
    out = t + 1.0
    out *= h
    out *= 0.5
    return out, (h, t)


def gelu_backward(dout, cache):
    """d/dh = 0.5 (1 + t) + 0.5 h (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 h^2), with t the tanh."""
    h, t = cache
    if _fused(h):
        return _fused(h).gelu_backward(dout, cache)
    inner = h * h                                              # (N, 4C)
    inner *= 3.0 * GELU_CUBIC
    inner += 1.0
    inner *= h
    inner *= 0.5 * GELU_SCALE                                  # 0.5 h k (1 + 3c h^2)
    sech2 = t * t
    sech2 -= 1.0                                               # -(1 - t^2)
    inner *= sech2                                             # -0.5 h k (1 + 3c h^2)(1 - t^2)
    grad = t + 1.0
    grad *= 0.5
    grad -= inner
    grad *= dout
    return grad


# ---------------------------------------------------------------------------------------- attention
def causal_mask(T, dtype, xp):
    """(T, T) additive mask: 0 on and below the diagonal, -inf above."""
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def query_blocks(T):
    """[(a, b)]: the query rows cut into blocks of ATTENTION_BLOCK; block [a, b) attends to keys [0, b).

    Causal attention needs no score above the diagonal, so each product below runs on the blocks on
    and below it: with T = 2 blocks, 3/4 of the full T x T work. The skipped entries would be exact
    zeros in the products' sums (after the softmax and in its gradient), so the results are the full
    products' wherever the BLAS sums the remaining terms in the same order.
    """
    return [(a, min(T, a + ATTENTION_BLOCK)) for a in range(0, T, ATTENTION_BLOCK)]


def attention_forward(qkv, B, T, n_head, mask):
    """Causal multi-head self-attention core.

    qkv (N, 3C) laid out [q | k | v] -> y (N, C). mask (T, T) from causal_mask (the NumPy path adds
    it; the blocks above the diagonal are never computed whatever it holds: query_blocks).
    The cache keeps views of qkv (not copies), so qkv must not change before the backward.
    """
    xp = X.array_module(qkv)
    C = qkv.shape[1] // 3
    D = C // n_head
    heads = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D): a view, not a copy
    q, k, v = heads[0], heads[1], heads[2]                     # (B, H, T, D) each, rows 3C apart
    scale = 1.0 / math.sqrt(D)
    att = xp.empty((B, n_head, T, T), qkv.dtype)               # scores, then probabilities
    for a, b in query_blocks(T):
        xp.matmul(q[:, :, a:b], k[:, :, :b].transpose(0, 1, 3, 2), out=att[:, :, a:b, :b])
        att[:, :, a:b, b:] = -xp.inf                           # masked: never computed
    if _fused(att) and mask.shape == (T, T):                   # the causal mask: one fused pass
        _fused(att).causal_softmax(att, scale)
    else:
        att *= scale
        att += mask
        att -= att.max(axis=-1, keepdims=True)
        xp.exp(att, out=att)
        att /= att.sum(axis=-1, keepdims=True)                 # softmax over keys
    y = xp.empty((B, T, n_head, D), qkv.dtype)
    y_heads = y.transpose(0, 2, 1, 3)                          # (B, H, T, D) view
    for a, b in query_blocks(T):
        xp.matmul(att[:, :, a:b, :b], v[:, :, :b], out=y_heads[:, :, a:b])
    return y.reshape(B * T, C), (heads, att)


def attention_backward(dy, cache):
    """dy (N, C) -> dqkv (N, 3C)."""
    heads, att = cache
    xp = X.array_module(dy)
    _, B, H, T, D = heads.shape
    q, k, v = heads[0], heads[1], heads[2]
    scale = 1.0 / math.sqrt(D)
    dqkv = xp.empty((B, T, 3, H, D), heads.dtype)
    dheads = dqkv.transpose(2, 0, 3, 1, 4)                     # (3, B, H, T, D) view
    dq, dk, dv = dheads[0], dheads[1], dheads[2]
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)          # (B, H, T, D)
    datt = xp.empty_like(att)                                  # (B, H, T, T)
    for a, b in query_blocks(T):                               # keys [a, b) are seen by queries [a, T)
        xp.matmul(att[:, :, a:, a:b].transpose(0, 1, 3, 2), dy[:, :, a:], out=dv[:, :, a:b])  # att^T dy
        xp.matmul(dy[:, :, a:b], v[:, :, :b].transpose(0, 1, 3, 2), out=datt[:, :, a:b, :b])  # dy v^T
        datt[:, :, a:b, b:] = 0                                # masked: zero gradient
    # softmax backward: dscores = att * (datt - sum(datt * att, keys))
    if _fused(datt):
        _fused(datt).causal_softmax_backward(datt, att, scale)
    else:
        row_dot = xp.einsum("bhts,bhts->bht", datt, att)[..., None]
        datt -= row_dot
        datt *= att
        datt *= scale
    for a, b in query_blocks(T):
        xp.matmul(datt[:, :, a:b, :b], k[:, :, :b], out=dq[:, :, a:b])                       # dscores k
        xp.matmul(datt[:, :, a:, a:b].transpose(0, 1, 3, 2), q[:, :, a:], out=dk[:, :, a:b])  # dscores^T q
    return dqkv.reshape(B * T, 3 * H * D)                      # (N, 3C)


# ---------------------------------------------------------------------------------------- loss
def cross_entropy_forward(logits, targets):
    """logits (N, V), targets (N,) -> mean negative log-likelihood; caches the softmax."""
    if _fused(logits):
        return _fused(logits).cross_entropy_forward(logits, targets)
    xp = X.array_module(logits)
    probs = logits - logits.max(axis=1, keepdims=True)         # (N, V)
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = xp.arange(targets.shape[0])
    loss = -xp.log(probs[rows, targets]).mean()
    return loss, (probs, targets)


def cross_entropy_backward(cache):
    """d(mean NLL)/dlogits = (softmax - onehot) / N, computed in place in the cached probs."""
    probs, targets = cache
    if _fused(probs):
        return _fused(probs).cross_entropy_backward(cache)
    xp = X.array_module(probs)
    N = targets.shape[0]
    probs[xp.arange(N), targets] -= 1.0
    probs /= N
    return probs
