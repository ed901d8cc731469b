"""CUDA kernel loader and the GPU paths of the compressors (the only compress module importing cupy).

Kernels are the `kernels/*.cu` files, compiled at first use with `cupy.RawModule` (NVRTC);
`common.cuh` is inlined textually so no include path is needed. They are found, in order, in:
  1. $HPCLM_KERNELS (a directory),
  2. the source checkout: <repo>/kernels (this file is <repo>/hpclm/compress/cuda.py),
  3. an installed copy: <sys.prefix>/share/hpclm/kernels (setup.py ships kernels/ there as data_files).
`kernel_dir()` says which one is used. Each function below has a NumPy twin with identical
semantics (named in the kernel file's header), and `VERSIONS` picks the kernel version used.
"""
import os
import sys
from functools import lru_cache
from pathlib import Path

import cupy
import numpy

THREADS = 256
VERSIONS = {"sign_pack": "v2", "sign_unpack": "v2", "pack_codes": "v2", "unpack_codes": "v2",
            "int8_absmax": "v2", "radix_hist": "v2"}


def kernel_dir():
    candidates = []
    if os.environ.get("HPCLM_KERNELS"):
        candidates.append(Path(os.environ["HPCLM_KERNELS"]))
    candidates.append(Path(__file__).resolve().parents[2] / "kernels")
    candidates.append(Path(sys.prefix) / "share" / "hpclm" / "kernels")
    for d in candidates:
        if (d / "common.cuh").is_file():
            return d
    raise FileNotFoundError("hpclm kernels not found in: " + ", ".join(map(str, candidates)))


def source(name):
    d = kernel_dir()
    text = (d / f"{name}.cu").read_text()
    return text.replace('#include "common.cuh"', (d / "common.cuh").read_text().replace("#pragma once", ""))


@lru_cache(maxsize=None)
def module(name):
    return cupy.RawModule(code=source(name), options=("--std=c++14",))


def kernel(file, name, version=None):
    version = version or VERSIONS.get(name, "v1")
    return module(file).get_function(f"{name}_{version}")


