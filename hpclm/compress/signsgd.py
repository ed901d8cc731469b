"""`signsgd` (Bernstein et al. 2018): one bit per element, the IEEE sign bit, packed with
np.packbits semantics (element 0 = MSB of byte 0; bit 1 = negative). Travels: ceil(n/8) bytes.
Decompresses to +1 / -1. Aggregate: sign_vote: `majority_vote` of every rank's packed signs
(ties -> +1) is again a packed sign vector, so the vote result can itself be broadcast.
"""
import numpy

from hpclm.compress.base import AGGREGATE_SIGN_VOTE, Compressor, Context
from hpclm.compress.bits import CHUNK, compiled, on_gpu, pack_signs, packed_size, spans, unpack_signs


def majority_vote(payloads, n):
    """Packed signs of the element-wise majority of the ranks' packed signs (ties -> +1)."""
    packed = [p[0] if isinstance(p, tuple) else p for p in payloads]
    if on_gpu(packed[0]):
        from hpclm.compress import cuda
        return cuda.sign_vote(packed, n)
    votes = numpy.zeros(8 * packed_size(n), numpy.uint16)
    for p in packed:  # loop over ranks, not elements
        votes += numpy.unpackbits(p)
    return numpy.packbits(2 * votes[:n] > len(packed))


class SignSGD(Compressor):
    """payload = (packed sign bits (ceil(n/8),) uint8,); ceil(n/8) bytes."""

    name = "signsgd"
    aggregate = AGGREGATE_SIGN_VOTE

    def compress(self, grad, step=0):
        return (pack_signs(grad),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) float32 buffer to write into (avoids first-touch page faults)."""
        return unpack_signs(payload[0], ctx.n, 1.0, numpy.dtype(ctx.dtype).type, out)

    def payload_bytes(self, n, itemsize=4):
        return packed_size(n)

    def majority_vote(self, payloads, n):
        return (majority_vote(payloads, n),)

    def subtract_sent(self, acc, payload, ctx):
        """Error feedback, fused: acc -= sign(acc) without unpacking (same sign bits)."""
        subtract_scaled_sign(acc, 1.0)


def subtract_scaled_sign(acc, scale):
    """acc -= copysign(scale, acc), chunked so the temporary stays in cache (kernels/ef.cu twin)."""
    if on_gpu(acc):
        from hpclm.compress import cuda
        return cuda.ef_sign_residual(acc, scale)
    if compiled(acc):
        from hpclm.compress import cpu
        return cpu.subtract_scaled_sign(acc, scale)
    s = acc.dtype.type(scale)
    tmp = numpy.empty(min(acc.size, CHUNK), acc.dtype)
    for lo, hi in spans(acc.size):
        a = acc[lo:hi]
        t = tmp[: a.size]
        numpy.copysign(s, a, out=t)
        numpy.subtract(a, t, out=a)
