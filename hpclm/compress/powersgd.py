"""`powersgd` (Vogels et al. 2019): rank-r approximation M ~ P Q^T of a 2-D gradient matrix, by one
step of subspace iteration warm-started from the previous Q. The math lives here; the
interleaved all-reduces (P, then Q) run in hpclm/parallel/powersgd.py:

    P = M Q            (all-reduce P, then average)
    P = orthogonalize(P)          (QR, or Gram-Schmidt)
    Q = M^T P          (all-reduce Q, then average)
    M ~ P Q^T          (error feedback: e = M - P Q^T)

Travels for an (m, k) matrix: P (m, r) and Q (k, r): (m + k) * r * itemsize bytes
(`powersgd_bytes`; r is clamped to min(m, k)). Aggregate: low_rank.

The `PowerSGD` compressor class applies the same to a flat gradient viewed as a near-square
matrix (`matrix_shape`, zero-padded) for single-process use and for the byte counts; its
warm-start Q is its state (state_dict).
"""
import math

import numpy

from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_LOW_RANK, Compressor, Context
from hpclm.compress.bits import compiled


def effective_rank(shape, rank):
    return max(0, min(rank, shape[0], shape[1]))


def powersgd_bytes(shape, rank, itemsize=4):
    m, k = shape
    return (m + k) * effective_rank(shape, rank) * itemsize


def matrix_shape(n):
    """(m, k) with m * k >= n, m = ceil(sqrt(n)): how a flat gradient is viewed as a matrix."""
    if n == 0:
        return (0, 0)
    m = math.isqrt(n - 1) + 1
    return (m, -(-n // m))


def init_q(k, rank, seed, dtype=numpy.float32, xp=None):
    """A (k, r) standard normal start for Q from the counter-based stream (Box-Muller), orthonormalised."""
    xp = xp or X.np
    key = rng.stream_key(seed, 0, 0x9051)
    cnt = k * rank
    u1 = rng.uniform(key, cnt, 0, xp).astype(xp.float64)
    u2 = rng.uniform(key, cnt, cnt, xp).astype(xp.float64)
    z = xp.sqrt(-2.0 * xp.log1p(-u1)) * xp.cos(2.0 * math.pi * u2)
    return orthogonalize(z.reshape(k, rank).astype(dtype))


def orthogonalize(p, method="qr", eps=1e-8):
    """Orthonormal columns spanning p (m, r). "qr": Householder QR (reduced);
    "gram_schmidt": modified Gram-Schmidt over the r columns (vectorised per column), as in the
    paper's reference code; a (near-)zero column stays zero."""
    xp = X.array_module(p)
    if p.size == 0:
        return p
    if method == "qr":
        q, r = xp.linalg.qr(p)
        d = xp.sign(xp.diagonal(r))  # make the factorisation unique (positive diagonal)
        d[d == 0] = 1
        return (q * d).astype(p.dtype, copy=False)
    p = p.copy()
    for i in range(p.shape[1]):
        col = p[:, i]
        col /= xp.linalg.norm(col) + eps
        if i + 1 < p.shape[1]:
            p[:, i + 1:] -= col[:, None] * (col @ p[:, i + 1:])[None, :]
    return p


def compute_p(m, q, out=None):
    """P = M Q: (n, k) @ (k, r) -> (n, r), into out if given."""
    if compiled(m):
        from hpclm.compress import cpu
        return cpu.project(m, q, _out(out, (m.shape[0], q.shape[1]), m.dtype))
    return X.array_module(m).matmul(m, q, out=out)


def accumulate_p(e, g, q, out=None):
    """e += g (error feedback), then P = e Q: (n, k) @ (k, r) -> (n, r); one pass on the CPU kernels."""
    if compiled(e):
        from hpclm.compress import cpu
        return cpu.project(e, q, _out(out, (e.shape[0], q.shape[1]), e.dtype), accumulate_from=g)
    e += g
    return compute_p(e, q, out)


def compute_q(m, p, out=None):
    """Q = M^T P: (k, n) @ (n, r) -> (k, r), into out if given."""
    if compiled(m):
        from hpclm.compress import cpu
        return cpu.project_t(m, p, _out(out, (m.shape[1], p.shape[1]), m.dtype))
    return X.array_module(m).matmul(m.T, p, out=out)


def approximate(p, q, out=None, subtract_from=None):
    """P Q^T: the rank-r reconstruction (n, k), into out if given; then subtract_from -= it (the
    error update e = M - P Q^T; one pass on the CPU kernels)."""
    if compiled(p):
        from hpclm.compress import cpu
        return cpu.reconstruct(p, q, _out(out, (p.shape[0], q.shape[0]), p.dtype), subtract_from)
    out = X.array_module(p).matmul(p, q.T, out=out)
    if subtract_from is not None:
        subtract_from -= out
    return out


def _out(out, shape, dtype):
    return numpy.empty(shape, dtype) if out is None else out


class PowerSGD(Compressor):
    """payload = (P (m, r), Q (k, r)) for the flat gradient viewed as matrix_shape(n);
    (m + k) * r * itemsize bytes. Single-process form of the algorithm above."""

    name = "powersgd"
    aggregate = AGGREGATE_LOW_RANK

    def __init__(self, cfg, rank=0):
        self.rank_r, self.seed = cfg.powersgd_rank, cfg.seed
        self.q = {}  # n -> warm-start Q

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        n = grad.size
        m, k = matrix_shape(n)
        r = effective_rank((m, k), self.rank_r)
        if m * k == n:                                       # the matrix is the gradient itself (read only)
            mat = grad.reshape(m, k)
        else:                                                # zero-padded to m * k
            mat = xp.empty(m * k, grad.dtype)
            mat[:n] = grad
            mat[n:] = 0
            mat = mat.reshape(m, k)
        q = self.q.get(n)
        if q is None:
            q = init_q(k, r, self.seed, grad.dtype, xp)
        p = orthogonalize(compute_p(mat, q))
        q = compute_q(mat, p)
        self.q[n] = q
        return (p, q), Context(n, grad.dtype, extra=(m, k))

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype; where m k = n, P Q^T is written into it directly."""
        p, q = payload
        m, k = matrix_shape(ctx.n)
        if out is not None and m * k == ctx.n and out.dtype == p.dtype == ctx.dtype and out.flags.c_contiguous:
            approximate(p, q, out=out.reshape(m, k))
            return out
        approx = approximate(p, q).reshape(-1)[: ctx.n].astype(ctx.dtype, copy=False)
        if out is None:
            return approx
        out[...] = approx
        return out

    def payload_bytes(self, n, itemsize=4):
        return powersgd_bytes(matrix_shape(n), self.rank_r, itemsize)

    def state_dict(self):
        return {"q": {str(n): X.to_host(q) for n, q in self.q.items()}}

    def load_state_dict(self, state):
        self.q = {int(n): X.to_device(q) for n, q in state.get("q", {}).items()}
