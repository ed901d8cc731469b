"""`ef_sign`: scaled sign (EF-SignSGD, Karimireddy et al. 2019; the 1-bit compression of
1-bit Adam): one sign bit per element plus one float32 scale = mean |g| (= ||g||_1 / n), so the
decompressed vector has the same l1 norm as g. Travels: ceil(n/8) + 4 bytes. Aggregate: gather
(each rank's scale differs). Meant to run with error feedback (on under "auto").
"""
import numpy

from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import pack_signs, packed_size, unpack_signs
from hpclm.compress.signsgd import subtract_scaled_sign


class EFSign(Compressor):
    """payload = (packed sign bits (ceil(n/8),) uint8, scale (1,) float32); ceil(n/8) + 4 bytes."""

    name = "ef_sign"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg=None, rank=0):
        self.cfg = cfg

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        n = grad.size
        scale = (xp.abs(grad).sum(dtype=xp.float64) / n if n else xp.zeros(())).astype(xp.float32).reshape(1)
        return (pack_signs(grad), scale), Context(n, grad.dtype)

    def decompress(self, payload, ctx):
        packed, scale = payload
        return unpack_signs(packed, ctx.n, float(scale[0]), numpy.dtype(ctx.dtype).type)

    def payload_bytes(self, n, itemsize=4):
        return packed_size(n) + 4

    def subtract_sent(self, acc, payload, ctx):
        subtract_scaled_sign(acc, float(payload[1][0]))
