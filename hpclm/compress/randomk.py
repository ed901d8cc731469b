"""`randomk` (Stich et al. 2018): k = max(1, floor(density * n)) elements at indices drawn from
the shared stream (cfg.seed, step) -- no rank salt -- so every rank picks the same indices and
only the values travel. Travels: values (k,) in the gradient dtype: k * itemsize bytes.
Aggregate: sum (the value vectors of all ranks add element-wise; an all-reduce works).
Values are not rescaled by n/k (biased towards zero; error feedback is on under "auto").

Indices: the k smallest of n SplitMix64 hashes (a uniformly random k-subset), sorted ascending;
computed with the same arithmetic on CPU and GPU, so both backends pick the same subset.
"""
import numpy

from hpclm import kernels
from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_SUM, Compressor, Context
from hpclm.compress.bits import compiled
from hpclm.compress.topk import scatter, topk_count

MARGIN_SIGMAS = 6      # the candidate cut, in standard deviations of the count below it, above k


def random_indices(n, k, seed, step, xp=None):
    """(k,) int32, ascending: the same on every rank for the same (seed, step).

    The hashes are distinct (SplitMix64 is a bijection of distinct counters), so "the k smallest"
    is one set: the hashes up to the k-th smallest. Selection: only hashes below a cut a few
    standard deviations above the k/n quantile are partitioned (about k + 6 sqrt(k) + 16
    candidates instead of n; on the compiled kernels, a radix pass over them: cpu.largest_patterns);
    if fewer than k fall below it (probability ~1e-9), all n are."""
    xp = xp or X.np
    if k >= n:
        return xp.arange(n, dtype=xp.int32)
    if k == 0:
        return xp.zeros(0, xp.int32)
    key = rng.stream_key(seed, step, 0)
    cut = max(min((k + MARGIN_SIGMAS * k ** 0.5 + 16) / n, 1.0), 0.0) * 2.0 ** 64
    cut = min(int(cut), (1 << 64) - 1)
    if xp is numpy and kernels.enabled():                             # candidates without the (n,) hashes
        from hpclm.compress import cpu
        candidates, hashes = cpu.hashes_below(key, n, cut)
        if candidates.size >= k:                                     # the k largest of ~hash: a radix pass
            return candidates[cpu.largest_patterns(~hashes, k)].astype(xp.int32)
    else:
        h = rng.hash64(key, n, xp=xp)                                        # (n,) uint64
        candidates = xp.flatnonzero(h < xp.uint64(cut))
        hashes = h[candidates]
    if candidates.size < k:
        candidates, hashes = xp.arange(n), rng.hash64(key, n, xp=xp)
    kth = xp.partition(hashes, k - 1)[k - 1]                                 # the k-th smallest hash
    return candidates[hashes <= kth].astype(xp.int32)                        # k of them, ascending


class RandomK(Compressor):
    """payload = (values (k,),); k * itemsize bytes; indices live in ctx.extra (not sent)."""

    name = "randomk"
    aggregate = AGGREGATE_SUM

    def __init__(self, cfg, rank=0):
        self.density, self.seed = cfg.density, cfg.seed

    def indices(self, n, step, xp=None):
        return random_indices(n, topk_count(n, self.density), self.seed, step, xp)

    def compress(self, grad, step=0):
        idx = self.indices(grad.size, step, X.array_module(grad))
        if compiled(grad):
            from hpclm.compress import cpu
            return (cpu.take(grad, idx),), Context(grad.size, grad.dtype, extra=idx)
        return (grad[idx],), Context(grad.size, grad.dtype, extra=idx)

    def context(self, n, dtype, step):
        """The receiver's context for a payload of `step` (indices regenerated from the seed)."""
        return Context(n, dtype, extra=self.indices(n, step))

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype the compiled kernel writes into."""
        if compiled(payload[0]):
            from hpclm.compress import cpu
            return cpu.scatter(payload[0], ctx.extra, ctx.n, numpy.dtype(ctx.dtype), out)
        return scatter(payload[0], ctx.extra, ctx.n, ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return topk_count(n, self.density) * itemsize

    def combine(self, a, b):
        return (a[0] + b[0],)

    def subtract_sent(self, acc, payload, ctx):
        acc[ctx.extra] = 0

    def sent_indices(self, payload, ctx):
        return ctx.extra
