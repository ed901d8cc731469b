"""Validate every kernel version against its NumPy twin, then time it (GB/s of fp32 input).

    python kernels/bench.py [--n 16777216] [--repeats 20]

Needs CuPy and a GPU (exits with a message otherwise). A version that disagrees with the twin
is reported as FAIL and not timed.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        sys.exit(f"kernels/bench.py needs CuPy and a CUDA device: {exc}")
    from hpclm.compress import cuda, rng
    from hpclm.compress.bits import pack_codes
    from hpclm.compress.int8 import int8_quantize
    from hpclm.compress.qsgd import qsgd_codes
    from hpclm.compress.topk import select_topk

    n = args.n
    g = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dg = cupy.asarray(g)
    key = rng.stream_key(1, 2, 3)
    f = np.float32(16) / np.float32(np.linalg.norm(g))
    codes4 = np.random.default_rng(1).integers(0, 16, n).astype(np.uint8)
    k = max(1, n // 100)
    cases = [
        (f"sign_pack_{v}", lambda v=v: cuda.sign_pack(dg, version=v), np.packbits(np.signbit(g))) for v in ("v1", "v2")
    ] + [
        (f"sign_unpack_{v}", lambda v=v: cuda.sign_unpack(cuda.sign_pack(dg), n, 1.0, version=v),
         np.where(np.signbit(g), -1, 1).astype(np.float32)) for v in ("v1", "v2")
    ] + [
        (f"pack_codes_{v}(4 bits)", lambda v=v: cuda.pack_codes(cupy.asarray(codes4), 4, version=v), pack_codes(codes4, 4))
        for v in ("v1", "v2")
    ] + [
        (f"int8_quantize(absmax_{v})", lambda v=v: cuda.int8_quantize(dg, 256, version=v)[0], int8_quantize(g, 256)[0])
        for v in ("v1", "v2")
    ] + [
        ("qsgd_codes_v1", lambda: cuda.qsgd_codes(dg, f, 16, key), qsgd_codes(g, f, 16, key)),
        ("topk_indices(radix v2)", lambda: cuda.topk_indices(dg, k), select_topk(np.abs(g), k, np)),
    ]
    print(f"n={n}  repeats={args.repeats}")
    for name, fn, ref in cases:
        ok = np.array_equal(cupy.asnumpy(fn()), ref)
        if not ok:
            print(f"{name:28s} FAIL (differs from the NumPy twin)")
            continue
        fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(args.repeats):
            fn()
        end.record()
        end.synchronize()
        t = cupy.cuda.get_elapsed_time(start, end) / 1e3 / args.repeats
        print(f"{name:28s} ok   {1e3 * t:8.3f} ms  {4 * n / t / 1e9:8.1f} GB/s")


if __name__ == "__main__":
    main()
