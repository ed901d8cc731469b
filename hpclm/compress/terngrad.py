"""`terngrad` (Wen et al. 2017): unbiased ternary with scale m = max|g|.

    b = [u < |g| / m], u ~ U[0,1) from the (seed, step, rank) stream;  t = sign(g) * b in {-1,0,1}
    code = t + 1 packed at 2 bits per element;  decompress: (code - 1) * m.   E = g.

Travels: m (1,) float32 and ceil(2n / 8) bytes of codes: 4 + ceil(n / 4) bytes.
(The paper's optional gradient clipping is not applied.) Aggregate: gather.
"""
import numpy

from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import CHUNK, compiled, on_gpu, pack_codes, packed_size, spans, unpack_codes


def terngrad_codes(g, inv_m, key):
    """NumPy twin of terngrad_codes in kernels/quantize.cu: inv_m = 1 / max|g| (float32); code 2
    for a kept positive, 0 for a kept negative (sign bit set), 1 otherwise. In chunks of CHUNK
    elements (the stream drawn at their offsets), so that the temporaries stay in cache."""
    n = g.size
    out = numpy.empty(n, numpy.uint8)
    p = numpy.empty(min(n, CHUNK), numpy.float32)
    keep, negative = numpy.empty(min(n, CHUNK), numpy.bool_), numpy.empty(min(n, CHUNK), numpy.bool_)
    for lo, hi in spans(n):
        k, gc, o = hi - lo, g[lo:hi], out[lo:hi]
        numpy.abs(gc, out=p[:k], casting="same_kind")
        p[:k] *= numpy.float32(inv_m)                                        # |g| / max|g|
        numpy.less(rng.uniform(key, k, offset=lo, xp=numpy), p[:k], out=keep[:k])
        numpy.signbit(gc, out=negative[:k])
        numpy.logical_and(keep[:k], negative[:k], out=negative[:k])          # kept and negative
        numpy.add(keep[:k].view(numpy.uint8), numpy.uint8(1), out=o)         # kept: 2, else 1
        numpy.subtract(o, negative[:k].view(numpy.uint8), out=o)
        numpy.subtract(o, negative[:k].view(numpy.uint8), out=o)             # kept and negative: 0
    return out


class TernGrad(Compressor):
    """payload = (m float32 (1,), 2-bit codes); 4 + ceil(n/4) bytes."""

    name = "terngrad"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.seed, self.rank = cfg.seed, rank

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        if compiled(grad):
            from hpclm.compress import cpu
            m = numpy.asarray([cpu.abs_max(grad)]).astype(numpy.float32)
        else:
            m = (xp.abs(grad).max() if grad.size else xp.zeros(())).astype(xp.float32).reshape(1)
        mv = float(m[0])
        inv = numpy.float32(1.0) / numpy.float32(mv) if mv > 0 else numpy.float32(0.0)
        key = rng.stream_key(self.seed, step, self.rank)
        if on_gpu(grad):
            from hpclm.compress import cuda
            codes = cuda.terngrad_codes(grad, inv, key)
        elif compiled(grad):                                                 # codes and packing in one pass
            from hpclm.compress import cpu
            return (m, cpu.encode_codes(grad, cpu.TERNGRAD, 2, inv, 0, key)), Context(grad.size, grad.dtype)
        else:
            codes = terngrad_codes(grad, inv, key)
        return (m, pack_codes(codes, 2)), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype the compiled kernel writes into."""
        m, packed = payload
        if compiled(packed):                                                 # (code - 1) * m
            from hpclm.compress import cpu
            return cpu.decode_affine(packed, ctx.n, 2, 1, m.astype(ctx.dtype)[0], ctx.dtype, out)
        out = unpack_codes(packed, ctx.n, 2).astype(ctx.dtype)
        out -= 1
        out *= m.astype(ctx.dtype)
        return out

    def payload_bytes(self, n, itemsize=4):
        return 4 + packed_size(n, 2)
