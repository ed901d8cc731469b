"""Compiled (Numba) fused element-wise passes of the model and of AdamW, for NumPy arrays.

Imported only when hpclm.kernels.enabled(); hpclm.model.layers and hpclm.optim call these in
place of their NumPy code (the twins the tests compare against) and keep the same caches, so a
forward of one path and a backward of the other agree. Matrix products stay on BLAS; the
transcendental functions (exp, tanh) stay on NumPy's SIMD loops, which are many times faster
than Numba's scalar libm calls: a kernel does everything between them in one pass over the
data. Model kernels are serial and release the GIL (`nogil`): ThreadedGPT's row-slice threads
run them side by side. The AdamW update (with the decoupled weight decay) is parallel over chunks
(it runs once per step, on the caller's thread). Row reductions (means, variances, softmax sums)
run in another order than NumPy's pairwise sums: results agree to rounding (float64: ~1e-15
relative), not to the bit. AdamW, bias + residual and ThreadedGPT's weighted gradient sum do
NumPy's arithmetic, operation for operation, so they are bit-identical.

Shapes: N rows, C channels, (B, H, T, T) attention scores, V vocabulary.
"""
import math

import numpy as np
from numba import njit, prange

from hpclm import kernels

LN_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
CHUNK = 1 << 16


# ---------------------------------------------------------------------------------------- row reductions
# A sum in one running total waits for each add before the next (the adder's latency), and LLVM keeps
# float adds in program order unless told it may reassociate them. _sum and _dot allow it (fastmath
# 'reassoc' on their adds only), so the loop becomes vector partial sums in float64, combined at the end:
# the order is the one LLVM picks for this CPU's vector width, so results agree across machines to
# rounding, as BLAS's do. A max is exact in any order: _max keeps 8 running maxima by hand.
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _sum(a):
    """sum(a) of a 1-D array, in float64."""
    total = 0.0
    for c in range(a.size):
        total += a[c]
    return total


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _dot(a, b):
    """sum(a * b) of two 1-D arrays of one size, each product in their dtype, summed in float64."""
    total = 0.0
    for c in range(a.size):
        total += a[c] * b[c]
    return total


@njit(cache=True, nogil=True)
def _max(a):
    """max(a) of a non-empty 1-D array (a NaN is skipped unless it is a[0], as in a running max)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = a[0]
    n8 = a.size - a.size % 8
    for c in range(0, n8, 8):
        m0 = a[c] if a[c] > m0 else m0
        m1 = a[c + 1] if a[c + 1] > m1 else m1
        m2 = a[c + 2] if a[c + 2] > m2 else m2
        m3 = a[c + 3] if a[c + 3] > m3 else m3
        m4 = a[c + 4] if a[c + 4] > m4 else m4
        m5 = a[c + 5] if a[c + 5] > m5 else m5
        m6 = a[c + 6] if a[c + 6] > m6 else m6
        m7 = a[c + 7] if a[c + 7] > m7 else m7
    for c in range(n8, a.size):
        m0 = a[c] if a[c] > m0 else m0
    for m in (m1, m2, m3, m4, m5, m6, m7):
        m0 = m if m > m0 else m0
    return m0


# ---------------------------------------------------------------------------------------- embedding
@njit(cache=True, nogil=True)
def _scatter_add_rows(table, ids, rows):
    """table[ids[r]] += rows[r] for r in order: np.add.at's arithmetic, bit for bit."""
    for r in range(ids.size):
        dst, src = table[ids[r]], rows[r]
        for c in range(src.size):
            dst[c] += src[c]


def scatter_add_rows(table, ids, rows):
    """The embedding gradient: table (V, C) += the rows (N, C) of dx at token ids (N,)."""
    _scatter_add_rows(table, np.ascontiguousarray(ids), np.ascontiguousarray(rows))


# ---------------------------------------------------------------------------------------- layernorm
@njit(cache=True, nogil=True)
def _layernorm_fwd(x, w, b, out, xhat, rstd):
    """x (N, C) -> out = w xhat + b, xhat = (x - mean) rstd, rstd (N, 1) = 1 / sqrt(var + eps)."""
    N, C = x.shape
    for n in range(N):
        xr, hr, orow = x[n], xhat[n], out[n]
        mean = _sum(xr) / C
        for c in range(C):
            hr[c] = xr[c] - mean
        r = 1.0 / math.sqrt(_dot(hr, hr) / C + LN_EPS)
        rstd[n, 0] = r
        for c in range(C):
            hr[c] = hr[c] * r
            orow[c] = hr[c] * w[c] + b[c]


@njit(cache=True, nogil=True)
def _layernorm_bwd(dout, xhat, rstd, w, dw, db, dx):
    """dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dout w; adds dw, db."""
    N, C = dout.shape
    for n in range(N):
        dr, hr, xr = dout[n], xhat[n], dx[n]
        for c in range(C):
            xr[c] = dr[c] * w[c]
            db[c] += dr[c]
            dw[c] += dr[c] * hr[c]
        m1 = _sum(xr) / C
        m2 = _dot(xr, hr) / C
        r = rstd[n, 0]
        for c in range(C):
            xr[c] = (xr[c] - m1 - hr[c] * m2) * r


