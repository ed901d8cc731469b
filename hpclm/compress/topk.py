"""`topk`: the k = max(1, floor(density * n)) largest |g| (Aji & Heafield 2017; DGC, Lin et al. 2018).

Travels: values (k,) in the gradient dtype and indices (k,) int32: k * (itemsize + 4) bytes.
Aggregate: gather (index sets differ across ranks); the receiver scatter-adds every rank's payload.

Selection is deterministic so that the CPU twin and the GPU radix-select agree on the set: all
elements with |g| above the k-th largest magnitude t, then elements equal to t by lowest index.
Indices are sorted ascending.

topk_method = "exact": t from np.partition (the selection behind np.argpartition), O(n).
topk_method = "sampled": DGC's estimate: t from the top-density quantile of a hashed sample of
~1% of |g| (at least 256 elements); elements >= t are the candidates; if there are at least k,
the exact top-k among the candidates is taken (DGC's hierarchical selection), else t is halved
and retried (3 times), then falls back to exact. The result equals the exact set; only the cost
differs (a partition of the small candidate set instead of all n).
"""
from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context


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
    gt = xp.flatnonzero(a > t)
    eq = xp.flatnonzero(a == t)[: k - gt.size]
    idx = xp.concatenate([gt, eq]).astype(xp.int32)
    idx.sort()
    return idx


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


class TopK(Compressor):
    """payload = (values (k,) dtype, indices (k,) int32); k * (itemsize + 4) bytes."""

    name = "topk"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
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
        idx = self.indices(grad, step)
        return (grad[idx], idx), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return scatter(payload[0], payload[1], ctx.n, ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return topk_count(n, self.density) * (itemsize + 4)

    def subtract_sent(self, acc, payload, ctx):
        """Error feedback, fused: acc - D(payload) is acc with the sent entries zeroed."""
        acc[payload[1]] = 0

    def sent_indices(self, payload, ctx):
        return payload[1]


def scatter(values, indices, n, dtype):
    """A dense (n,) array with `values` at `indices` and zeros elsewhere."""
    xp = X.array_module(values)
    out = xp.zeros(n, dtype=dtype)
    out[indices] = values
    return out
