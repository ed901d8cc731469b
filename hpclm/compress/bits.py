"""Bit packing shared by the sign and quantizing compressors (NumPy twins of kernels/sign.cu and
kernels/pack.cu). Conventions follow np.packbits (bitorder="big"): element 0 is the most
significant bit of byte 0. A sign bit is the float's IEEE sign bit (1 = negative, so -0.0 counts
as negative); an unpacked sign is +1 for bit 0 and -1 for bit 1. A b-bit code is stored MSB first,
codes back to back: element i occupies bits [i*b, (i+1)*b) of the stream.
"""
import numpy

from hpclm import xp as X

# (256, 8): the eight signs (+1/-1) encoded by each byte, for unpacking by table lookup.
SIGN_LUT = (1.0 - 2.0 * numpy.unpackbits(numpy.arange(256, dtype=numpy.uint8)[:, None], axis=1)).astype(numpy.float32)
CHUNK = 1 << 18  # elements per chunk: temporaries stay in cache (a multiple of 8 and of common blocks)


def on_gpu(a):
    return X.device == "gpu" and not isinstance(a, numpy.ndarray)


def packed_size(n, bits=1):
    return (n * bits + 7) // 8


def pack_signs(g):
    """(n,) float -> (ceil(n/8),) uint8 of sign bits."""
    if on_gpu(g):
        from hpclm.compress import cuda
        return cuda.sign_pack(g)
    n = g.size
    out = numpy.empty(packed_size(n), numpy.uint8)
    tmp = numpy.empty(min(n, CHUNK), numpy.bool_)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        t = tmp[: hi - lo]
        numpy.signbit(g[lo:hi], out=t)
        out[lo // 8: packed_size(hi)] = numpy.packbits(t)
    return out


def unpack_signs(packed, n, scale=1.0, dtype=numpy.float32, out=None):
    """(ceil(n/8),) uint8 -> (n,) of +scale / -scale: the float bits are built directly,
    (bit << 31) | bits(|scale|), which beats a (256, 8) table lookup (SIGN_LUT) by ~3x."""
    if on_gpu(packed):
        from hpclm.compress import cuda
        return cuda.sign_unpack(packed, n, scale, dtype)
    dtype = numpy.dtype(dtype)
    if out is None or out.dtype != numpy.float32:
        out = numpy.empty(n, numpy.float32)
    o32 = out.view(numpy.uint32)
    magnitude = numpy.float32(abs(scale)).view(numpy.uint32)
    for lo in range(0, n, CHUNK):  # chunks stay in cache: unpack, widen, shift into the sign bit, or |scale|
        hi = min(n, lo + CHUNK)
        o = o32[lo:hi]
        numpy.copyto(o, numpy.unpackbits(packed[lo // 8: packed_size(hi)], count=hi - lo))
        numpy.left_shift(o, numpy.uint32(31), out=o)
        numpy.bitwise_or(o, magnitude, out=o)
    if scale < 0:
        numpy.negative(out, out=out)
    return out.astype(dtype, copy=False)


def pack_codes(codes, bits):
    """(n,) uint8 codes < 2**bits -> (ceil(n*bits/8),) uint8, codes back to back, MSB first."""
    if on_gpu(codes):
        from hpclm.compress import cuda
        return cuda.pack_codes(codes, bits)
    n = codes.size
    if bits == 8:
        return codes.astype(numpy.uint8)
    if bits == 4:
        c = numpy.zeros(n + (n & 1), numpy.uint8)
        c[:n] = codes
        return (c[0::2] << 4) | c[1::2]
    planes = numpy.unpackbits(codes.astype(numpy.uint8)[:, None], axis=1)[:, 8 - bits:]
    return numpy.packbits(planes.reshape(-1))


def unpack_codes(packed, n, bits):
    """Inverse of pack_codes: (n,) uint8."""
    if on_gpu(packed):
        from hpclm.compress import cuda
        return cuda.unpack_codes(packed, n, bits)
    if bits == 8:
        return packed[:n]
    if bits == 4:
        out = numpy.empty(2 * packed.size, numpy.uint8)
        numpy.right_shift(packed, 4, out=out[0::2])
        numpy.bitwise_and(packed, 15, out=out[1::2])
        return out[:n]
    planes = numpy.unpackbits(packed)[: n * bits].reshape(n, bits)
    return numpy.packbits(planes, axis=1).reshape(n) >> (8 - bits)


def code_bits(count):
    """Bits for `count` distinct codes."""
    return max(1, int(count - 1).bit_length())
