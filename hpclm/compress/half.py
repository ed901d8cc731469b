"""IEEE half precision <-> float32 by integer arithmetic on the bit patterns, for NumPy.

NumPy's own float16 casts are scalar loops on this project's CPUs; these vectorised uint32
versions give the same bits for every input (round to nearest even, subnormals, +-0, inf,
NaN -> quiet NaN) and run in chunks of CHUNK elements so that their temporaries stay in cache
(a whole-array temporary streams through memory, and a fresh large one page-faults, on every
pass). CuPy arrays use `astype` (a GPU kernel).
"""
import numpy

from hpclm import xp as X
from hpclm.compress.bits import compiled, spans

_U = numpy.uint32
CHUNK = 1 << 16


def _chunked(convert, x, dtype):
    out = numpy.empty(x.shape, dtype)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for lo, hi in spans(flat_in.size, CHUNK):
        flat_out[lo:hi] = convert(flat_in[lo:hi])
    return out


def half_to_float(h):
    """float16 array -> float32 array of the same shape, exactly."""
    if X.array_module(h) is not numpy:
        return h.astype(X.array_module(h).float32)
    if compiled(h):
        from hpclm.compress import cpu
        return cpu.from_16(h, False)
    return _chunked(_half_to_float, h, numpy.float32)


def float_to_half(x):
    """float32 array -> float16 array of the same shape, rounded to nearest even (as astype)."""
    if X.array_module(x) is not numpy:
        return x.astype(X.array_module(x).float16)
    if compiled(x):
        from hpclm.compress import cpu
        return cpu.to_16(x, False).view(numpy.float16)
    return _chunked(_float_to_half, x, numpy.float16)


def add_halves(acc, other):
    """acc <- float16(float32(acc) + float32(other)), float16 arrays of one shape, in place."""
    if X.array_module(acc) is not numpy:
        total = acc.astype(X.array_module(acc).float32)
        total += other
        acc[...] = total
        return
    if compiled(acc):
        from hpclm.compress import cpu
        return cpu.sum_16(acc, other, False)
    a, b = acc.reshape(-1), other.reshape(-1)
    for lo, hi in spans(a.size, CHUNK):
        total = _half_to_float(a[lo:hi])                                 # (hi - lo,) float32
        total += _half_to_float(b[lo:hi])
        a[lo:hi] = _float_to_half(total)


def _half_to_float(h):
    u = h.view(numpy.uint16).astype(_U)                                  # (n,)
    magnitude = u & _U(0x7FFF)
    out = (magnitude << _U(13)).view(numpy.float32) * numpy.float32(2.0 ** 112)   # normals, subnormals
    bits = out.view(_U)
    special = magnitude >= _U(0x7C00)                                    # inf, NaN: exponent all ones
    if special.any():
        bits[special] = _U(0x7F800000) | (magnitude[special] << _U(13))
    bits |= (u & _U(0x8000)) << _U(16)
    return out


_REBIAS = _U((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)     # float32 -> half exponent, round down
_SUBNORMAL_MAGIC = _U(((127 - 15) + (23 - 10) + 1) << 23)   # adding it aligns half subnormals


def _float_to_half(x):
    f = x.astype(numpy.float32, copy=False).view(_U)
    sign = (f >> _U(16)) & _U(0x8000)
    a = f & _U(0x7FFFFFFF)                                               # |x| bits
    out = a + _REBIAS                                                    # normal halves
    out += (a >> _U(13)) & _U(1)                                         # ties to even
    out >>= _U(13)
    small = a < _U(113 << 23)                                            # half subnormals and zero
    if small.any():
        magic = _SUBNORMAL_MAGIC.reshape(1).view(numpy.float32)[0]
        out[small] = (a[small].view(numpy.float32) + magic).view(_U) - _SUBNORMAL_MAGIC
    big = a >= _U((127 + 16) << 23)                                      # >= 65536, inf, NaN
    if big.any():
        out[big] = numpy.where(a[big] > _U(255 << 23), _U(0x7E00), _U(0x7C00))
    out |= sign
    return out.astype(numpy.uint16).view(numpy.float16)
