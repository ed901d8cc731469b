"""Compiled CPU kernels of the compressors (Numba), beside cuda.py: one pass over the gradient each.

Imported only when hpclm.kernels.enabled(); every function here has a NumPy twin in the
compressor's own module with the same semantics, and the tests hold them to it (bit-identical
outputs, except ef_sign's mean |g|, a float64 sum in another order: the float32 scale agrees to
1 ulp, and powersgd's matrix products, which sum in another order than BLAS: within the
summation error bound). Parallel kernels cut the array into CHUNK-element chunks (a multiple of 8
and of the int8 block) or ROWS-row blocks of a matrix, run by `prange`; Numba's thread count
follows train.threads (hpclm.kernels.threads()); no result depends on it. Float arithmetic is
plain IEEE (no fastmath), so the compiled code rounds as NumPy does, except in powersgd's dot
products (reassociated so that they vectorise).

    packed bits / codes: element 0 is the MSB of byte 0 (np.packbits order), b-bit codes back to back
    rng: SplitMix64 of counter i + 1 of the stream key, top 24 bits * 2^-24 (hpclm.compress.rng)
"""
import math
import platform

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from hpclm import kernels

CHUNK = 1 << 16                   # elements per parallel task (multiple of 8 and of power-of-two blocks;
                                  # sparse_code's chunk, which scatter_compact relies on)

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = _U64(30), _U64(27), _U64(31), _U64(40)
_TWO_M24 = np.float32(2.0 ** -24)
_MASK32 = _U64(0xFFFFFFFF)

QSGD, TERNGRAD = 0, 1            # kinds of encode_codes


def _threads():
    if kernels.threads() > 0:
        numba.set_num_threads(min(kernels.threads(), numba.config.NUMBA_NUM_THREADS))


@njit(cache=True, inline="always")
def _tasks(n):
    return (n + CHUNK - 1) // CHUNK


def _output(out, n, dtype):
    """The caller's (n,) buffer when it has that size and dtype, else a new one."""
    return out if out is not None and out.dtype == dtype and out.size == n else np.empty(n, dtype)


# -- rng -----------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _state(key, i):
    """SplitMix64's state for counter i of stream `key`; counter i + 1's is this + _GOLDEN (loops
    over consecutive counters add it instead of multiplying: a 64-bit multiply is three on AVX2)."""
    return _U64(i + 1) * _GOLDEN + key


@njit(cache=True, inline="always")
def _mix(z):
    """SplitMix64's output for state z."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _hash(key, i):
    """rng.hash64's element i of stream `key`."""
    return _mix(_state(key, i))


@njit(cache=True, inline="always")
def _unit(h):
    """float32 in [0, 1) of a hash (rng.uniform's arithmetic)."""
    return np.float32(h >> _S40) * _TWO_M24


# -- signs ---------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _pack_bits(bits, shift, out):
    """Sign bits (bits[i] >> shift) into out (ceil(bits.size / 8),),
    the last byte zero-padded. Kernels index chunk slices from 0 (so Numba can drop negative-index
    wrap-around and vectorize)."""
    whole = bits.size // 8
    for j in range(whole):
        byte = np.int64(bits[8 * j] >> shift)
        for b in range(1, 8):
            byte = (byte << 1) | np.int64(bits[8 * j + b] >> shift)
        out[j] = byte
    if 8 * whole < bits.size:
        byte = np.int64(0)
        for i in range(8 * whole, 8 * whole + 8):
            byte = (byte << 1) | (np.int64(bits[i] >> shift) if i < bits.size else np.int64(0))
        out[whole] = byte