def launch(kern, count, args, threads=THREADS):
    if count > 0:
        kern(((count + threads - 1) // threads,), (threads,), args)


def i64(x):
    return numpy.int64(x)


# -- signs --------------------------------------------------------------------------------------
def sign_pack(g, version=None):
    g = cupy.ascontiguousarray(g, dtype=cupy.float32)
    n = g.size
    out = cupy.empty((n + 7) // 8, cupy.uint8)
    v = version or VERSIONS["sign_pack"]
    launch(kernel("sign", "sign_pack", v), n if v == "v2" else out.size, (g, out, i64(n)))
    return out


def sign_unpack(packed, n, scale=1.0, dtype=numpy.float32, version=None):
    out = cupy.empty(n, cupy.float32)
    v = version or VERSIONS["sign_unpack"]
    launch(kernel("sign", "sign_unpack", v), n if v == "v1" else packed.size,
           (packed, out, i64(n), numpy.float32(scale)))
    return out.astype(dtype, copy=False)


def sign_vote(packed_list, n):
    stack = cupy.ascontiguousarray(cupy.stack(packed_list))
    nb = stack.shape[1]
    out = cupy.empty(nb, cupy.uint8)
    launch(kernel("sign", "sign_vote", "v1"), nb, (stack, out, i64(nb), numpy.int32(len(packed_list)), i64(n)))
    return out


# -- b-bit codes --------------------------------------------------------------------------------
def pack_codes(codes, bits, version=None):
    codes = cupy.ascontiguousarray(codes, dtype=cupy.uint8)
    n = codes.size
    out = cupy.empty((n * bits + 7) // 8, cupy.uint8)
    v = version or (VERSIONS["pack_codes"] if 8 % bits == 0 else "v1")
    launch(kernel("pack", "pack_codes", v), out.size, (codes, out, i64(n), numpy.int32(bits)))
    return out


def unpack_codes(packed, n, bits, version=None):
    out = cupy.empty(n, cupy.uint8)
    v = version or (VERSIONS["unpack_codes"] if 8 % bits == 0 else "v1")
    launch(kernel("pack", "unpack_codes", v), n, (packed, out, i64(n), numpy.int32(bits)))
    return out


# -- quantizers ---------------------------------------------------------------------------------
def int8_quantize(g, block, version=None):
    g = cupy.ascontiguousarray(g, dtype=cupy.float32)
    n = g.size
    nb = -(-n // block)
    scales = cupy.empty(nb, cupy.float32)
    v = version or VERSIONS["int8_absmax"]
    if v == "v2":
        if nb:
            kernel("quantize", "int8_absmax", "v2")((nb,), (THREADS,), (g, scales, i64(n), numpy.int32(block)))
    else:
        launch(kernel("quantize", "int8_absmax", "v1"), nb, (g, scales, i64(n), numpy.int32(block)))
    q = cupy.empty(n, cupy.int8)
    launch(kernel("quantize", "int8_quantize", "v1"), n, (g, scales, q, i64(n), numpy.int32(block)))
    return q, scales


def int8_dequantize(q, scales, block, n, dtype=numpy.float32):
    out = cupy.empty(n, cupy.float32)
    launch(kernel("quantize", "int8_dequantize", "v1"), n, (q, scales, out, i64(n), numpy.int32(block)))
    return out.astype(dtype, copy=False)


def qsgd_codes(g, f, s, key):
    g = cupy.ascontiguousarray(g, dtype=cupy.float32)
    codes = cupy.empty(g.size, cupy.uint8)
    launch(kernel("quantize", "qsgd_codes", "v1"), g.size,
           (g, codes, i64(g.size), numpy.float32(f), numpy.int32(s), numpy.uint64(key)))
    return codes


def terngrad_codes(g, inv_m, key):
    g = cupy.ascontiguousarray(g, dtype=cupy.float32)
    codes = cupy.empty(g.size, cupy.uint8)
    launch(kernel("quantize", "terngrad_codes", "v1"), g.size,
           (g, codes, i64(g.size), numpy.float32(inv_m), numpy.uint64(key)))
    return codes


# -- top-k --------------------------------------------------------------------------------------
def kth_largest_key(g, k, version=None):
    """The k-th largest |g| bit pattern (uint32 with the sign cleared), by 4 radix passes."""
    v = version or VERSIONS["radix_hist"]
    kern = kernel("topk", "radix_hist", v)
    n = g.size
    prefix, mask, remaining = 0, 0, k
    hist = cupy.empty(256, cupy.uint32)
    for shift in (24, 16, 8, 0):
        hist.fill(0)
        args = (g, i64(n), numpy.uint32(prefix), numpy.uint32(mask), numpy.int32(shift), hist)
        if v == "v2":
            kern((min(1024, (n + THREADS - 1) // THREADS),), (THREADS,), args)
        else:
            launch(kern, n, args)
        h = cupy.asnumpy(hist).astype(numpy.int64)
        above = numpy.cumsum(h[::-1])  # above[j] = count in buckets >= 255 - j
        j = int(numpy.searchsorted(above, remaining))
        b = 255 - j
        remaining -= int(above[j - 1]) if j else 0
        prefix |= b << shift
        mask |= 0xFF << shift
    return prefix


def topk_indices(g, k):
    """(k,) int32 ascending: the same set as hpclm.compress.topk.select_topk."""
    g = cupy.ascontiguousarray(g, dtype=cupy.float32)
    n = g.size
    if k >= n:
        return cupy.arange(n, dtype=cupy.int32)
    if k == 0:
        return cupy.zeros(0, cupy.int32)
    t = kth_largest_key(g, k)
    idx = cupy.empty(k, cupy.int32)
    counter = cupy.zeros(1, cupy.uint32)
    launch(kernel("topk", "compact_gt", "v1"), n, (g, i64(n), numpy.uint32(t), idx, counter))
    c = int(counter.get()[0])
    keys = g.view(cupy.uint32) & cupy.uint32(0x7FFFFFFF)
    idx[c:] = cupy.flatnonzero(keys == cupy.uint32(t))[: k - c].astype(cupy.int32)
    idx.sort()
    return idx


def scatter_add(out, idx, vals):
    """out[idx] += vals, repeated indices accumulate (NumPy twin: numpy.add.at)."""
    launch(kernel("topk", "scatter_add", "v1"), idx.size,
           (cupy.ascontiguousarray(vals, dtype=cupy.float32), cupy.ascontiguousarray(idx, dtype=cupy.int32),
            i64(idx.size), out))
    return out


# -- error feedback -----------------------------------------------------------------------------
def ef_sign_residual(acc, scale):
    launch(kernel("ef", "ef_sign_residual", "v1"), acc.size, (acc, i64(acc.size), numpy.float32(scale)))
    return acc

