"""`topk`: the k = max(1, floor(density * n)) largest |g| (Aji & Heafield 2017; DGC, Lin et al. 2018).

Travels (compress.sparse_format): "compact" (hpclm.compress.sparse_code): values / scale as float16
(k,), the scale, uint16 indices within 65536-element chunks (k,) and the count per chunk:
4k + 4 + 4 ceil(n/65536) bytes; "plain": values (k,) in the gradient dtype and indices (k,) int32:
k * (itemsize + 4) bytes. Aggregate: gather (index sets differ across ranks); the receiver
scatter-adds every rank's (values, indices) (as_sparse: decoded when compact).

Selection is deterministic so that the CPU twin and the GPU radix-select agree on the set: all
elements with |g| above the k-th largest magnitude t, then elements equal to t by lowest index.
Indices are sorted ascending.

topk_method = "exact": t from np.partition (the selection behind np.argpartition), O(n).
topk_method = "sampled": DGC's estimate: t from the top-density quantile of a hashed sample of
~1% of |g| (at least 256 elements); elements >= t are the candidates; if there are at least k,
the exact top-k among the candidates is taken (DGC's hierarchical selection), else t is halved
and retried (3 times), then falls back to exact. The result equals the exact set; only the cost
differs (a partition of the small candidate set instead of all n), which is why it is the default.
"""
import numpy

from hpclm import xp as X
from hpclm.compress import rng, sparse_code
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import compiled

BRACKET_SIGMAS = 6     # compiled path: the candidate cut lies this many sample sigmas below the k-th


def topk_count(n, density):
    return 0 if n == 0 else min(n, max(1, int(n * density)))


def select_topk(a, k, xp):
    """Indices (int32, ascending) of the k largest entries of a >= 0, ties by lowest index."""
    n = a.size
    if k >= n:
        return xp.arange(n, dtype=xp.int32)
    if k == 0:
        return xp.zeros(0, dtype=xp.int32)
    t = xp.partition(a, n - k)[n - k]
    keep = a > t                                                   # (n,) bool: fewer than k of them
    keep[xp.flatnonzero(a == t)[: k - int(keep.sum())]] = True     # ties at t by lowest index
    return xp.flatnonzero(keep).astype(xp.int32)


def select_topk_sampled(a, k, key, xp):
    n = a.size
    if k >= n or k == 0:
        return select_topk(a, k, xp)
    m = min(n, max(256, n // 100))
    sample = a[(rng.hash64(key, m, xp=xp) % xp.uint64(n)).astype(xp.int64)]
    ks = max(1, int(m * k / n))
    t = xp.partition(sample, m - ks)[m - ks]
    for _ in range(3):
        cand = xp.flatnonzero(a >= t)
        if cand.size >= k:
            return cand[select_topk(a[cand], k, xp)].astype(xp.int32)
        t = t * 0.5
    return select_topk(a, k, xp)


def select_topk_compiled(g, k, key):
    """(indices int32 ascending, values) of the exact top-k set (as select_topk on |g|), by the
    compiled kernels: a cut from a hashed sample set BRACKET_SIGMAS standard deviations of the
    sample quantile below the k-th largest, one pass collecting every |g| >= cut (about
    k (1 + 6 sqrt(n / (k m)))), then the top k among those (cpu.top_k). The k-th largest is >= the cut
    whenever at least k are collected, so the set is exact; otherwise (or with NaNs, which
    NumPy orders last) None, and the caller uses the NumPy path."""
    from hpclm.compress import cpu
    n = g.size
    m = min(n, max(4096, n // 256))
    p = k / n + BRACKET_SIGMAS * (k / n / m) ** 0.5 + 8.0 / m        # fraction to collect
    if p >= 0.5:
        return None
    sample = cpu.sample_abs(g, key, m)                                # |g| at hashed positions
    rank = m - int(p * m)                                            # the cut: the p-quantile from the top
    cut = numpy.partition(sample, rank)[rank]
    found = cpu.select_abs(g, cut, strict=False)
    if found is None or found[0].size < k:
        return None
    idx, values = found
    keep = cpu.top_k(values, k)
    return idx[keep], values[keep]


class SparseCompressor(Compressor):
    """What topk and threshold share: a payload of kept (values, ascending indices) in
    cfg.sparse_format, "compact" (sparse_code: 4k + 4 + 4 ceil(n/65536) bytes) or "plain" ((values
    (k,) gradient dtype, indices (k,) int32): k * (itemsize + 4) bytes)."""

    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg):
        self.compact = cfg.sparse_format == "compact"

    def sparse_payload(self, grad, idx, values=None):
        """(payload, ctx) sending grad's elements at idx (ascending int32); values = grad[idx] if given."""
        values = grad[idx] if values is None else values                     # (k,)
        payload = sparse_code.encode(values, idx, grad.size) if self.compact else (values, idx)
        return payload, Context(grad.size, grad.dtype)

    def sparse_bytes(self, k, n, itemsize):
        return sparse_code.nbytes(k, n) if self.compact else k * (itemsize + 4)

    def as_sparse(self, payload):
        """payload -> (values (k,), indices (k,) ascending): decoded (float32, int64) when compact."""
        return sparse_code.decode(payload) if self.compact else payload

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype the compiled kernel writes into."""
        if compiled(payload[0]):
            from hpclm.compress import cpu
            if self.compact:
                return cpu.scatter_compact(payload, ctx.n, numpy.dtype(ctx.dtype), out)
            return cpu.scatter(payload[0], payload[1], ctx.n, numpy.dtype(ctx.dtype), out)
        return scatter(*self.as_sparse(payload), ctx.n, ctx.dtype)

    def subtract_sent(self, acc, payload, ctx):
        """Error feedback, fused: acc - D(payload). Plain: the sent entries zeroed; compact: the
        decoded values subtracted, so the residual keeps their float16 rounding error."""
        values, indices = self.as_sparse(payload)
        if self.compact:
            acc[indices] -= values
        else:
            acc[indices] = 0

    def sent_indices(self, payload, ctx):
        return self.as_sparse(payload)[1]


class TopK(SparseCompressor):
    """payload: the k largest |g| in cfg.sparse_format (SparseCompressor)."""

    name = "topk"

    def __init__(self, cfg, rank=0):
        super().__init__(cfg)
        self.density = cfg.density
        self.method = cfg.topk_method
        self.seed = cfg.seed
        self.rank = rank

    def indices(self, grad, step=0):
        xp = X.array_module(grad)
        k = topk_count(grad.size, self.density)
        if X.device == "gpu" and xp is not __import__("numpy"):
            from hpclm.compress import cuda
            return cuda.topk_indices(grad, k)
        a = xp.abs(grad)
        if self.method == "sampled":
            return select_topk_sampled(a, k, rng.stream_key(self.seed, step, self.rank), xp)
        return select_topk(a, k, xp)

    def compress(self, grad, step=0):
        k = topk_count(grad.size, self.density)
        if compiled(grad) and 0 < k < grad.size:
            found = select_topk_compiled(grad, k, rng.stream_key(self.seed, step, self.rank))
            if found is not None:
                return self.sparse_payload(grad, *found)
        return self.sparse_payload(grad, self.indices(grad, step))

    def payload_bytes(self, n, itemsize=4):
        return self.sparse_bytes(topk_count(n, self.density), n, itemsize)


def scatter(values, indices, n, dtype):
    """A dense (n,) array with `values` at `indices` and zeros elsewhere."""
    xp = X.array_module(values)
    out = xp.zeros(n, dtype=dtype)
    out[indices] = values
    return out