def layernorm_forward(x, weight, bias):
    out, xhat = np.empty_like(x), np.empty_like(x)
    rstd = np.empty((x.shape[0], 1), x.dtype)
    _layernorm_fwd(x, weight, bias, out, xhat, rstd)
    return out, (xhat, rstd, weight)


def layernorm_backward(dout, cache, dweight, dbias):
    xhat, rstd, weight = cache
    dx = np.empty_like(dout)
    _layernorm_bwd(np.ascontiguousarray(dout), xhat, rstd, weight, dweight, dbias, dx)
    return dx


# ---------------------------------------------------------------------------------------- bias + residual
@njit(cache=True, nogil=True)
def _bias_residual(h, b, x):
    """h (N, C) <- (h + b) + x: NumPy's two adds, rounding for rounding."""
    N, C = h.shape
    for n in range(N):
        hr, xr = h[n], x[n]
        for c in range(C):
            hr[c] = (hr[c] + b[c]) + xr[c]


@njit(cache=True, nogil=True)
def _residual_bias_bwd(d, dr, db):
    """d (N, C) += dr; db += the column sums of d, row after row from row 0 (NumPy's axis-0 sum)."""
    N, C = d.shape
    if N == 0:
        return
    total = np.empty(C, d.dtype)
    for n in range(N):
        row, rr = d[n], dr[n]
        for c in range(C):
            row[c] = row[c] + rr[c]
        if n == 0:
            total[:] = row
        else:
            for c in range(C):
                total[c] = total[c] + row[c]
    for c in range(C):
        db[c] = db[c] + total[c]


def bias_residual_forward(h, bias, residual):
    _bias_residual(h, bias, np.ascontiguousarray(residual))
    return h


def residual_bias_backward(d, dresidual, dbias):
    _residual_bias_bwd(d, np.ascontiguousarray(dresidual), dbias)
    return d


# ---------------------------------------------------------------------------------------- GELU
@njit(cache=True, nogil=True)
def _gelu_inner(h, t):
    """t = sqrt(2/pi) (h + 0.044715 h^3) (the tanh argument), flat arrays."""
    k, c = h.dtype.type(GELU_SCALE), h.dtype.type(GELU_CUBIC)
    one = h.dtype.type(1.0)
    for i in range(h.size):
        x = h[i]
        t[i] = (x * x * c + one) * x * k


@njit(cache=True, nogil=True)
def _gelu_out(h, t, out):
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for i in range(h.size):
        out[i] = (t[i] + one) * h[i] * half


@njit(cache=True, nogil=True)
def _gelu_bwd(dout, h, t, grad):
    """grad = dout (0.5 (1 + t) + 0.5 h k (1 + 3c h^2) (1 - t^2)), flat arrays."""
    k, c3 = h.dtype.type(0.5 * GELU_SCALE), h.dtype.type(3.0 * GELU_CUBIC)
    half, one = h.dtype.type(0.5), h.dtype.type(1.0)
    for i in range(h.size):
        x, ti = h[i], t[i]
        inner = (x * x * c3 + one) * x * k * (ti * ti - one)
        grad[i] = ((ti + one) * half - inner) * dout[i]


def gelu_forward(h):
    t, out = np.empty_like(h), np.empty_like(h)
    hf, tf = h.reshape(-1), t.reshape(-1)
    _gelu_inner(hf, tf)
    np.tanh(t, out=t)
    _gelu_out(hf, tf, out.reshape(-1))
    return out, (h, t)


def gelu_backward(dout, cache):
    h, t = cache
    grad = np.empty_like(h)
    _gelu_bwd(np.ascontiguousarray(dout).reshape(-1), h.reshape(-1), t.reshape(-1), grad.reshape(-1))
    return grad


# ---------------------------------------------------------------------------------------- attention
@njit(cache=True, nogil=True)
def _softmax_shift(att, scale):
    """att (R, T, T) scores -> scale * att - row max on and below the diagonal, -inf above."""
    R, T, _ = att.shape
    ninf = att.dtype.type(-np.inf)
    s = att.dtype.type(scale)
    for r in range(R):
        a = att[r]
        for i in range(T):
            row = a[i]
            m = _max(row[:i + 1]) * s          # = the max of the scaled row: rounding is monotone, s > 0
            for j in range(i + 1):
                row[j] = row[j] * s - m
            for j in range(i + 1, T):
                row[j] = ninf


@njit(cache=True, nogil=True)
def _softmax_normalise(att):
    """Rows of exp'd scores divided by their sums (the causal part; the rest is already 0)."""
    R, T, _ = att.shape
    for r in range(R):
        a = att[r]
        for i in range(T):
            row = a[i]
            tot = row.dtype.type(_sum(row[:i + 1]))
            for j in range(i + 1):
                row[j] = row[j] / tot


