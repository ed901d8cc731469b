"""`fp16`: cast to IEEE half precision (round to nearest even). Travels: (n,) float16, 2 n bytes.
Summable: all-reduced by our own algorithms with `wire_sum` = fp16_sum, which adds in float32 and
rounds the partial sum to half at every step (NumPy's and MPICH's float16 additions are scalar
loops, 10x slower here). Values beyond 65504 overflow to inf; scale the loss if needed."""
from hpclm import xp as X
from hpclm.compress.base import AGGREGATE_SUM, Compressor, Context


def fp16_sum(acc, other):
    """acc <- float16(float32(acc) + float32(other)), both (n,) float16, in place."""
    total = acc.astype(X.array_module(acc).float32)                   # (n,)
    total += other
    acc[...] = total


class FP16(Compressor):
    """payload = (g.astype(float16),); 2 n bytes."""

    name = "fp16"
    aggregate = AGGREGATE_SUM
    wire_sum = staticmethod(fp16_sum)

    def compress(self, grad, step=0):
        return (grad.astype(X.array_module(grad).float16),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return payload[0].astype(ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return 2 * n

    def combine(self, a, b):
        """The sum of two payloads, as a payload (MPI has no float16: a user-op reduction)."""
        out = a[0].copy()
        fp16_sum(out, b[0])
        return (out,)
