"""`hpclm bench compress`: throughput of compress + decompress per compressor and size.

GB/s = bytes of the fp32 gradient processed / (compress + decompress time), best of --repeats,
printed next to a plain memcpy of the same size (np.copyto / cupy copy) measured in the same run,
with the ratio to memcpy, the bytes on the wire and the compression ratio versus fp32.
`--device gpu` runs the CUDA kernel paths (hpclm.compress.cuda). Error feedback is not included
(the compressor alone). Compressors whose decompress takes `out=` (signsgd, ef_sign, int8) write
into a reused buffer, as memcpy does; the others allocate their output (first-touch page faults
included). Gradient: N(0, 1) float32, seed 0.
"""
import inspect

import numpy as np

from hpclm import xp as X
from hpclm.bench.common import parse_sizes, print_table, write_json
from hpclm.compress import REGISTRY, build
from hpclm.compress.base import payload_nbytes
from hpclm.config import CompressConfig
from hpclm.errors import UserError


def add_arguments(p):
    p.add_argument("--sizes", default="64K,1M,16M", help="element counts: a comma list of counts and "
                   "'lo:hi' power-of-two ranges (K/M/G = 2^10/2^20/2^30)")
    p.add_argument("--compressors", default=",".join(REGISTRY), help="comma list of registry names")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (best is reported) after one warm-up")
    p.add_argument("--density", type=float, default=0.01, help="topk / randomk: fraction of elements sent")
    p.add_argument("--threshold", type=float, default=2.576, help="threshold compressor (~1%% of N(0,1) above)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the buffers live")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = X.now()
        fn()
        best = min(best, X.now() - t0)
    return best


def run(args):
    X.use(args.device)
    xp = X.np
    names = [s.strip() for s in args.compressors.split(",") if s.strip()]
    bad = [s for s in names if s not in REGISTRY]
    if bad:
        raise UserError(f"unknown compressor(s) {bad}; valid names: {', '.join(REGISTRY)}")
    sizes = parse_sizes(args.sizes)
    if min(sizes) < 1 or args.repeats < 1:
        raise UserError(f"bench compress needs sizes >= 1 element and --repeats >= 1 "
                        f"(got {args.sizes!r}, {args.repeats})")
    rows = []
    for n in sizes:
        g = X.to_device(np.random.default_rng(0).standard_normal(n).astype(np.float32))
        dst = xp.empty_like(g)
        t_copy = best_time(lambda: xp.copyto(dst, g), args.repeats)
        memcpy = 4 * n / t_copy / 1e9
        rows.append(dict(compressor="memcpy", n=n, gbps=memcpy, ratio_memcpy=1.0, wire_bytes=4 * n, compression=1.0,
                         t_compress_ms=None, t_decompress_ms=None))
        for name in names:
            c = build(CompressConfig(name=name, density=args.density, threshold=args.threshold))
            payload, ctx = c.compress(g, 0)
            t_c = best_time(lambda: c.compress(g, 0), args.repeats)
            if "out" in inspect.signature(c.decompress).parameters:  # into a reused buffer, like memcpy's dst
                t_d = best_time(lambda: c.decompress(payload, ctx, out=dst), args.repeats)
            else:
                t_d = best_time(lambda: c.decompress(payload, ctx), args.repeats)
            gbps = 4 * n / (t_c + t_d) / 1e9
            wire = payload_nbytes(payload)
            rows.append(dict(compressor=name, n=n, gbps=gbps, ratio_memcpy=gbps / memcpy, wire_bytes=wire,
                             compression=4 * n / max(wire, 1), t_compress_ms=1e3 * t_c, t_decompress_ms=1e3 * t_d))
    print(f"device={X.device}  repeats={args.repeats} (best)  density={args.density}")
    print_table(rows, ["compressor", "n", ("gbps", ".2f"), ("ratio_memcpy", ".2f"), "wire_bytes",
                       ("compression", ".1f"), ("t_compress_ms", ".3f"), ("t_decompress_ms", ".3f")])
    if args.json:
        write_json(args.json, {"benchmark": "compress", "device": X.device, "repeats": args.repeats,
                               "density": args.density, "rows": rows})