@njit(cache=True, nogil=True)
def _softmax_bwd(datt, att, scale):
    """datt <- att (datt - sum(datt att, keys)) scale, in place (rows of (R, T, T))."""
    R, T, _ = att.shape
    s = att.dtype.type(scale)
    for r in range(R):
        for i in range(T):
            d, a = datt[r, i], att[r, i]
            dd = d.dtype.type(_dot(d[:i + 1], a[:i + 1]))
            for j in range(i + 1):
                d[j] = (d[j] - dd) * a[j] * s
            for j in range(i + 1, T):
                d[j] = 0


def causal_softmax(att, scale):
    """att (B, H, T, T) raw scores -> softmax(scale * att + causal mask), in place."""
    B, H, T, _ = att.shape
    flat = att.reshape(B * H, T, T)
    _softmax_shift(flat, scale)
    np.exp(att, out=att)
    _softmax_normalise(flat)
    return att


def causal_softmax_backward(datt, att, scale):
    """datt (B, H, T, T) -> the gradient of the scores, in place."""
    B, H, T, _ = att.shape
    _softmax_bwd(datt.reshape(B * H, T, T), att.reshape(B * H, T, T), scale)
    return datt


# ---------------------------------------------------------------------------------------- loss
@njit(cache=True, nogil=True)
def _rows_shift(x):
    """x (N, V) -> x - row max, in place."""
    N, V = x.shape
    for n in range(N):
        row = x[n]
        m = _max(row)
        for v in range(V):
            row[v] = row[v] - m


@njit(cache=True, nogil=True)
def _rows_normalise_nll(p, targets):
    """Rows of exp'd values divided by their sums; returns sum_n -log p[n, target_n]."""
    N, V = p.shape
    nll = 0.0
    for n in range(N):
        row = p[n]
        tot = row.dtype.type(_sum(row))
        for v in range(V):
            row[v] = row[v] / tot
        nll -= math.log(row[targets[n]])
    return nll


@njit(cache=True, nogil=True)
def _ce_bwd(p, targets):
    N, V = p.shape
    inv = p.dtype.type(1.0 / N)
    for n in range(N):
        p[n, targets[n]] -= 1.0
        row = p[n]
        for v in range(V):
            row[v] = row[v] * inv


def cross_entropy_forward(logits, targets):
    probs = np.array(logits, copy=True, order="C")
    _rows_shift(probs)
    np.exp(probs, out=probs)
    loss = _rows_normalise_nll(probs, targets) / targets.shape[0]
    return probs.dtype.type(loss), (probs, targets)


def cross_entropy_backward(cache):
    probs, targets = cache
    _ce_bwd(probs, targets)
    return probs


# ---------------------------------------------------------------------------------------- slice gradients
@njit(cache=True, nogil=True)
def _add_scaled(out, part, w, first):
    if first:
        for i in range(out.size):
            out[i] = part[i] * w
    else:
        for i in range(out.size):
            out[i] = out[i] + part[i] * w


def add_scaled(out, part, w, first):
    """ThreadedGPT's row-weighted sum of slice gradients: out = part * w (first) or out += part * w,
    flat (n,) arrays; the product rounded, then the sum, as NumPy's two operations (bit-identical)."""
    _add_scaled(out, part, out.dtype.type(w), bool(first))


# ---------------------------------------------------------------------------------------- AdamW
@njit(cache=True, parallel=True)
def _adamw(p, g, m, v, b1, c1, b2, c2, inv_sqrt_bias2, eps, step, update_m, update_v, decay, mask, lr_wd):
    """NumPy's Optimizer.decay then AdamW._update, operation for operation: with decay, first
    p -= (p mask) lr_wd; then m = b1 m + c1 g; v = b2 v + c2 g g;
    p -= step * m / (sqrt(v) inv_sqrt_bias2 + eps) (c = 1 - beta, step = lr / bias1)."""
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        pc, gc, mc, vc = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        if decay:
            dc = mask[lo:hi]
            for i in range(pc.size):
                pc[i] -= pc[i] * dc[i] * lr_wd
        for i in range(pc.size):
            if update_m:
                mc[i] = mc[i] * b1 + gc[i] * c1
            if update_v:
                vc[i] = vc[i] * b2 + gc[i] * gc[i] * c2
            pc[i] -= mc[i] / (np.sqrt(vc[i]) * inv_sqrt_bias2 + eps) * step


def adamw_update(params, grads, m, v, b1, b2, eps, lr, bias1, bias2, update_m, update_v, decay_mask=None, lr_wd=0.0):
    """One AdamW step over the flat buffers, in place (twin: hpclm.optim.AdamW._update), after the
    decoupled weight decay p -= lr_wd * decay_mask * p when decay_mask is given (twin: Optimizer.decay)."""
    import numba
    if kernels.threads() > 0:
        numba.set_num_threads(min(kernels.threads(), numba.config.NUMBA_NUM_THREADS))
    d = params.dtype.type
    decay = decay_mask is not None
    _adamw(params, grads, m, v, d(b1), d(1.0 - b1), d(b2), d(1.0 - b2), d(1.0 / math.sqrt(bias2)), d(eps),
           d(lr / bias1), bool(update_m), bool(update_v), decay, decay_mask if decay else params, d(lr_wd))
