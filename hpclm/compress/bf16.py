"""`bf16`: bfloat16, stored as the uint16 upper halves of the float32 bit patterns, rounded to
nearest even (NaN stays a quiet NaN). Travels: (n,) uint16, 2 n bytes. Relative error <= 2^-8.

Aggregate: sum. MPI has no bfloat16 type and must not add the uint16 words as integers, so the
payload is all-reduced by our own algorithms with `wire_sum` = bf16_sum (decode, add in float32,
round to bf16 again at every reduction step, as NCCL's bf16 all-reduce does): 2(P-1)/P * 2n bytes
each way, half of fp32's.
"""
import numpy

from hpclm import xp as X
from hpclm.compress.base import SixteenBit
from hpclm.compress.bits import compiled, spans
from hpclm.compress.half import CHUNK


def to_bf16_bits(g):
    if compiled(g):
        from hpclm.compress import cpu
        return cpu.to_16(g, True)
    xp = X.array_module(g)
    u = g.astype(xp.float32, copy=False).view(xp.uint32)
    r = (u >> xp.uint32(16)) & xp.uint32(1)
    r += xp.uint32(0x7FFF)
    r += u
    r >>= xp.uint32(16)
    out = r.astype(xp.uint16)
    nan = xp.isnan(g)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def from_bf16_bits(h, dtype=numpy.float32):
    if compiled(h):
        from hpclm.compress import cpu
        return cpu.from_16(h, True).astype(dtype, copy=False)
    xp = X.array_module(h)
    return (h.astype(xp.uint32) << xp.uint32(16)).view(xp.float32).astype(dtype, copy=False)


def bf16_sum(acc, other):
    """acc <- bf16(float32(acc) + float32(other)), uint16 bf16 bits of one shape, in place; on
    NumPy in chunks of half.CHUNK elements so the float32 temporaries stay in cache."""
    if compiled(acc):
        from hpclm.compress import cpu
        return cpu.sum_16(acc, other, True)
    a, b = acc.reshape(-1), other.reshape(-1)
    for lo, hi in spans(a.size, CHUNK if X.array_module(a) is numpy else max(a.size, 1)):
        a[lo:hi] = to_bf16_bits(from_bf16_bits(a[lo:hi]) + from_bf16_bits(b[lo:hi]))


class BF16(SixteenBit):
    """payload = (uint16 bf16 bits (n,),); 2 n bytes."""

    name = "bf16"
    is_bf16 = True
    encode = staticmethod(to_bf16_bits)
    decode = staticmethod(from_bf16_bits)
    wire_sum = staticmethod(bf16_sum)
