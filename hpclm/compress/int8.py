"""`int8`: per-block absmax scaling. Each block of cfg.block elements (the last may be shorter)
gets scale = max|g| / 127 (float32) and q = rint(g / scale) (round half to even; 0 for an
all-zero block). Travels: q (n,) int8 and scales (ceil(n/block),) float32:
n + 4 * ceil(n / block) bytes. Error per element <= scale / 2 (to float32 round-off).
Aggregate: gather (scales differ across ranks). GPU: kernels/quantize.cu (int8_quantize_*).
"""
import numpy

from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import CHUNK, on_gpu


def block_scales(g, block):
    """(nb,) float32 absmax / 127 per block, computed with max and min (no |g| temporary)."""
    n = g.size
    nb = -(-n // block)
    amax = numpy.empty(nb, numpy.float32)
    full = n // block
    if full:
        main = g[: full * block].reshape(full, block)
        numpy.maximum(main.max(axis=1), -main.min(axis=1), out=amax[:full])
    if nb > full:
        tail = g[full * block:]
        amax[full] = max(tail.max(), -tail.min())
    return amax / numpy.float32(127.0)


def int8_quantize(g, block):
    """NumPy twin of kernels/quantize.cu int8_quantize: (q int8 (n,), scales float32 (nb,))."""
    n = g.size
    scales = block_scales(g, block) if n else numpy.zeros(0, numpy.float32)
    with numpy.errstate(divide="ignore"):
        inv = numpy.where(scales > 0, numpy.float32(1.0) / scales, numpy.float32(0.0)).astype(numpy.float32)
    q = numpy.empty(n, numpy.int8)
    step = max(block, CHUNK // block * block)
    tmp = numpy.empty(min(n, step), numpy.float32)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        t = tmp[: hi - lo]
        b0, nfull = lo // block, (hi - lo) // block
        if nfull:
            numpy.multiply(g[lo: lo + nfull * block].reshape(nfull, block), inv[b0: b0 + nfull, None],
                           out=t[: nfull * block].reshape(nfull, block))
        if lo + nfull * block < hi:
            numpy.multiply(g[lo + nfull * block: hi], inv[b0 + nfull], out=t[nfull * block:])
        numpy.rint(t, out=t)
        q[lo:hi] = t  # exact: |t| <= 127
    return q, scales


def int8_dequantize(q, scales, block, n, dtype=numpy.float32):
    out = numpy.empty(n, dtype)
    full = n // block
    if full:
        numpy.multiply(q[: full * block].reshape(full, block), scales[:full, None],
                       out=out[: full * block].reshape(full, block))
    if n > full * block:
        numpy.multiply(q[full * block:], scales[full], out=out[full * block:])
    return out


class Int8(Compressor):
    """payload = (q int8 (n,), scales float32 (ceil(n/block),)); n + 4 ceil(n/block) bytes."""

    name = "int8"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.block = cfg.block

    def compress(self, grad, step=0):
        if on_gpu(grad):
            from hpclm.compress import cuda
            q, s = cuda.int8_quantize(grad, self.block)
        else:
            q, s = int8_quantize(grad, self.block)
        return (q, s), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        q, s = payload
        if on_gpu(q):
            from hpclm.compress import cuda
            return cuda.int8_dequantize(q, s, self.block, ctx.n, ctx.dtype)
        return int8_dequantize(q, s, self.block, ctx.n, ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return n + 4 * (-(-n // self.block))
