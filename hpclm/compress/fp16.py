"""`fp16`: cast to IEEE half precision (round to nearest even). Travels: (n,) float16, 2 n bytes.
Summable: all-reduced by our own algorithms with `wire_sum` = half.add_halves, which adds in
float32 and rounds the partial sum to half at every step (NumPy's and MPICH's float16 additions
are scalar loops, 10x slower here). Values beyond 65504 overflow to inf; scale the loss if needed.
Conversions: hpclm.compress.half (bit arithmetic on CPU, astype on GPU)."""
from hpclm.compress.base import AGGREGATE_SUM, Compressor, Context
from hpclm.compress.half import add_halves, float_to_half, half_to_float


class FP16(Compressor):
    """payload = (g.astype(float16),); 2 n bytes."""

    name = "fp16"
    aggregate = AGGREGATE_SUM
    wire_sum = staticmethod(add_halves)

    def compress(self, grad, step=0):
        return (float_to_half(grad),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return half_to_float(payload[0]).astype(ctx.dtype, copy=False)

    def payload_bytes(self, n, itemsize=4):
        return 2 * n
