"""`threshold` (Strom 2015): every element with |g| > cfg.threshold. Travels: values (c,) in the
gradient dtype and indices (c,) int32, c = the count above threshold: c * (itemsize + 4) bytes,
a size known only after compressing (payload_bytes(n, itemsize, count); without count, the worst
case n). Aggregate: gather (variable-size: all-gather the counts first).
"""
from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.topk import scatter


class Threshold(Compressor):
    """payload = (values (c,), indices (c,) int32); c * (itemsize + 4) bytes."""

    name = "threshold"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.threshold = cfg.threshold

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        idx = xp.flatnonzero(xp.abs(grad) > self.threshold).astype(xp.int32)
        return (grad[idx], idx), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return scatter(payload[0], payload[1], ctx.n, ctx.dtype)

    def payload_bytes(self, n, itemsize=4, count=None):
        return (n if count is None else count) * (itemsize + 4)

    def subtract_sent(self, acc, payload, ctx):
        acc[payload[1]] = 0

    def sent_indices(self, payload, ctx):
        return payload[1]
