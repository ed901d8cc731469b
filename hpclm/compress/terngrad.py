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
from hpclm.compress.bits import on_gpu, pack_codes, packed_size, unpack_codes


def terngrad_codes(g, inv_m, key):
    """NumPy twin of terngrad_codes in kernels/quantize.cu: inv_m = 1 / max|g| (float32)."""
    p = numpy.abs(g).astype(numpy.float32, copy=False) * numpy.float32(inv_m)
    keep = rng.uniform(key, g.size, xp=numpy) < p
    codes = numpy.ones(g.size, numpy.uint8)
    codes += keep & ~numpy.signbit(g)
    codes -= keep & numpy.signbit(g)
    return codes


class TernGrad(Compressor):
    """payload = (m float32 (1,), 2-bit codes); 4 + ceil(n/4) bytes."""

    name = "terngrad"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.seed, self.rank = cfg.seed, rank

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        m = (xp.abs(grad).max() if grad.size else xp.zeros(())).astype(xp.float32).reshape(1)
        mv = float(m[0])
        inv = numpy.float32(1.0) / numpy.float32(mv) if mv > 0 else numpy.float32(0.0)
        key = rng.stream_key(self.seed, step, self.rank)
        if on_gpu(grad):
            from hpclm.compress import cuda
            codes = cuda.terngrad_codes(grad, inv, key)
        else:
            codes = terngrad_codes(grad, inv, key)
        return (m, pack_codes(codes, 2)), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        m, packed = payload
        out = unpack_codes(packed, ctx.n, 2).astype(ctx.dtype)
        out -= 1
        out *= m.astype(ctx.dtype)
        return out

    def payload_bytes(self, n, itemsize=4):
        return 4 + packed_size(n, 2)
