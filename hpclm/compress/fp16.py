"""`fp16`: cast to IEEE half precision (round to nearest even). Travels: (n,) float16, 2 n bytes.
Summable: the all-reduce adds halves (values beyond 65504 overflow to inf; scale the loss if needed)."""
from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_SUM, Compressor, Context


class FP16(Compressor):
    """payload = (g.astype(float16),); 2 n bytes."""

    name = "fp16"
    aggregate = AGGREGATE_SUM

    def compress(self, grad, step=0):
        return (grad.astype(X.array_module(grad).float16),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return payload[0].astype(ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return 2 * n

    def combine(self, a, b):
        """The sum of two payloads, as a payload (MPI has no float16: a user-op reduction)."""
        return (a[0] + b[0],)
