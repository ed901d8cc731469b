"""`threshold` (Strom 2015): every element with |g| > cfg.threshold, c of them, a count known only
after compressing. Travels (compress.sparse_format, as topk): "compact": float16 values / scale,
the scale, uint16 chunk-local indices and the count per 65536-element chunk: 4c + 4 + 4 ceil(n/65536)
bytes; "plain": values (c,) in the gradient dtype and indices (c,) int32: c * (itemsize + 4) bytes.
payload_bytes(n, itemsize, count) (without count, the worst case c = n). Aggregate: gather
(variable-size: all-gather the sizes first).
"""
from hpclm import xp as X
from hpclm.compress.bits import compiled
from hpclm.compress.topk import SparseCompressor


class Threshold(SparseCompressor):
    """payload: the c elements with |g| > threshold in cfg.sparse_format (SparseCompressor)."""

    name = "threshold"

    def __init__(self, cfg, rank=0):
        super().__init__(cfg)
        self.threshold = cfg.threshold

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        if compiled(grad):                                                   # one pass: indices and values
            from hpclm.compress import cpu
            found = cpu.select_abs(grad, self.threshold, strict=True)
            if found is not None:
                return self.sparse_payload(grad, *found)
        return self.sparse_payload(grad, xp.flatnonzero(xp.abs(grad) > self.threshold).astype(xp.int32))

    def payload_bytes(self, n, itemsize=4, count=None):
        return self.sparse_bytes(n if count is None else count, n, itemsize)
