"""`ef_sign`: scaled sign (EF-SignSGD, Karimireddy et al. 2019; the 1-bit compression of
1-bit Adam): one sign bit per element plus one float32 scale = mean |g| (= ||g||_1 / n), so the
decompressed vector has the same l1 norm as g. Travels: ceil(n/8) + 4 bytes. Aggregate: gather
(each rank's scale differs). Meant to run with error feedback (on under "auto").
"""
import numpy

from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import CHUNK, compiled, on_gpu, pack_signs, packed_size, spans, unpack_signs
from hpclm.compress.signsgd import subtract_scaled_sign


def mean_abs(g):
    """mean |g| (float64 accumulation over cache-sized chunks of |g|)."""
    n = g.size
    if n == 0:
        return 0.0
    if on_gpu(g):
        return float(X.array_module(g).abs(g).sum(dtype="float64")) / n
    tmp = numpy.empty(min(n, CHUNK), g.dtype)
    total = 0.0
    for lo, hi in spans(n):
        t = tmp[: hi - lo]
        numpy.abs(g[lo:hi], out=t)
        total += float(t.sum(dtype=numpy.float64))
    return total / n


class EFSign(Compressor):
    """payload = (packed sign bits (ceil(n/8),) uint8, scale (1,) float32); ceil(n/8) + 4 bytes."""

    name = "ef_sign"
    aggregate = AGGREGATE_GATHER

    def scale_of(self, grad):
        """The magnitude every element is sent with: mean |g|."""
        return mean_abs(grad)

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        if compiled(grad) and type(self).scale_of is EFSign.scale_of:     # signs and mean |g| in one pass
            from hpclm.compress import cpu
            packed, total = cpu.pack_signs_abs(grad)
            scale = numpy.asarray([total / grad.size if grad.size else 0.0], dtype=numpy.float32)
            return (packed, scale), Context(grad.size, grad.dtype)
        scale = xp.asarray([self.scale_of(grad)], dtype=xp.float32)          # (1,)
        return (pack_signs(grad), scale), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        packed, scale = payload
        return unpack_signs(packed, ctx.n, float(scale[0]), numpy.dtype(ctx.dtype).type, out)

    def payload_bytes(self, n, itemsize=4):
        return packed_size(n) + 4

    def subtract_sent(self, acc, payload, ctx):
        subtract_scaled_sign(acc, float(payload[1][0]))
