"""`fp16`: cast to IEEE half precision (round to nearest even). Travels: (n,) float16, 2 n bytes.
Summable: all-reduced by our own algorithms with `wire_sum` = half.add_halves, which adds in
float32 and rounds the partial sum to half at every step (NumPy's and MPICH's float16 additions
are scalar loops). Values beyond 65504 overflow to inf; scale the loss if needed.
Conversions: hpclm.compress.half (bit arithmetic on CPU, astype on GPU)."""
from hpclm.compress.base import SixteenBit
from hpclm.compress.half import add_halves, float_to_half, half_to_float


class FP16(SixteenBit):
    """payload = (g as float16,); 2 n bytes."""

    name = "fp16"
    encode = staticmethod(float_to_half)
    decode = staticmethod(half_to_float)
    wire_sum = staticmethod(add_halves)
