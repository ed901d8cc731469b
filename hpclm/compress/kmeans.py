"""`kmeans`: 1-D k-means quantization, k = cfg.clusters (a power of two) centroids.

Centroids: quantile initialisation ((i + 1/2) / k quantiles) on a hashed sample of at most 4096
elements (the (seed, step, rank) stream), then 5 vectorised Lloyd iterations on the sample
(assignment by searchsorted on the midpoints of the sorted centroids, update by bincount).
Every element gets the code of its nearest centroid. Travels: codes at log2(k) bits per element
and the k float32 centroids: ceil(n * log2(k) / 8) + 4 k bytes. Centroids lie within
[min g, max g], so the error per element is at most max g - min g. Aggregate: gather.
"""

from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import pack_codes, packed_size, unpack_codes

SAMPLE = 4096
ITERS = 5


def fit_centroids(sample, k, iters=ITERS):
    """(k,) float32 sorted centroids of a 1-D sample (NumPy or CuPy)."""
    xp = X.array_module(sample)
    s = xp.sort(sample.astype(xp.float64))
    c = s[((xp.arange(k) + 0.5) * s.size / k).astype(xp.int64)]
    for _ in range(iters):  # Lloyd iterations (a fixed few), each vectorised over the sample
        a = xp.searchsorted((c[1:] + c[:-1]) * 0.5, s)
        cnt = xp.bincount(a, minlength=k)
        tot = xp.bincount(a, weights=s, minlength=k)
        c = xp.where(cnt > 0, tot / xp.maximum(cnt, 1), c)
        c = xp.sort(c)
    return c.astype(xp.float32)


class KMeans(Compressor):
    """payload = (codes packed at log2(k) bits, centroids (k,) float32)."""

    name = "kmeans"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.k = cfg.clusters
        self.bits = self.k.bit_length() - 1
        self.seed, self.rank = cfg.seed, rank

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        n = grad.size
        if n == 0:
            return (xp.zeros(0, xp.uint8), xp.zeros(self.k, xp.float32)), Context(0, grad.dtype)
        if n <= SAMPLE:
            sample = grad
        else:
            sample = grad[(rng.hash64(rng.stream_key(self.seed, step, self.rank), SAMPLE, xp=xp)
                           % xp.uint64(n)).astype(xp.int64)]
        c = fit_centroids(sample, self.k)
        codes = xp.searchsorted((c[1:] + c[:-1]) * xp.float32(0.5), grad).astype(xp.uint8)
        return (pack_codes(codes, self.bits), c), Context(n, grad.dtype)

    def decompress(self, payload, ctx):
        packed, c = payload
        return c.astype(ctx.dtype)[unpack_codes(packed, ctx.n, self.bits)]

    def payload_bytes(self, n, itemsize=4):
        return packed_size(n, self.bits) + 4 * self.k
