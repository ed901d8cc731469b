"""`int8`: per-block absmax scaling. Each block of cfg.block elements (the last may be shorter)
gets scale = max|g| / 127 (float32) and q = rint(g / scale) (round half to even; 0 for an
all-zero block). Travels: q (n,) int8 and scales (ceil(n/block),) float32:
n + 4 * ceil(n / block) bytes. Error per element <= scale / 2 (to float32 round-off).
Aggregate: gather (scales differ across ranks). GPU: kernels/quantize.cu (int8_quantize_*).
"""
import numpy

from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import compiled, on_gpu, spans


CHUNK_ELEMS = 1 << 18  # elements per chunk (rounded to whole blocks): temporaries stay in L2


def _chunks(n, block):
    """spans of about CHUNK_ELEMS elements, cut at block boundaries."""
    return spans(n, max(block, CHUNK_ELEMS // block * block))


def _blockwise(op, x, per_block, out, block):
    """op(x_block, per_block[b], out=out_block) for the whole blocks of x as one 2-D call, then the tail."""
    full = x.size // block
    if full:
        op(x[: full * block].reshape(full, block), per_block[:full, None], out=out[: full * block].reshape(full, block))
    if x.size > full * block:
        op(x[full * block:], per_block[full], out=out[full * block:])


def int8_quantize(g, block):
    """NumPy twin of kernels/quantize.cu int8_*: (q int8 (n,), scales float32 (ceil(n/block),)).
    Chunked so that |g| and g * (1/scale) stay in cache; per chunk: abs, a max per block
    (reduceat), scale = max / 127, q = rint(g * (1 / scale)) cast to int8 (exact, |.| <= 127)."""
    n = g.size
    scales = numpy.empty(-(-n // block), numpy.float32)
    q = numpy.empty(n, numpy.int8)
    tmp = numpy.empty(min(n, max(block, CHUNK_ELEMS // block * block)), numpy.float32)
    for lo, hi in _chunks(n, block):
        t = tmp[: hi - lo]
        gc = g[lo:hi]
        numpy.abs(gc, out=t)
        sc = scales[lo // block: -(-hi // block)]
        numpy.maximum.reduceat(t, numpy.arange(0, hi - lo, block), out=sc)
        sc /= numpy.float32(127.0)
        with numpy.errstate(divide="ignore"):
            inv = numpy.float32(1.0) / sc
        inv[sc == 0] = 0
        _blockwise(numpy.multiply, gc, inv, t, block)
        numpy.rint(t, out=t)
        numpy.copyto(q[lo:hi], t, casting="unsafe")
    return q, scales


def int8_dequantize(q, scales, block, n, dtype=numpy.float32, out=None):
    """NumPy twin of int8_dequantize_v1: out = float(q) * scale of its block (chunked, in place)."""
    if out is None or out.dtype != numpy.float32:
        out = numpy.empty(n, numpy.float32)
    for lo, hi in _chunks(n, block):
        o = out[lo:hi]
        numpy.copyto(o, q[lo:hi])
        _blockwise(numpy.multiply, o, scales[lo // block: -(-hi // block)], o, block)
    return out.astype(dtype, copy=False)


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
        elif compiled(grad):
            from hpclm.compress import cpu
            q, s = cpu.int8_quantize(grad, self.block)
        else:
            q, s = int8_quantize(grad, self.block)
        return (q, s), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) float32 buffer to write into (avoids first-touch page faults)."""
        q, s = payload
        if on_gpu(q):
            from hpclm.compress import cuda
            return cuda.int8_dequantize(q, s, self.block, ctx.n, ctx.dtype)
        if compiled(q):
            from hpclm.compress import cpu
            if out is None or out.dtype != numpy.float32:
                out = numpy.empty(ctx.n, numpy.float32)
            return cpu.int8_dequantize(q, s, self.block, out).astype(ctx.dtype, copy=False)
        return int8_dequantize(q, s, self.block, ctx.n, ctx.dtype, out)

    def payload_bytes(self, n, itemsize=4):
        return n + 4 * (-(-n // self.block))
