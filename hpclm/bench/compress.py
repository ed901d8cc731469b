"""`hpclm bench compress`: throughput of compress + decompress per compressor and size.

GB/s = bytes of the fp32 gradient processed / (compress + decompress time), the median of
--repeats, printed next to a plain memcpy of the same size (np.copyto / cupy copy) timed in the
same rounds, with the ratio to memcpy, the spread (min-max ratio over the rounds), the bytes on
the wire and the compression ratio versus fp32. On CPU both kernel paths run side by side
(`--kernels numpy,numba`: the NumPy twins and the compiled kernels of hpclm.compress.cpu); every
round times memcpy and then each path once, so machine noise hits all of them alike.
`--device gpu` runs the CUDA kernel paths (hpclm.compress.cuda). Error feedback is not included
(the compressor alone). Compressors whose decompress takes `out=` write into a reused buffer, as
memcpy does (the NumPy twins of some of them still allocate: page faults included). Gradient:
N(0, 1) float32, seed 0.
"""
import inspect

import numpy as np

from hpclm import kernels
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
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (the median is reported) after one warm-up")
    p.add_argument("--kernels", default="numpy,numba", help="CPU kernel paths to compare (hpclm.kernels): "
                   "a comma list of numpy, numba")
    p.add_argument("--threads", type=int, default=0, help="threads of the compiled kernels (0: the cores)")
    p.add_argument("--density", type=float, default=0.01, help="topk / randomk: fraction of elements sent")
    p.add_argument("--threshold", type=float, default=2.576, help="threshold compressor (~1%% of N(0,1) above)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the buffers live")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def once(fn):
    t0 = X.now()
    fn()
    return X.now() - t0


def run(args):
    X.use(args.device)
    xp = X.np
    names = [s.strip() for s in args.compressors.split(",") if s.strip()]
    bad = [s for s in names if s not in REGISTRY]
    if bad:
        raise UserError(f"unknown compressor(s) {bad}; valid names: {', '.join(REGISTRY)}")
    paths = [s.strip() for s in args.kernels.split(",") if s.strip()] if args.device == "cpu" else ["numpy"]
    if not paths or any(p not in ("numpy", "numba") for p in paths):
        raise UserError(f"--kernels must list numpy and/or numba, got {args.kernels!r}")
    sizes = parse_sizes(args.sizes)
    if min(sizes) < 1 or args.repeats < 1:
        raise UserError(f"bench compress needs sizes >= 1 element and --repeats >= 1 "
                        f"(got {args.sizes!r}, {args.repeats})")
    rows = []
    for n in sizes:
        g = X.to_device(np.random.default_rng(0).standard_normal(n).astype(np.float32))
        dst = xp.empty_like(g)
        copy_times = []
        for name in names:
            timed = {}
            for path in paths:                                              # warm-up (and compile)
                kernels.use(path, args.threads)
                c = build(CompressConfig(name=name, density=args.density, threshold=args.threshold))
                payload, ctx = c.compress(g, 0)
                with_out = "out" in inspect.signature(c.decompress).parameters
                timed[path] = (c, payload, ctx, with_out, [], [])
                c.decompress(payload, ctx, out=dst) if with_out else c.decompress(payload, ctx)
            for _ in range(args.repeats):                                   # rounds: memcpy, then each path
                copy_times.append(once(lambda: xp.copyto(dst, g)))
                for path in paths:
                    kernels.use(path, args.threads)
                    c, payload, ctx, with_out, tc, td = timed[path]
                    tc.append(once(lambda: c.compress(g, 0)))
                    if with_out:                                            # into a reused buffer, like memcpy's dst
                        td.append(once(lambda: c.decompress(payload, ctx, out=dst)))
                    else:
                        td.append(once(lambda: c.decompress(payload, ctx)))
            t_copy = float(np.median(copy_times[-args.repeats:]))
            for path in paths:
                c, payload, ctx, _, tc, td = timed[path]
                total = np.asarray(tc) + np.asarray(td)
                ratios = (np.asarray(copy_times[-args.repeats:]) / total)
                t = float(np.median(total))
                wire = payload_nbytes(payload)
                rows.append(dict(compressor=name, kernels=path, n=n, gbps=4 * n / t / 1e9, ratio_memcpy=t_copy / t,
                                 ratio_min=float(ratios.min()), ratio_max=float(ratios.max()),
                                 wire_bytes=wire, compression=4 * n / max(wire, 1), t_ms=1e3 * t,
                                 t_compress_ms=1e3 * float(np.median(tc)), t_decompress_ms=1e3 * float(np.median(td))))
        t_copy = float(np.median(copy_times))
        rows.append(dict(compressor="memcpy", kernels="-", n=n, gbps=4 * n / t_copy / 1e9, ratio_memcpy=1.0,
                         wire_bytes=4 * n, compression=1.0, t_compress_ms=None, t_decompress_ms=None))
    kernels.use("auto", args.threads)
    print(f"device={X.device}  repeats={args.repeats} (median; ratio_min/max: spread over the rounds)  "
          f"density={args.density}  kernel threads={args.threads or 'cores'}")
    print_table(rows, ["compressor", "kernels", "n", ("gbps", ".2f"), ("ratio_memcpy", ".2f"), ("ratio_min", ".2f"),
                       ("ratio_max", ".2f"), "wire_bytes", ("compression", ".1f"), ("t_compress_ms", ".3f"),
                       ("t_decompress_ms", ".3f")])
    if args.json:
        write_json(args.json, {"benchmark": "compress", "device": X.device, "repeats": args.repeats,
                               "statistic": "median", "density": args.density, "rows": rows})
