"""The compact wire format of sparse payloads (topk, threshold; compress.sparse_format = "compact").

k kept elements of an n-element gradient, indices ascending, travel as four arrays:

    v16     (k,) float16    values / scale
    scale   (1,) float32    max|values| / 2**15 (1 when that is 0: k == 0 or all values zero)
    local   (k,) uint16     indices & 0xFFFF: the position inside the index's 65536-element chunk
    counts  (C,) int32      kept elements per chunk (bincount of indices >> 16), C = ceil(n / 65536)

nbytes(k, n) = 2k + 4 + 2k + 4C: about 4 bytes per element, against itemsize + 4 for values and
int32 indices ("plain"). The largest magnitude travels as 32768 exactly; float16 keeps 11
significant bits for |values| / scale in [2**-14, 2**15], i.e. |v| >= max|v| * 2**-29 (relative
error <= 2**-11, plus float32 rounding); smaller ones are float16 subnormals (absolute error
<= scale * 2**-25). Decoding multiplies back in float32. Ascending indices make chunk c's elements
the counts[c] after those of chunks < c, so the chunk of element j is the number of chunk ends
(cumsum(counts)) <= j: a searchsorted, where CuPy has no repeat(arange(C) << 16, counts) with
device-side counts. Written against xp, so it runs on NumPy and CuPy arrays alike.
"""
from hpclm import xp as X
from hpclm.compress.half import float_to_half

CHUNK_BITS = 16
TOP = 2.0 ** 15         # what the largest magnitude maps to


def chunks(n):
    """C: the number of 65536-element chunks of an n-element gradient."""
    return -(-n >> CHUNK_BITS)


def nbytes(k, n):
    """Bytes of the encoded payload of k elements out of n."""
    return 4 * k + 4 + 4 * chunks(n)


def encode(values, indices, n):
    """values (k,) float, indices (k,) int ascending in [0, n) -> (v16, scale, local, counts)."""
    xp = X.array_module(values)
    v32 = values.astype(xp.float32, copy=False)                               # (k,)
    scale = xp.ones(1, dtype=xp.float32)                                      # (1,)
    if v32.size:
        top = xp.abs(v32).max(keepdims=True) / xp.float32(TOP)                # (1,)
        scale = xp.where(top > 0, top, scale)
    v16 = float_to_half(v32 / scale)                                          # (k,)
    local = (indices & 0xFFFF).astype(xp.uint16)                              # (k,)
    counts = xp.bincount(indices >> CHUNK_BITS, minlength=chunks(n)).astype(xp.int32)  # (C,)
    return v16, scale, local, counts


def decode(payload):
    """(v16, scale, local, counts) -> (values (k,) float32, indices (k,) int64 ascending)."""
    v16, scale, local, counts = payload
    xp = X.array_module(v16)
    values = v16.astype(xp.float32) * scale                                   # (k,)
    ends = xp.cumsum(counts)                                                  # (C,)
    chunk = xp.searchsorted(ends, xp.arange(v16.size), side="right")          # (k,)
    indices = (chunk.astype(xp.int64) << CHUNK_BITS) + local                  # (k,)
    return values, indices