@njit(cache=True, parallel=True)
def _sign_pack(bits, shift, out):
    """bits: the float array viewed as unsigned ints (uint32, shift 31, or uint64, shift 63)."""
    n = bits.size
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        _pack_bits(bits[lo:hi], shift, out[lo // 8:(hi + 7) // 8])


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _sign_pack_abs(g, bits, shift, out):
    """Sign bits of g into out, and sum |g| (float64; reassociated, so not NumPy's order)."""
    n = g.size
    partial = np.zeros(_tasks(n), np.float64)
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        gc = g[lo:hi]
        total = 0.0
        for i in range(gc.size):
            total += abs(gc[i])
        partial[c] = total
        _pack_bits(bits[lo:hi], shift, out[lo // 8:(hi + 7) // 8])
    return partial.sum()


@njit(cache=True, parallel=True)
def _sign_unpack(packed, n, magnitude, flip, out32):
    """out32 (n,) uint32 float bits: ((bit << 31) | magnitude) ^ flip."""
    base = magnitude ^ flip
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        o, p = out32[lo:hi], packed[lo // 8:(hi + 7) // 8]
        whole = o.size // 8
        for j in range(whole):
            byte = np.uint32(p[j])
            for b in range(8):
                o[8 * j + b] = ((byte << np.uint32(24 + b)) & np.uint32(0x80000000)) ^ base
        for i in range(8 * whole, o.size):
            bit = np.uint32((p[i >> 3] >> (7 - (i & 7))) & 1)
            o[i] = (bit << np.uint32(31)) ^ base


@njit(cache=True, parallel=True)
def _subtract_copysign(acc, s):
    n = acc.size
    for c in prange(_tasks(n)):
        a = acc[c * CHUNK:min(n, c * CHUNK + CHUNK)]
        for i in range(a.size):
            a[i] = a[i] - math.copysign(s, a[i])


def pack_signs(g):
    """(n,) float -> (ceil(n/8),) uint8 sign bits (twin: bits.pack_signs)."""
    _threads()
    out = np.empty((g.size + 7) // 8, np.uint8)
    g = np.ascontiguousarray(g)
    if g.dtype == np.float32:
        _sign_pack(g.view(np.uint32), np.uint32(31), out)
    else:
        _sign_pack(g.astype(np.float64, copy=False).view(np.uint64), np.uint64(63), out)
    return out


def pack_signs_abs(g):
    """(packed signs, sum |g| as float): ef_sign's two passes in one."""
    _threads()
    out = np.empty((g.size + 7) // 8, np.uint8)
    g = np.ascontiguousarray(g)
    if g.dtype == np.float32:
        total = _sign_pack_abs(g, g.view(np.uint32), np.uint32(31), out)
    else:
        g = g.astype(np.float64, copy=False)
        total = _sign_pack_abs(g, g.view(np.uint64), np.uint64(63), out)
    return out, float(total)


def unpack_signs(packed, n, scale, out):
    """Into out (n,) float32: +|scale| for bit 0, -|scale| for bit 1, all negated if scale < 0
    (twin: bits.unpack_signs; negating a float flips its sign bit)."""
    _threads()
    magnitude = np.float32(abs(scale)).view(np.uint32)
    flip = np.uint32(0x80000000 if scale < 0 else 0)
    _sign_unpack(packed, int(n), magnitude, flip, out.view(np.uint32))
    return out


def subtract_scaled_sign(acc, scale):
    """acc -= copysign(scale, acc), in place (twin: signsgd.subtract_scaled_sign)."""
    _threads()
    _subtract_copysign(acc, acc.dtype.type(scale))


@njit(cache=True, parallel=True)
def _abs_max(g):
    """max float32(|g|) by the bit patterns (unsigned order = float order for |.|; NaN above inf)."""
    n = g.size
    partial = np.zeros(_tasks(n), np.uint32)
    for c in prange(_tasks(n)):
        partial[c] = _abs_max_bits(g[c * CHUNK:min(n, c * CHUNK + CHUNK)])
    return np.uint32(partial.max()).view(np.float32) if n else np.float32(0.0)


def abs_max(g):
    """max |g| as float32 (NaN if any element is NaN; 0 for an empty g): terngrad's m, as NumPy's
    abs(g).max() cast to float32 (rounding to float32 keeps the order, so max and cast commute)."""
    _threads()
    return _abs_max(np.ascontiguousarray(g))


# -- int8 ----------------------------------------------------------------------------------------
@njit(cache=True)
def _abs_max_bits(g):
    """The largest bit pattern of float32(|g[i]|) (a NaN beats every number)."""
    m = np.uint32(0)
    for i in range(g.size):
        k = np.float32(abs(g[i])).view(np.uint32)
        m = k if k > m else m
    return m


@njit(cache=True, parallel=True)
def _int8_quantize(g, block, q, scales):
    """Per block: m = max float32(|g|) (by bit patterns: a NaN wins), scale = m / 127,
    q = rint(float32(g * (1 / scale))) (0 when scale is 0), as int8.int8_quantize."""
    n = g.size
    nb = scales.size
    per = max(1, CHUNK // block)
    for c in prange((nb + per - 1) // per):
        for b in range(c * per, min(nb, c * per + per)):
            lo, hi = b * block, min(n, b * block + block)
            gb, qb = g[lo:hi], q[lo:hi]
            sc = np.uint32(_abs_max_bits(gb)).view(np.float32) / np.float32(127.0)
            scales[b] = sc
            inv = np.float32(1.0) / sc if sc != 0 else np.float32(0.0)
            for i in range(gb.size):
                qb[i] = np.int8(np.rint(np.float32(gb[i] * inv)))


@njit(cache=True, parallel=True)
def _int8_dequantize(q, scales, block, out):
    n = q.size
    nb = scales.size
    per = max(1, CHUNK // block)
    for c in prange((nb + per - 1) // per):
        for b in range(c * per, min(nb, c * per + per)):
            lo, hi = b * block, min(n, b * block + block)
            qb, ob = q[lo:hi], out[lo:hi]
            s = scales[b]
            for i in range(qb.size):
                ob[i] = np.float32(qb[i]) * s


def int8_quantize(g, block):
    """(q int8 (n,), scales float32 (ceil(n/block),)) (twin: int8.int8_quantize)."""
    _threads()
    q = np.empty(g.size, np.int8)
    scales = np.empty(-(-g.size // block), np.float32)
    _int8_quantize(np.ascontiguousarray(g), block, q, scales)
    return q, scales


def int8_dequantize(q, scales, block, out):
    """Into out (n,) float32 (twin: int8.int8_dequantize)."""
    _threads()
    _int8_dequantize(q, scales, block, out)
    return out


# -- b-bit codes: qsgd, terngrad, kmeans ---------------------------------------------------------
_NEAREST_BLOCK = 4096                                          # elements: the block and its counts stay in L1


@njit(cache=True)
def _nearest(g, midpoints, out):
    """out[i] = (k - 1) - #{m in midpoints: g[i] <= m}, kmeans.nearest_codes' arithmetic (a NaN on
    either side compares false). midpoints is a tuple up to k = 64: its length is part of the type,
    so the loop over it unrolls inside the loop over g, which vectorises with the counts in 32-bit
    lanes (of a uint32 block: counted straight into uint8, each comparison would be narrowed on
    its own). Larger k come as an array (parallel regions take tuples of at most 100)."""
    count = np.empty(min(g.size, _NEAREST_BLOCK), np.uint32)
    k1 = np.uint32(len(midpoints))
    for lo in range(0, g.size, _NEAREST_BLOCK):
        gb, ob = g[lo:lo + _NEAREST_BLOCK], out[lo:lo + _NEAREST_BLOCK]
        for i in range(gb.size):
            x, at_or_above = gb[i], np.uint32(0)
            for m in midpoints:
                at_or_above += np.uint32(x <= m)
            count[i] = k1 - at_or_above
        for i in range(gb.size):
            ob[i] = np.uint8(count[i])


@njit(cache=True)
def _codes(g, offset, kind, f, s, key, out):
    """out[i] = the qsgd or terngrad code of g[i] (element offset + i of the gradient), its uniform
    drawn in the same loop (the RNG's arithmetic overlaps the loads of g)."""
    z = _state(key, offset)                                    # counter offset + i's state: z + i * _GOLDEN
    if kind == 0:                                              # qsgd: sign(g) min(floor(|g| f + u), s) + s
        sf = np.float32(s)
        for i in range(g.size):
            t = np.floor(np.float32(abs(g[i])) * f + _unit(_mix(z)))
            t = t if t < sf else sf
            out[i] = np.uint8(np.float32(math.copysign(t, g[i])) + sf)
            z += _GOLDEN
    elif kind == 1:                                            # terngrad: 1 + sign(g) [u < |g| f]
        for i in range(g.size):
            keep = np.int64(_unit(_mix(z)) < np.float32(abs(g[i])) * f)
            neg = np.int64(math.copysign(1.0, g[i]) < 0)
            out[i] = np.uint8(1 + keep - 2 * (keep & neg))
            z += _GOLDEN


@njit(cache=True, inline="always")
def _six_bit_unit(codes, j):
    """The three bytes of 6-bit codes 4j .. 4j + 3 (MSB first)."""
    a, b, c, d = codes[4 * j], codes[4 * j + 1], codes[4 * j + 2], codes[4 * j + 3]
    return np.uint8((a << 2) | (b >> 4)), np.uint8(((b & 15) << 4) | (c >> 2)), np.uint8(((c & 3) << 6) | d)


@njit(cache=True)
def _pack(codes, bits, out):
    """codes (8 * groups,) at `bits` bits each, eight per 8*bits-bit group, into out (MSB first);
    whole codes per byte (bits 2, 4) byte by byte, a loop per width (it vectorises)."""
    if bits == 4:
        for j in range(min(out.size, codes.size // 2)):
            out[j] = (codes[2 * j] << 4) | codes[2 * j + 1]
        return
    if bits == 2:
        for j in range(min(out.size, codes.size // 4)):
            out[j] = (codes[4 * j] << 6) | (codes[4 * j + 1] << 4) | (codes[4 * j + 2] << 2) | codes[4 * j + 3]
        return
    if bits == 6:                                               # four codes in three bytes
        whole = min(codes.size // 4, out.size // 3)
        for j in range(whole):
            out[3 * j], out[3 * j + 1], out[3 * j + 2] = _six_bit_unit(codes, j)
        if 3 * whole < out.size:                                # the first bytes of a last, partial unit
            last = _six_bit_unit(codes, whole)
            for t in range(out.size - 3 * whole):
                out[3 * whole + t] = last[t]
        return
    for j in range(codes.size // 8):
        word = np.uint64(0)
        for b in range(8):
            word = (word << np.uint64(bits)) | np.uint64(codes[8 * j + b])
        word <<= np.uint64(64 - 8 * bits)
        for b in range(bits):
            k = j * bits + b
            if k < out.size:
                out[k] = np.uint8((word >> np.uint64(56 - 8 * b)) & np.uint64(0xFF))


@njit(cache=True, parallel=True)
def _encode_codes(g, kind, f, s, key, bits, out):
    """qsgd / terngrad codes of g packed at `bits` bits (bits.pack_codes), chunk by chunk through a
    cached buffer."""
    n = g.size
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        codes = np.zeros((hi - lo + 7) // 8 * 8, np.uint8)      # zero-padded to whole groups
        _codes(g[lo:hi], lo, kind, f, s, key, codes)
        _pack(codes, bits, out[lo // 8 * bits:min(out.size, (hi + 7) // 8 * bits)])


@njit(cache=True, parallel=True)
def _encode_nearest(g, midpoints, bits, out):
    """kmeans codes of g packed at `bits` bits, as _encode_codes."""
    n = g.size
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        codes = np.zeros((hi - lo + 7) // 8 * 8, np.uint8)
        _nearest(g[lo:hi], midpoints, codes)
        _pack(codes, bits, out[lo // 8 * bits:min(out.size, (hi + 7) // 8 * bits)])


@njit(cache=True, parallel=True)
def _decode_codes(packed, n, bits, table, out):
    """out[i] = table[code i] for the codes packed at `bits` bits."""
    mask = np.uint64((1 << bits) - 1)
    for c in prange(_tasks(n)):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        o, p = out[lo:hi], packed[lo // 8 * bits:min(packed.size, (hi + 7) // 8 * bits)]
        for j in range((o.size + 7) // 8):
            word = np.uint64(0)
            for b in range(bits):
                k = j * bits + b
                word = (word << np.uint64(8)) | (np.uint64(p[k]) if k < p.size else np.uint64(0))
            if 8 * j + 8 <= o.size:
                for b in range(8):
                    o[8 * j + b] = table[(word >> np.uint64(bits * (7 - b))) & mask]
            else:
                for b in range(o.size - 8 * j):
                    o[8 * j + b] = table[(word >> np.uint64(bits * (7 - b))) & mask]


@njit(cache=True, parallel=True)
def _decode_bytes(packed, words, out64):
    """out64 (m * w,) uint64 <- words[packed[j]] (w uint64 each) for the m = packed.size bytes: a
    byte's decoded values as w whole words (one 8-byte store for two float32 codes of 4 bits)."""
    m, w = packed.size, words.shape[1]
    per = CHUNK // 8
    for c in prange((m + per - 1) // per):
        lo, hi = c * per, min(m, c * per + per)
        p, o = packed[lo:hi], out64[lo * w:hi * w]              # slices from 0: contiguous stores, no scatter
        if w == 1:                                  # a loop per width: a loop of w inside runs 2-3x slower
            column = words[:, 0]
            for j in range(p.size):
                o[j] = column[p[j]]
        elif w == 2:
            for j in range(p.size):
                o[2 * j] = words[p[j], 0]
                o[2 * j + 1] = words[p[j], 1]
        else:
            for j in range(p.size):
                for b in range(w):
                    o[j * w + b] = words[p[j], b]


@njit(cache=True, inline="always")
def _six_bit_codes(p, k):
    """The four 6-bit codes of 3-byte unit k of p (MSB first)."""
    x = (np.uint32(p[3 * k]) << np.uint32(16)) | (np.uint32(p[3 * k + 1]) << np.uint32(8)) | np.uint32(p[3 * k + 2])
    return x >> np.uint32(18), (x >> np.uint32(12)) & np.uint32(63), (x >> np.uint32(6)) & np.uint32(63), x & np.uint32(63)


@njit(cache=True, parallel=True)
def _decode_six(packed, units, table, out):
    """out (4 units,) <- table[6-bit code], four codes in each of the `units` 3-byte units of packed
    (the 64-entry table stays in L1 beside the streams)."""
    per = CHUNK // 4
    for c in prange((units + per - 1) // per):
        lo, hi = c * per, min(units, c * per + per)
        p, o = packed[3 * lo:3 * hi], out[4 * lo:4 * hi]       # slices from 0: contiguous, no scatter
        for k in range(hi - lo):
            a, b, d, e = _six_bit_codes(p, k)
            o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3] = table[a], table[b], table[d], table[e]


@njit(cache=True, parallel=True)
def _decode_six_affine(packed, units, offset, scale, out):
    """out (4 units,) <- (code - offset) * scale in out's dtype, for the 6-bit codes of packed:
    arithmetic instead of table loads, so the loop vectorises."""
    per = CHUNK // 4
    for c in prange((units + per - 1) // per):
        lo, hi = c * per, min(units, c * per + per)
        p, o = packed[3 * lo:3 * hi], out[4 * lo:4 * hi]
        for k in range(hi - lo):
            a, b, d, e = _six_bit_codes(p, k)
            o[4 * k] = (o.dtype.type(a) - offset) * scale
            o[4 * k + 1] = (o.dtype.type(b) - offset) * scale
            o[4 * k + 2] = (o.dtype.type(d) - offset) * scale
            o[4 * k + 3] = (o.dtype.type(e) - offset) * scale


def encode_codes(g, kind, bits, f, s, key):
    """(ceil(n*bits/8),) uint8: QSGD or TERNGRAD codes, packed (twins: qsgd.qsgd_codes,
    terngrad.terngrad_codes, each followed by bits.pack_codes)."""
    _threads()
    out = np.empty((g.size * bits + 7) // 8, np.uint8)
    _encode_codes(np.ascontiguousarray(g), kind, np.float32(f), int(s), np.uint64(key), int(bits), out)
    return out


def encode_nearest(g, midpoints, bits):
    """(ceil(n*bits/8),) uint8: the codes of the nearest centroids, packed (twin: kmeans.nearest_codes
    then bits.pack_codes); midpoints (k - 1,) float32. A kernel is compiled (and cached) per k."""
    _threads()
    out = np.empty((g.size * bits + 7) // 8, np.uint8)
    midpoints = np.ascontiguousarray(midpoints, np.float32)
    _encode_nearest(np.ascontiguousarray(g), tuple(midpoints) if midpoints.size < 64 else midpoints, int(bits), out)
    return out


def decode_codes(packed, n, bits, table, out=None):
    """(n,) of table's dtype: table[code] for each packed code (twins: bits.unpack_codes and the
    compressors' decompress arithmetic, which the caller folds into `table`, (2**bits,))."""
    _threads()
    out = _output(out, n, table.dtype)
    per = 8 // bits if 8 % bits == 0 else 0                      # codes per byte, when whole
    if per and per * table.itemsize % 8 == 0 and n >= per:       # a byte decodes to whole words
        whole = n // per
        shifts = np.arange(8 - bits, -1, -bits)                   # (per,): code j of a byte, MSB first
        values = table[(np.arange(256)[:, None] >> shifts) & ((1 << bits) - 1)]   # (256, per)
        _decode_bytes(packed[:whole], np.ascontiguousarray(values).view(np.uint64),
                      out[:whole * per].view(np.uint64))
        if whole * per < n:                                       # the last byte's first codes
            out[whole * per:] = values[packed[whole], :n - whole * per]
    elif bits == 6 and n >= 4:                                      # four codes in three bytes
        units = n // 4
        _decode_six(packed, units, table, out[:units * 4])
        if units * 4 < n:                                           # the last unit's first codes
            _decode_codes(packed[3 * units:], n - units * 4, 6, table, out[units * 4:])
    else:
        _decode_codes(packed, int(n), int(bits), table, out)
    return out


def decode_affine(packed, n, bits, offset, scale, dtype, out=None):
    """(n,) of dtype: (code - offset) * scale for each packed code, in dtype's arithmetic (twins:
    qsgd's and terngrad's decompress, codes.astype(dtype) - offset, times scale)."""
    dtype = np.dtype(dtype)
    offset, scale = dtype.type(offset), dtype.type(scale)
    table = np.arange(1 << bits).astype(dtype)                   # (2**bits,): the same arithmetic per code
    table -= offset
    table *= scale
    if bits != 6 or n < 4:
        return decode_codes(packed, n, bits, table, out)
    _threads()
    out = _output(out, n, dtype)
    units = n // 4
    _decode_six_affine(packed, units, offset, scale, out[:units * 4])
    if units * 4 < n:                                             # the last unit's first codes
        _decode_codes(packed[3 * units:], n - units * 4, 6, table, out[units * 4:])
    return out


# -- 16-bit floats -------------------------------------------------------------------------------
_REBIAS = _U64((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)


@njit(cache=True, inline="always")
def _f2h(x):
    """float32 -> IEEE half bits, round to nearest even (half._float_to_half), branch-free."""
    f = np.uint64(np.float32(x).view(np.uint32))
    sign = (f >> np.uint64(16)) & np.uint64(0x8000)
    a = f & np.uint64(0x7FFFFFFF)
    normal = ((a + _REBIAS + ((a >> np.uint64(13)) & np.uint64(1))) & _MASK32) >> np.uint64(13)
    small = np.uint64(np.int64(np.rint(min(np.float32(abs(np.float32(x))), np.float32(1.0)) * np.float32(2.0 ** 24))))
    special = np.uint64(0x7E00) if a > np.uint64(255 << 23) else np.uint64(0x7C00)
    h = small if a < np.uint64(113 << 23) else normal                      # half subnormals and zero
    h = special if a >= np.uint64((127 + 16) << 23) else h                  # >= 65536, inf, NaN
    return np.uint16(h | sign)


@intrinsic
def _f2h_instruction(typingctx, x):
    """float32 -> IEEE half bits by LLVM's fptrunc (F16C's vcvtps2ph on x86, fcvt on ARM):
    round to nearest even like _f2h; NaNs keep their sign and top payload bits (_f2h_hardware
    maps them to 0x7E00)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@njit(cache=True, inline="always")
def _f2h_hardware(x):
    """_f2h's bits by the conversion instruction (every NaN -> sign | 0x7E00, as _f2h)."""
    h = _f2h_instruction(np.float32(x))
    nan = (np.float32(x).view(np.uint32) & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return (h & np.uint16(0x8000)) | np.uint16(0x7E00) if nan else h


BF16, HALF_SOFTWARE, HALF_HARDWARE = 0, 1, 2           # kinds of the 16-bit kernels


def _half_instructions():
    """Whether LLVM may lower fptrunc to half to an instruction (x86 with F16C, 64-bit ARM)."""
    return platform.machine().lower() in ("aarch64", "arm64") or \
        "+f16c" in llvmlite.binding.get_host_cpu_features().flatten().split(",")


HALF = HALF_HARDWARE if _half_instructions() else HALF_SOFTWARE   # the half kind to_16 and sum_16 use


@njit(cache=True, inline="always")
def _h2f(h):
    """IEEE half bits -> float32, exactly (half._half_to_float)."""
    u = np.uint32(h)
    magnitude = u & np.uint32(0x7FFF)
    if magnitude >= np.uint32(0x7C00):
        v = np.uint32(np.uint32(0x7F800000) | (magnitude << np.uint32(13))).view(np.float32)
    else:
        v = np.uint32(magnitude << np.uint32(13)).view(np.float32) * np.float32(2.0 ** 112)
    return -v if u & np.uint32(0x8000) else v


@njit(cache=True, inline="always")
def _f2bf(x):
    u = np.uint64(np.float32(x).view(np.uint32))
    if (u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000):
        return np.uint16(0x7FC0)
    return np.uint16(((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) & _MASK32) >> np.uint64(16))


@njit(cache=True, inline="always")
def _bf2f(h):
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


@njit(cache=True, parallel=True)
def _to_16(x, kind, out):
    n = x.size
    for c in prange(_tasks(n)):
        xc, oc = x[c * CHUNK:min(n, c * CHUNK + CHUNK)], out[c * CHUNK:min(n, c * CHUNK + CHUNK)]
        if kind == BF16:
            for i in range(xc.size):
                oc[i] = _f2bf(xc[i])
        elif kind == HALF_HARDWARE:
            for i in range(xc.size):
                oc[i] = _f2h_hardware(xc[i])
        else:
            for i in range(xc.size):
                oc[i] = _f2h(xc[i])


@njit(cache=True, parallel=True)
def _from_16(h, bf16, out):
    n = h.size
    for c in prange(_tasks(n)):
        hc, oc = h[c * CHUNK:min(n, c * CHUNK + CHUNK)], out[c * CHUNK:min(n, c * CHUNK + CHUNK)]
        if bf16:
            for i in range(hc.size):
                oc[i] = _bf2f(hc[i])
        else:
            for i in range(hc.size):
                oc[i] = _h2f(hc[i])


@njit(cache=True, parallel=True)
def _sum_16(acc, other, kind):
    n = acc.size
    for c in prange(_tasks(n)):
        a, b = acc[c * CHUNK:min(n, c * CHUNK + CHUNK)], other[c * CHUNK:min(n, c * CHUNK + CHUNK)]
        if kind == BF16:
            for i in range(a.size):
                a[i] = _f2bf(_bf2f(a[i]) + _bf2f(b[i]))
        elif kind == HALF_HARDWARE:
            for i in range(a.size):
                a[i] = _f2h_hardware(_h2f(a[i]) + _h2f(b[i]))
        else:
            for i in range(a.size):
                a[i] = _f2h(_h2f(a[i]) + _h2f(b[i]))


def to_16(x, bf16):
    """float -> uint16 bits of bf16 (bf16=True) or IEEE half (twins: bf16.to_bf16_bits, half.float_to_half)."""
    _threads()
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    _to_16(flat, BF16 if bf16 else HALF, out)
    return out.reshape(np.shape(x))


def from_16(h, bf16, out=None):
    """uint16 bits of bf16 / half -> float32 (twins: bf16.from_bf16_bits, half.half_to_float)."""
    _threads()
    flat = np.ascontiguousarray(h).view(np.uint16).reshape(-1)
    out = _output(out, flat.size, np.float32)
    _from_16(flat, bf16, out.reshape(-1))
    return out.reshape(np.shape(h))


def sum_16(acc, other, bf16):
    """acc <- round16(float32(acc) + float32(other)), in place (twins: bf16.bf16_sum, half.add_halves)."""
    _threads()
    _sum_16(acc.reshape(-1).view(np.uint16), np.ascontiguousarray(other).reshape(-1).view(np.uint16),
            BF16 if bf16 else HALF)


# -- sparse --------------------------------------------------------------------------------------
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.int64)
_POSITIONS = np.array([[b for b in range(8) if v >> (7 - b) & 1] + [0] * (8 - bin(v).count("1"))
                       for v in range(256)], np.int32)          # (256, 8): the marked bits of byte v


@njit(cache=True, inline="always")
def _marked_positions(m, base, out_idx, k):
    """The positions base + 8j + b of the marks in bytes m, ascending, into out_idx[k:]: for each
    nonzero byte (most are zero), its table positions. Returns k plus their number."""
    for j in range(m.size):
        v = m[j]
        if v:
            for q in range(_POPCOUNT[v]):
                out_idx[k + q] = base + 8 * j + _POSITIONS[v, q]
            k += _POPCOUNT[v]
    return k


@njit(cache=True, parallel=True)
def _mark_at_least(bits, magnitude, floor, g, marks, counts, idx_s, val_s):
    """marks (ceil(n/8),) uint8: bit (7 - b) of byte j set where (bits[8j + b] & magnitude) >= floor,
    i.e. |g| >= the float whose bits are floor (unsigned order is |float| order; a NaN is above
    every floor); counts[c]: the marks in chunk c. One vectorised pass, like _pack_bits. A chunk
    with at most idx_s.shape[1] marks also puts their indices and values into row c of idx_s and
    val_s while it is in cache (gathered from memory later, the values cost a miss each)."""
    n = bits.size
    for c in prange(counts.size):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        b, m = bits[lo:hi], marks[lo // 8:(hi + 7) // 8]
        whole = b.size // 8
        for j in range(whole):
            byte = np.int64((b[8 * j] & magnitude) >= floor)
            for k in range(1, 8):
                byte = (byte << 1) | np.int64((b[8 * j + k] & magnitude) >= floor)
            m[j] = byte
        if 8 * whole < b.size:
            byte = np.int64(0)
            for i in range(8 * whole, 8 * whole + 8):
                byte = (byte << 1) | (np.int64((b[i] & magnitude) >= floor) if i < b.size else np.int64(0))
            m[whole] = byte
        total = 0
        for j in range(m.size):
            total += _POPCOUNT[m[j]]
        counts[c] = total
        if total <= idx_s.shape[1]:
            rows = idx_s[c]
            _marked_positions(m, lo, rows, 0)
            for q in range(total):
                val_s[c, q] = g[rows[q]]


@njit(cache=True, parallel=True)
def _marked_indices(marks, starts, out_idx):
    """The marked indices of chunk c, ascending, into out_idx[starts[c]:]."""
    for c in prange(starts.size):
        _marked_positions(marks[c * (CHUNK // 8):min(marks.size, (c + 1) * (CHUNK // 8))], c * CHUNK, out_idx,
                          starts[c])


@njit(cache=True, parallel=True)
def _concatenate_rows(idx_s, val_s, counts, starts, out_idx, out_val):
    """Row c's first counts[c] entries of idx_s and val_s into out_idx and out_val at starts[c]."""
    for c in prange(counts.size):
        lo, hi = starts[c], starts[c] + counts[c]
        oi, ov, ri, rv = out_idx[lo:hi], out_val[lo:hi], idx_s[c], val_s[c]   # slices from 0: no scatter
        for q in range(hi - lo):
            oi[q] = ri[q]
            ov[q] = rv[q]


def _indices_of_marks(marks, counts, dtype):
    """(sum counts,) of `dtype`: the marked positions, ascending, of a bitmap whose chunk c holds
    counts[c] marks (what _mark_at_least and _mark_hash_below write)."""
    starts = np.zeros(counts.size, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])                      # (chunks,) where chunk c's indices go
    idx = np.empty(int(counts.sum()), dtype)
    _marked_indices(marks, starts, idx)
    return idx


@njit(cache=True, parallel=True)
def _take(g, idx, out):
    """out[i] = g[idx[i]] (a loop of its own: with the index scan it ran at half the speed)."""
    for c in prange(_tasks(idx.size)):
        for i in range(c * CHUNK, min(idx.size, c * CHUNK + CHUNK)):
            out[i] = g[idx[i]]


def take(g, idx):
    """g[idx] for ascending or random int indices, both threads gathering (twin: NumPy's g[idx])."""
    _threads()
    out = np.empty(idx.size, g.dtype)
    _take(np.ascontiguousarray(g), np.ascontiguousarray(idx), out)
    return out


_COLLECT = CHUNK // 16             # marked elements a chunk collects while it is marked


def _collected(counts, idx_s, val_s):
    """(indices, values) of every chunk's collection in chunk order, or None when some chunk had
    more marks than it could collect."""
    if counts.size and counts.max() > idx_s.shape[1]:
        return None
    starts = np.zeros(counts.size, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])                           # (chunks,) where chunk c's elements go
    total = int(counts.sum())
    out_idx, out_val = np.empty(total, idx_s.dtype), np.empty(total, val_s.dtype)
    _concatenate_rows(idx_s, val_s, counts, starts, out_idx, out_val)
    return out_idx, out_val


def select_abs(g, t, strict):
    """(indices int32 ascending, values) of the elements with |g| >= t (> t if strict); None if g
    holds a NaN or t is not a number >= 0 (NumPy's comparisons then decide: the caller's twin).
    A pass marking |g| >= t in a bitmap (compared as bit patterns) that also collects each chunk's
    marked elements when there are at most CHUNK / 16 of them, then the chunks' collections in
    order (or, when some chunk holds more, a pass turning marks into indices, and a gather)."""
    _threads()
    g = np.ascontiguousarray(g)
    t = g.dtype.type(t)
    if not t >= 0:
        return None
    unsigned = np.uint32 if g.dtype.itemsize == 4 else np.uint64
    floor = unsigned(abs(t).view(unsigned)) + unsigned(strict)      # |g| > t: bits >= t's bits + 1
    magnitude = unsigned(np.iinfo(unsigned).max >> 1)                # all but the sign bit
    marks = np.empty((g.size + 7) // 8, np.uint8)
    counts = np.empty(_tasks(g.size), np.int64)
    idx_s, val_s = np.empty((counts.size, _COLLECT), np.int32), np.empty((counts.size, _COLLECT), g.dtype)
    _mark_at_least(g.view(unsigned), magnitude, floor, g, marks, counts, idx_s, val_s)
    collected = _collected(counts, idx_s, val_s)
    if collected is not None:
        out_idx, out_val = collected
    else:
        out_idx = _indices_of_marks(marks, counts, np.int32)
        out_val = take(g, out_idx)
    if np.isnan(out_val).any():                                       # a NaN is marked whatever t is
        return None
    return out_idx, out_val


_TOP_BITS = 12                     # log2 of the bins of top_k's histogram


@njit(cache=True)
def _top_k(bits, k, out):
    """out (k,) <- the positions, ascending, of the k largest of the unsigned ints bits (top_k's:
    magnitude bit patterns, which order as the floats do), ties at the k-th by lowest position.
    A histogram of (x - min) over 2^_TOP_BITS bins spanning [min, max] finds the bin holding the
    k-th largest, a sort of that bin's members finds it, t, and a last pass keeps what is above t
    and the first ties. 0 < k <= bits.size."""
    lo, hi = bits[0], bits[0]
    for i in range(bits.size):
        lo, hi = min(lo, bits[i]), max(hi, bits[i])
    shift, span = 0, (hi - lo) >> _TOP_BITS
    while span:                                                # (hi - lo) >> shift < 2^_TOP_BITS
        shift, span = shift + 1, span >> 1
    shift = bits.dtype.type(shift)
    hist = np.zeros(1 << _TOP_BITS, np.int64)
    for i in range(bits.size):
        hist[(bits[i] - lo) >> shift] += 1
    above, b = 0, (1 << _TOP_BITS) - 1                         # elements in the bins above bin b
    while above + hist[b] < k:
        above += hist[b]
        b -= 1
    members, j = np.empty(hist[b], bits.dtype), 0
    for i in range(bits.size):
        if (bits[i] - lo) >> shift == b:
            members[j] = bits[i]
            j += 1
    members.sort()
    t = members[members.size - (k - above)]                    # the k-th largest
    ties = k - above - np.sum(members > t)                     # the elements equal to t that are kept
    j = 0
    for i in range(bits.size):
        x = bits[i]
        if x > t or (x == t and ties > 0):
            ties -= x == t
            out[j] = i
            j += 1


def top_k(values, k):
    """(k,) int64: the positions, ascending, of the k largest |values| (no NaN), ties by lowest
    position (twin: topk.select_topk of np.abs(values))."""
    unsigned = np.uint32 if values.dtype.itemsize == 4 else np.uint64
    return largest_patterns(np.ascontiguousarray(values).view(unsigned) & unsigned(np.iinfo(unsigned).max >> 1), k)


def largest_patterns(bits, k):
    """(k,) int64: the positions, ascending, of the k largest of the unsigned ints bits, ties by
    lowest position (twin: topk.select_topk); 0 <= k <= bits.size."""
    if not 0 <= k <= bits.size:
        raise ValueError(f"largest_patterns: k = {k} outside [0, {bits.size}]")
    out = np.empty(k, np.int64)
    if k:
        _top_k(np.ascontiguousarray(bits), int(k), out)
    return out


@njit(cache=True, parallel=True)
def _sample_abs(g, key, out):
    """out[i] = |g[hash_i mod n]|, hash_i = rng.hash64(key, m)[i]: many independent loads at once."""
    n, m, per = _U64(g.size), out.size, 4096                   # a sample is small: smaller tasks
    for c in prange((m + per - 1) // per):
        for i in range(c * per, min(m, c * per + per)):
            out[i] = abs(g[_hash(key, i) % n])


def sample_abs(g, key, m):
    """(m,) |g| at the hashed positions rng.hash64(key, m) % n (twin: the same NumPy indexing)."""
    _threads()
    out = np.empty(m, g.dtype)
    _sample_abs(np.ascontiguousarray(g), np.uint64(key), out)
    return out


_GOLDEN8 = _U64(8 * int(_GOLDEN) % (1 << 64))                  # the state step of eight counters


@njit(cache=True, parallel=True)
def _mark_hash_below(key, n, cut, marks, counts, idx_s, hash_s):
    """marks as _mark_at_least's, for hash(i) < cut over the counters i < n, and counts per chunk:
    each byte's eight hashes compared and shifted into it in registers (the loop over bytes
    vectorises: eight states per lane, eight counters apart). A chunk with at most
    idx_s.shape[1] marks also puts their counters and hashes into row c of idx_s and hash_s."""
    for c in prange(counts.size):
        lo, hi = c * CHUNK, min(n, c * CHUNK + CHUNK)
        m = marks[lo // 8:(hi + 7) // 8]
        whole = (hi - lo) // 8
        first = _state(key, lo)                                 # counter 8j's state, j = 0, 1, ...
        total = np.uint32(0)
        for j in range(whole):
            z, byte = first, np.uint32(0)
            for _ in range(8):
                below = np.uint32(_mix(z) < cut)
                byte = (byte << np.uint32(1)) | below
                total += below
                z += _GOLDEN
            m[j] = np.uint8(byte)
            first += _GOLDEN8
        if 8 * whole < hi - lo:                                 # the last byte, zero-padded
            byte = np.uint32(0)
            for i in range(lo + 8 * whole, lo + 8 * whole + 8):
                below = np.uint32(_hash(key, i) < cut) if i < hi else np.uint32(0)
                byte = (byte << np.uint32(1)) | below
                total += below
            m[whole] = np.uint8(byte)
        counts[c] = total
        if total <= idx_s.shape[1]:
            rows = idx_s[c]
            _marked_positions(m, lo, rows, 0)
            for q in range(total):
                hash_s[c, q] = _hash(key, rows[q])


@njit(cache=True, parallel=True)
def _hashes_at(key, idx, out):
    for c in prange(_tasks(idx.size)):
        for i in range(c * CHUNK, min(idx.size, c * CHUNK + CHUNK)):
            out[i] = _hash(key, idx[i])


def hashes_below(key, n, cut):
    """(indices int64 ascending, their hashes uint64) of the counters of stream `key` (hash64(key,
    n)) whose hash is below cut: randomk's candidates without the (n,) uint64 hash array."""
    _threads()
    key, cut = np.uint64(key), np.uint64(cut)
    marks = np.empty((n + 7) // 8, np.uint8)
    counts = np.empty(_tasks(n), np.int64)
    idx_s, hash_s = np.empty((counts.size, _COLLECT), np.int64), np.empty((counts.size, _COLLECT), np.uint64)
    _mark_hash_below(key, int(n), cut, marks, counts, idx_s, hash_s)
    collected = _collected(counts, idx_s, hash_s)
    if collected is not None:
        return collected
    idx = _indices_of_marks(marks, counts, np.int64)
    hashes = np.empty(idx.size, np.uint64)
    _hashes_at(key, idx, hashes)
    return idx, hashes


@njit(cache=True, parallel=True)
def _scatter_chunks(out, local, values, starts):
    """Chunk c of out zeroed, then values[starts[c]:starts[c + 1]] written at their positions local
    within the chunk, while the chunk is still in cache: out is written once, by every thread."""
    n = out.size
    for c in prange(_tasks(n)):
        o = out[c * CHUNK:min(n, c * CHUNK + CHUNK)]
        for i in range(o.size):
            o[i] = 0
        for j in range(starts[c], starts[c + 1]):
            o[np.int64(local[j])] = values[j]


def scatter(values, indices, n, dtype, out=None):
    """Dense (n,) of `dtype`, values at indices (ascending), zeros elsewhere (twin: topk.scatter)."""
    _threads()
    out = _output(out, n, dtype)
    starts = np.searchsorted(indices, np.arange(_tasks(n) + 1) * CHUNK)     # (chunks + 1,)
    _scatter_chunks(out, indices & (CHUNK - 1), values, starts)               # positions within the chunk
    return out


def scatter_compact(payload, n, dtype, out=None):
    """Dense (n,) from a compact sparse payload (twin: sparse_code.decode then topk.scatter); its
    chunks are this module's CHUNK, its uint16 indices the positions within them."""
    _threads()
    v16, scale, local, counts = payload
    out = _output(out, n, dtype)
    starts = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=starts[1:])                                        # (chunks + 1,)
    values = from_16(v16, bf16=False)                                        # (k,) float32
    values *= np.float32(scale[0])
    _scatter_chunks(out, local, values, starts)
    return out


# -- powersgd: the skinny products of a matrix with rank-r factors --------------------------------
ROWS = 256                        # matrix rows per parallel task of the products
_SUM_FLAGS = {"reassoc", "contract"}  # lets LLVM vectorise the dot products (sums in another order than BLAS)


@njit(cache=True, inline="always", fastmath=_SUM_FLAGS)
def _dot(a, b, zero):
    s = zero
    for j in range(a.size):
        s += a[j] * b[j]
    return s


@njit(cache=True, parallel=True, fastmath=_SUM_FLAGS)
def _project(m, qt, out, g, accumulate, zero):
    """out (n, r) = M qt^T, M = m (n, k), qt (r, k); with accumulate, first m += g row by row (the
    error feedback e += g: the row is still in cache for its products)."""
    n = m.shape[0]
    r = qt.shape[0]
    for t in prange((n + ROWS - 1) // ROWS):
        for i in range(t * ROWS, min(n, t * ROWS + ROWS)):
            row = m[i]
            if accumulate:
                gi = g[i]
                for j in range(row.size):
                    row[j] += gi[j]
            for c in range(r):
                out[i, c] = _dot(row, qt[c], zero)


@njit(cache=True, parallel=True)
def _project_t(m, p, partial):
    """partial[t] (r, k) = sum over the rows i of task t of p[i, c] * m[i, :]: M^T P by row blocks."""
    n = m.shape[0]
    r = p.shape[1]
    for t in prange(partial.shape[0]):
        acc = partial[t]
        acc[:] = 0
        for i in range(t * ROWS, min(n, t * ROWS + ROWS)):
            row = m[i]
            for c in range(r):
                pc = p[i, c]
                a = acc[c]
                for j in range(row.size):
                    a[j] += pc * row[j]


@njit(cache=True, parallel=True)
def _reconstruct(p, qt, out, e, subtract):
    """out (n, k) = p (n, r) @ qt (r, k); with subtract, e (n, k) -= out row by row."""
    n, k = out.shape
    r = p.shape[1]
    for t in prange((n + ROWS - 1) // ROWS):
        for i in range(t * ROWS, min(n, t * ROWS + ROWS)):
            o = out[i]
            o[:] = 0
            for c in range(r):
                pc = p[i, c]
                q = qt[c]
                for j in range(k):
                    o[j] += pc * q[j]
            if subtract:
                ei = e[i]
                for j in range(k):
                    ei[j] -= o[j]


def project(m, q, out, accumulate_from=None):
    """out (n, r) = m (n, k) @ q (k, r); with accumulate_from = g, m += g first (twin:
    powersgd.compute_p / accumulate_p). Sums in another order than BLAS: float round-off apart."""
    _threads()
    g = m if accumulate_from is None else accumulate_from
    _project(m, np.ascontiguousarray(q.T), out, g, accumulate_from is not None, m.dtype.type(0))
    return out


def project_t(m, p, out):
    """out (k, r) = m (n, k)^T @ p (n, r), by blocks of ROWS rows summed in block order (twin:
    powersgd.compute_q)."""
    _threads()
    partial = np.empty((-(-m.shape[0] // ROWS), p.shape[1], m.shape[1]), m.dtype)
    _project_t(m, np.ascontiguousarray(p), partial)
    out[...] = partial.sum(axis=0).T                # (tasks, r, k) -> (k, r), added in task order
    return out


def reconstruct(p, q, out, subtract_from=None):
    """out (n, k) = p (n, r) @ q (k, r)^T; then subtract_from -= out (twin: powersgd.approximate)."""
    _threads()
    e = out if subtract_from is None else subtract_from
    _reconstruct(np.ascontiguousarray(p), np.ascontiguousarray(q.T), out, e, subtract_from is not None)
    return out
