"""Compiled CPU kernels of the compressors (Numba), beside cuda.py: one pass over the gradient each.

Imported only when hpclm.kernels.enabled(); every function here has a NumPy twin in the
compressor's own module with the same semantics, and the tests hold them to it (bit-identical
outputs, except ef_sign's mean |g|, a float64 sum in another order: the float32 scale agrees to
1 ulp). Parallel kernels cut the array into CHUNK-element chunks (a multiple of 8 and of the
int8 block) run by `prange`; Numba's thread count follows train.threads (hpclm.kernels.threads()).
Float arithmetic is plain IEEE (no fastmath), so the compiled code rounds as NumPy does.

    packed bits / codes: element 0 is the MSB of byte 0 (np.packbits order), b-bit codes back to back
    rng: SplitMix64 of counter i + 1 of the stream key, top 24 bits * 2^-24 (hpclm.compress.rng)
"""
import math

import numba
import numpy as np
from numba import njit, prange

from hpclm import kernels

CHUNK = 1 << 16                   # elements per parallel task (multiple of 8 and of power-of-two blocks)

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = _U64(30), _U64(27), _U64(31), _U64(40)
_TWO_M24 = np.float32(2.0 ** -24)
_MASK32 = _U64(0xFFFFFFFF)

QSGD, TERNGRAD, KMEANS = 0, 1, 2  # kinds of encode_codes


def _threads():
    if kernels.threads() > 0:
        numba.set_num_threads(min(kernels.threads(), numba.config.NUMBA_NUM_THREADS))


@njit(cache=True, inline="always")
def _tasks(n):
    return (n + CHUNK - 1) // CHUNK


# -- rng -----------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _uniform(key, i):
    """float32 in [0, 1) of counter i of stream `key` (rng.uniform's element i)."""
    z = _U64(i + 1) * _GOLDEN + key
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return np.float32(z >> _S40) * _TWO_M24


