"""`kmeans`: 1-D k-means quantization, k = cfg.clusters (a power of two) centroids.

Centroids: quantile initialisation ((i + 1/2) / k quantiles) on a hashed sample of at most 4096
elements (the (seed, step, rank) stream), then 5 vectorised Lloyd iterations on the sample
(assignment by searchsorted on the midpoints of the sorted centroids, update by bincount).
Every element gets the code of its nearest centroid (nearest_codes). Travels: codes at log2(k)
bits per element and the k float32 centroids: ceil(n * log2(k) / 8) + 4 k bytes. Centroids lie within
[min g, max g], so the error per element is at most max g - min g. Aggregate: gather.
"""
import numpy

from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import CHUNK, compiled, pack_codes, packed_size, spans, unpack_codes

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


def nearest_codes(g, midpoints):
    """(n,) uint8: the code of each element's nearest centroid, searchsorted(midpoints, g) (NaN ->
    the last code). On NumPy as (k - 1) - #{midpoints >= g}, counted by k - 1 vectorised
    comparisons over cache-sized chunks instead of searchsorted's per-element binary search; a NaN
    compares false, so it gets k - 1 as well."""
    xp = X.array_module(g)
    if xp is not numpy:
        return xp.searchsorted(midpoints, g).astype(xp.uint8)
    out = numpy.empty(g.size, numpy.uint8)
    at_or_below = numpy.empty(min(g.size, CHUNK), numpy.bool_)
    for lo, hi in spans(g.size):
        o, gc, b = out[lo:hi], g[lo:hi], at_or_below[: hi - lo]
        o.fill(midpoints.size)
        for m in midpoints:                                   # loop over the k - 1 midpoints
            numpy.less_equal(gc, m, out=b)
            o -= b.view(numpy.uint8)
    return out


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
        midpoints = (c[1:] + c[:-1]) * xp.float32(0.5)
        if compiled(grad):                                                   # codes and packing in one pass
            from hpclm.compress import cpu
            return (cpu.encode_nearest(grad, midpoints, self.bits), c), Context(n, grad.dtype)
        codes = nearest_codes(grad, midpoints)
        return (pack_codes(codes, self.bits), c), Context(n, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype the compiled kernel writes into."""
        packed, c = payload
        if compiled(packed):
            from hpclm.compress import cpu
            return cpu.decode_codes(packed, ctx.n, self.bits, c.astype(ctx.dtype), out)
        return c.astype(ctx.dtype)[unpack_codes(packed, ctx.n, self.bits)]

    def payload_bytes(self, n, itemsize=4):
        return packed_size(n, self.bits) + 4 * self.k
