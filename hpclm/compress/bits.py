"""Bit packing shared by the sign and quantizing compressors (NumPy twins of kernels/sign.cu and
kernels/pack.cu). Conventions follow np.packbits (bitorder="big"): element 0 is the most
significant bit of byte 0. A sign bit is the float's IEEE sign bit (1 = negative, so -0.0 counts
as negative); an unpacked sign is +1 for bit 0 and -1 for bit 1. A b-bit code is stored MSB first,
codes back to back: element i occupies bits [i*b, (i+1)*b) of the stream.
"""
import numpy

from hpclm import kernels
from hpclm import xp as X

CHUNK = 1 << 18  # elements per chunk: temporaries stay in cache (a multiple of 8 and of common blocks)


def spans(n, size=CHUNK):
    """(lo, hi) of consecutive slices of at most `size` elements covering range(n)."""
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def on_gpu(a):
    return X.device == "gpu" and not isinstance(a, numpy.ndarray)


def compiled(a):
    """True when a is a NumPy array and the compiled CPU kernels (hpclm.compress.cpu) are on."""
    return isinstance(a, numpy.ndarray) and kernels.enabled()


def packed_size(n, bits=1):
    return (n * bits + 7) // 8


def pack_signs(g):
    """(n,) float -> (ceil(n/8),) uint8 of sign bits."""
    if on_gpu(g):
        from hpclm.compress import cuda
        return cuda.sign_pack(g)
    if compiled(g):
        from hpclm.compress import cpu
        return cpu.pack_signs(g)
    n = g.size
    out = numpy.empty(packed_size(n), numpy.uint8)
    tmp = numpy.empty(min(n, CHUNK), numpy.bool_)
    for lo, hi in spans(n):
        t = tmp[: hi - lo]
        numpy.signbit(g[lo:hi], out=t)
        out[lo // 8: packed_size(hi)] = numpy.packbits(t)
    return out


def unpack_signs(packed, n, scale=1.0, dtype=numpy.float32, out=None):
    """(ceil(n/8),) uint8 -> (n,) of +scale / -scale: the float bits are built directly,
    (bit << 31) | bits(|scale|), which beats a (256, 8) table lookup by ~3x."""
    if on_gpu(packed):
        from hpclm.compress import cuda
        return cuda.sign_unpack(packed, n, scale, dtype)
    dtype = numpy.dtype(dtype)
    if out is None or out.dtype != numpy.float32:
        out = numpy.empty(n, numpy.float32)
    if compiled(packed):
        from hpclm.compress import cpu
        return cpu.unpack_signs(packed, n, scale, out).astype(dtype, copy=False)
    o32 = out.view(numpy.uint32)
    magnitude = numpy.float32(abs(scale)).view(numpy.uint32)
    for lo, hi in spans(n):  # chunks stay in cache: unpack, widen, shift into the sign bit, or |scale|
        o = o32[lo:hi]
        numpy.copyto(o, numpy.unpackbits(packed[lo // 8: packed_size(hi)], count=hi - lo))
        numpy.left_shift(o, numpy.uint32(31), out=o)
        numpy.bitwise_or(o, magnitude, out=o)
    if scale < 0:
        numpy.negative(out, out=out)
    return out.astype(dtype, copy=False)


WORDS = CHUNK // 8     # groups of eight codes per chunk in pack_codes / unpack_codes


def pack_codes(codes, bits):
    """(n,) uint8 codes < 2**bits -> (ceil(n*bits/8),) uint8, codes back to back, MSB first.
    Eight codes make one 8*bits-bit group: they are shifted into a uint64 word, and the word's top
    `bits` bytes, big-endian, are the group's bytes (the last group zero-padded)."""
    if on_gpu(codes):
        from hpclm.compress import cuda
        return cuda.pack_codes(codes, bits)
    n = codes.size
    if bits == 8:
        return codes.astype(numpy.uint8)
    if bits == 4:                                                           # two codes per byte
        c = numpy.zeros(n + (n & 1), numpy.uint8)
        c[:n] = codes
        return (c[0::2] << 4) | c[1::2]
    groups = -(-n // 8)
    out = numpy.empty((groups, bits), numpy.uint8)                          # (groups, bits)
    for lo, hi in spans(groups, WORDS):
        c = codes[8 * lo: 8 * hi]
        if c.size < 8 * (hi - lo):                                          # the last, partial group
            c = numpy.concatenate([c, numpy.zeros(8 * (hi - lo) - c.size, numpy.uint8)])
        c = c.reshape(-1, 8)                                                # (g, 8)
        word = c[:, 0].astype(numpy.uint64)                                 # (g,)
        for j in range(1, 8):
            word <<= numpy.uint64(bits)
            word |= c[:, j]
        word <<= numpy.uint64(64 - 8 * bits)                                # codes in the top 8*bits bits
        out[lo:hi] = word.byteswap().view(numpy.uint8).reshape(-1, 8)[:, :bits]
    return out.reshape(-1)[:packed_size(n, bits)]


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
    groups = -(-n // 8)
    whole = packed[: groups * bits]
    if whole.size < groups * bits:                                          # the last group is partial
        whole = numpy.concatenate([whole, numpy.zeros(groups * bits - whole.size, numpy.uint8)])
    whole = whole.reshape(groups, bits)                                     # (groups, bits)
    out = numpy.empty((groups, 8), numpy.uint8)                             # (groups, 8)
    word_bytes = numpy.zeros((min(groups, WORDS), 8), numpy.uint8)          # big-endian words
    mask = numpy.uint64((1 << bits) - 1)
    for lo, hi in spans(groups, WORDS):
        wb = word_bytes[: hi - lo]
        wb[:, :bits] = whole[lo:hi]
        word = wb.view(">u8").reshape(-1).astype(numpy.uint64)              # (g,)
        word >>= numpy.uint64(64 - 8 * bits)
        for j in range(7, -1, -1):                                          # the last code is the lowest
            numpy.bitwise_and(word, mask, out=out[lo:hi, j], casting="unsafe")
            word >>= numpy.uint64(bits)
    return out.reshape(-1)[:n]


def code_bits(count):
    """Bits for `count` distinct codes."""
    return max(1, int(count - 1).bit_length())