# -- signs ---------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _sign_pack(bits, shift, out):
    """bits: the float array viewed as unsigned ints (uint32, shift 31, or uint64, shift 63)."""
    n = bits.size
    for c in prange(_tasks(n)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        for j in range(lo // 8, (hi + 7) // 8):
            byte = 0
            for b in range(8):
                i = 8 * j + b
                s = (bits[i] >> shift) & 1 if i < n else 0
                byte = (byte << 1) | s
            out[j] = byte


@njit(cache=True, parallel=True)
def _sign_pack_abs(g, out):
    """Sign bits of g into out, and sum |g| (float64, per chunk then over chunks)."""
    n = g.size
    partial = np.zeros(_tasks(n), np.float64)
    for c in prange(_tasks(n)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        total = 0.0
        for i in range(lo, hi):
            total += abs(g[i])
        partial[c] = total
        for j in range(lo // 8, (hi + 7) // 8):
            byte = 0
            for b in range(8):
                i = 8 * j + b
                s = 1 if i < n and math.copysign(1.0, g[i]) < 0 else 0
                byte = (byte << 1) | s
            out[j] = byte
    return partial.sum()


@njit(cache=True, parallel=True)
def _sign_unpack(packed, n, magnitude, flip, out32):
    """out32 (n,) uint32 float bits: ((bit << 31) | magnitude) ^ flip."""
    for c in prange(_tasks(n)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        for i in range(lo, hi):
            bit = np.uint32((packed[i >> 3] >> (7 - (i & 7))) & 1)
            out32[i] = ((bit << np.uint32(31)) | magnitude) ^ flip


@njit(cache=True, parallel=True)
def _subtract_copysign(acc, s):
    n = acc.size
    for c in prange(_tasks(n)):
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            acc[i] = acc[i] - math.copysign(s, acc[i])


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
    total = _sign_pack_abs(np.ascontiguousarray(g), out)
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
    n = g.size
    partial = np.zeros(_tasks(n), np.float64)
    for c in prange(_tasks(n)):
        m = 0.0
        nan = 0
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            a = abs(g[i])
            m = a if a > m else m
            nan += a != a
        partial[c] = np.nan if nan else m
    return partial.max() if n else 0.0


def abs_max(g):
    """max |g| (NaN if any element is NaN; 0 for an empty g), as NumPy's abs(g).max()."""
    _threads()
    return _abs_max(np.ascontiguousarray(g))


# -- int8 ----------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _int8_quantize(g, block, q, scales):
    n = g.size
    nb = scales.size
    per = max(1, CHUNK // block)
    for c in prange((nb + per - 1) // per):
        for b in range(c * per, min(nb, c * per + per)):
            lo = b * block
            hi = min(n, lo + block)
            m = np.float32(0.0)
            nan = 0
            for i in range(lo, hi):
                a = np.float32(abs(g[i]))
                m = a if a > m else m
                nan += a != a
            if nan:
                m = np.float32(np.nan)
            sc = m / np.float32(127.0)
            scales[b] = sc
            inv = np.float32(1.0) / sc if sc != 0 else np.float32(0.0)
            for i in range(lo, hi):
                q[i] = np.int8(np.rint(np.float32(g[i]) * inv))


@njit(cache=True, parallel=True)
def _int8_dequantize(q, scales, block, out):
    n = q.size
    nb = scales.size
    per = max(1, CHUNK // block)
    for c in prange((nb + per - 1) // per):
        for b in range(c * per, min(nb, c * per + per)):
            s = scales[b]
            for i in range(b * block, min(n, b * block + block)):
                out[i] = np.float32(q[i]) * s


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
@njit(cache=True, inline="always")
def _code(x, i, kind, f, s, key, midpoints):
    if kind == 0:                                              # qsgd: sign(g) floor(|g| f + u) + s
        t = np.float32(abs(x)) * f
        t = t + _uniform(key, i)
        t = np.float32(math.floor(t))
        t = t if t < np.float32(s) else np.float32(s)
        t = np.float32(math.copysign(t, x)) + np.float32(s)
        return np.uint64(t)
    if kind == 1:                                              # terngrad: 1 + sign(g) [u < |g| / m]
        keep = _uniform(key, i) < np.float32(abs(x)) * f
        if not keep:
            return np.uint64(1)
        return np.uint64(0) if math.copysign(1.0, x) < 0 else np.uint64(2)
    code = midpoints.size                                      # kmeans: (k - 1) - #{m >= g}
    for m in midpoints:
        code -= x <= m
    return np.uint64(code)


@njit(cache=True, parallel=True)
def _encode_codes(g, kind, f, s, key, midpoints, bits, out):
    """Codes of g packed at `bits` bits, eight codes per 8*bits-bit group (bits.pack_codes)."""
    n = g.size
    groups = (n + 7) // 8
    gpt = CHUNK // 8
    nbytes = out.size
    for c in prange((groups + gpt - 1) // gpt):
        for j in range(c * gpt, min(groups, c * gpt + gpt)):
            word = np.uint64(0)
            for b in range(8):
                i = 8 * j + b
                code = _code(g[i], i, kind, f, s, key, midpoints) if i < n else np.uint64(0)
                word = (word << np.uint64(bits)) | code
            word <<= np.uint64(64 - 8 * bits)
            for b in range(bits):
                k = j * bits + b
                if k < nbytes:
                    out[k] = np.uint8((word >> np.uint64(56 - 8 * b)) & np.uint64(0xFF))


@njit(cache=True, parallel=True)
def _decode_codes(packed, n, bits, table, out):
    """out[i] = table[code i] for the codes packed at `bits` bits."""
    groups = (n + 7) // 8
    gpt = CHUNK // 8
    mask = np.uint64((1 << bits) - 1)
    nbytes = packed.size
    for c in prange((groups + gpt - 1) // gpt):
        for j in range(c * gpt, min(groups, c * gpt + gpt)):
            word = np.uint64(0)
            for b in range(bits):
                k = j * bits + b
                byte = np.uint64(packed[k]) if k < nbytes else np.uint64(0)
                word = (word << np.uint64(8)) | byte
            for b in range(8):
                i = 8 * j + b
                if i < n:
                    out[i] = table[(word >> np.uint64(bits * (7 - b))) & mask]


_NO_MIDPOINTS = np.zeros(0, np.float32)


def encode_codes(g, kind, bits, f=0.0, s=0, key=0, midpoints=_NO_MIDPOINTS):
    """(ceil(n*bits/8),) uint8: the compressor's codes, packed (twins: qsgd.qsgd_codes,
    terngrad.terngrad_codes, kmeans.nearest_codes, each followed by bits.pack_codes)."""
    _threads()
    out = np.empty((g.size * bits + 7) // 8, np.uint8)
    _encode_codes(np.ascontiguousarray(g), kind, np.float32(f), int(s), np.uint64(key),
                  np.ascontiguousarray(midpoints, dtype=np.float32), int(bits), out)
    return out


def decode_codes(packed, n, bits, table, out=None):
    """(n,) of table's dtype: table[code] for each packed code (twins: bits.unpack_codes and the
    compressors' decompress arithmetic, which the caller folds into `table`, (2**bits,))."""
    _threads()
    if out is None or out.dtype != table.dtype or out.size != n:
        out = np.empty(n, table.dtype)
    _decode_codes(packed, int(n), int(bits), table, out)
    return out


# -- 16-bit floats -------------------------------------------------------------------------------
_REBIAS = _U64((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)


@njit(cache=True, inline="always")
def _f2h(x):
    """float32 -> IEEE half bits (uint64), round to nearest even (half._float_to_half)."""
    f = np.uint64(np.float32(x).view(np.uint32))
    sign = (f >> np.uint64(16)) & np.uint64(0x8000)
    a = f & np.uint64(0x7FFFFFFF)
    if a < np.uint64(113 << 23):                               # half subnormals and zero
        h = np.uint64(np.rint(np.float32(abs(np.float32(x))) * np.float32(2.0 ** 24)))
    elif a >= np.uint64((127 + 16) << 23):                     # >= 65536, inf, NaN
        h = np.uint64(0x7E00) if a > np.uint64(255 << 23) else np.uint64(0x7C00)
    else:
        h = ((a + _REBIAS + ((a >> np.uint64(13)) & np.uint64(1))) & _MASK32) >> np.uint64(13)
    return np.uint16(h | sign)


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
def _to_16(x, bf16, out):
    n = x.size
    for c in prange(_tasks(n)):
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            out[i] = _f2bf(x[i]) if bf16 else _f2h(x[i])


@njit(cache=True, parallel=True)
def _from_16(h, bf16, out):
    n = h.size
    for c in prange(_tasks(n)):
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            out[i] = _bf2f(h[i]) if bf16 else _h2f(h[i])


@njit(cache=True, parallel=True)
def _sum_16(acc, other, bf16):
    n = acc.size
    for c in prange(_tasks(n)):
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            if bf16:
                acc[i] = _f2bf(_bf2f(acc[i]) + _bf2f(other[i]))
            else:
                acc[i] = _f2h(_h2f(acc[i]) + _h2f(other[i]))


def to_16(x, bf16):
    """float -> uint16 bits of bf16 (bf16=True) or IEEE half (twins: bf16.to_bf16_bits, half.float_to_half)."""
    _threads()
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    _to_16(flat, bf16, out)
    return out.reshape(np.shape(x))


def from_16(h, bf16, out=None):
    """uint16 bits of bf16 / half -> float32 (twins: bf16.from_bf16_bits, half.half_to_float)."""
    _threads()
    flat = np.ascontiguousarray(h).view(np.uint16).reshape(-1)
    if out is None or out.dtype != np.float32 or out.size != flat.size:
        out = np.empty(flat.size, np.float32)
    _from_16(flat, bf16, out.reshape(-1))
    return out.reshape(np.shape(h))


def sum_16(acc, other, bf16):
    """acc <- round16(float32(acc) + float32(other)), in place (twins: bf16.bf16_sum, half.add_halves)."""
    _threads()
    _sum_16(acc.reshape(-1).view(np.uint16), np.ascontiguousarray(other).reshape(-1).view(np.uint16), bf16)


# -- sparse --------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _collect(g, t, strict, idx, counts):
    """Per chunk c: the indices i with |g[i]| >= t (> t if strict) into idx[c*CHUNK:], counts[c]
    of them; returns the number of NaNs seen (the caller then falls back to NumPy)."""
    n = g.size
    nans = np.zeros(counts.size, np.int64)
    for c in prange(counts.size):
        k = c * CHUNK
        bad = 0
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            a = abs(g[i])
            bad += a != a
            if a > t or (a == t and not strict):
                idx[k] = i
                k += 1
        counts[c] = k - c * CHUNK
        nans[c] = bad
    return nans.sum()


@njit(cache=True)
def _compact(idx, counts, g, out_idx, out_val):
    k = 0
    for c in range(counts.size):
        for j in range(c * CHUNK, c * CHUNK + counts[c]):
            out_idx[k] = idx[j]
            out_val[k] = g[idx[j]]
            k += 1


def select_abs(g, t, strict):
    """(indices int32 ascending, values) of the elements with |g| >= t (> t if strict); None if g
    holds a NaN (NumPy's ordering of NaN then decides: the caller's twin handles it)."""
    _threads()
    g = np.ascontiguousarray(g)
    idx = np.empty(g.size, np.int32)             # only the kept prefix of each chunk is touched
    counts = np.empty(_tasks(g.size), np.int64)
    if _collect(g, g.dtype.type(t), bool(strict), idx, counts):
        return None
    total = int(counts.sum())
    out_idx, out_val = np.empty(total, np.int32), np.empty(total, g.dtype)
    _compact(idx, counts, g, out_idx, out_val)
    return out_idx, out_val


@njit(cache=True, parallel=True)
def _collect_hash(key, n, cut, idx, hashes, counts):
    """Per chunk c: the counters i < n whose SplitMix64 hash (rng.hash64) is below cut, with the
    hash, into idx / hashes[c*CHUNK:], counts[c] of them."""
    for c in prange(counts.size):
        k = c * CHUNK
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            z = _U64(i + 1) * _GOLDEN + key
            z = (z ^ (z >> _S30)) * _M1
            z = (z ^ (z >> _S27)) * _M2
            z = z ^ (z >> _S31)
            if z < cut:
                idx[k] = i
                hashes[k] = z
                k += 1
        counts[c] = k - c * CHUNK


@njit(cache=True)
def _compact_hash(idx, hashes, counts, out_idx, out_hash):
    k = 0
    for c in range(counts.size):
        for j in range(c * CHUNK, c * CHUNK + counts[c]):
            out_idx[k] = idx[j]
            out_hash[k] = hashes[j]
            k += 1


def hashes_below(key, n, cut):
    """(indices int64 ascending, their hashes uint64) of the counters of stream `key` (hash64(key,
    n)) whose hash is below cut: randomk's candidates without the (n,) uint64 hash array."""
    _threads()
    idx = np.empty(n, np.int64)
    hashes = np.empty(n, np.uint64)
    counts = np.empty(_tasks(n), np.int64)
    _collect_hash(np.uint64(key), int(n), np.uint64(cut), idx, hashes, counts)
    total = int(counts.sum())
    out_idx, out_hash = np.empty(total, np.int64), np.empty(total, np.uint64)
    _compact_hash(idx, hashes, counts, out_idx, out_hash)
    return out_idx, out_hash


@njit(cache=True, parallel=True)
def _zero(out):
    n = out.size
    for c in prange(_tasks(n)):
        for i in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            out[i] = 0


@njit(cache=True)
def _scatter(out, indices, values):
    for j in range(indices.size):
        out[indices[j]] = values[j]


@njit(cache=True)
def _scatter_compact(out, v16, scale, local, counts):
    """out[(chunk << 16) + local] = float32(v16) * scale, chunks in order (sparse_code.decode)."""
    j = 0
    for c in range(counts.size):
        base = c << 16
        for _ in range(counts[c]):
            out[base + np.int64(local[j])] = _h2f(v16[j]) * scale
            j += 1


def scatter(values, indices, n, dtype, out=None):
    """Dense (n,) of `dtype`, values at indices, zeros elsewhere (twin: topk.scatter)."""
    _threads()
    if out is None or out.dtype != dtype or out.size != n:
        out = np.empty(n, dtype)
    _zero(out)
    _scatter(out, indices, values)
    return out


def scatter_compact(payload, n, dtype, out=None):
    """Dense (n,) from a compact sparse payload (twin: sparse_code.decode then topk.scatter)."""
    _threads()
    v16, scale, local, counts = payload
    if out is None or out.dtype != dtype or out.size != n:
        out = np.empty(n, dtype)
    _zero(out)
    _scatter_compact(out, v16.view(np.uint16), np.float32(scale[0]), local, counts)
    return out
