"""`hpclm bench model`: step time, tokens/s and model FLOP/s of one training step, and MFU.

A step is forward + backward + AdamW update on one process. Model FLOPs per token follow
PaLM/nanoGPT: 6 N + 12 L H D T, with N the non-embedding parameter count (wte counts: it is the
output head) and the second term the attention score/value products. The float32 matmul peak
of this machine is measured in the same run (a 2048^3 product on the same number of threads,
best of several, before and after the model), and MFU = model FLOP/s / peak. On CPU both kernel
paths (`--kernels numpy,numba`: the NumPy element-wise code and the compiled kernels of
hpclm.model.fused, hpclm.kernels) are timed in one run, their steps interleaved (one step of
each per round), so both see the same machine; one row per path, the step time a median.
"""

import numpy as np
from threadpoolctl import threadpool_limits

from hpclm import kernels
from hpclm import xp as X
from hpclm.bench.common import print_table, write_json
from hpclm.config import ModelConfig, OptimConfig
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model.threaded import ThreadedGPT
from hpclm.optim import build_optimizer


def add_arguments(p):
    p.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    p.add_argument("--n-head", type=int, default=4, help="attention heads")
    p.add_argument("--n-embd", type=int, default=256, help="embedding width C")
    p.add_argument("--block-size", type=int, default=128, help="context length T")
    p.add_argument("--vocab-size", type=int, default=65, help="vocabulary size V")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step B")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter and activation dtype")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (row slices with 1-thread BLAS, and the peak's BLAS threads)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per kernel path (after 3 warm-up steps)")
    p.add_argument("--kernels", default="numpy,numba", help="CPU kernel paths to compare (hpclm.kernels): "
                   "a comma list of numpy, numba")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the model runs")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def matmul_peak(threads, dtype, n=2048, repeats=5):
    """Best FLOP/s of an n x n x n matrix product on `threads` BLAS threads."""
    xp = X.np
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)
    b = xp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype=dtype)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        for _ in range(repeats):
            t0 = X.now()
            a @ b
            best = min(best, X.now() - t0)
    return 2.0 * n ** 3 / best


def flops_per_token(model):
    c = model.cfg
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size


def run(args):
    if min(args.steps, args.threads, args.batch_size) < 1:
        raise UserError(f"bench model needs --steps, --threads and --batch-size >= 1 "
                        f"(got {args.steps}, {args.threads}, {args.batch_size})")
    paths = [s.strip() for s in args.kernels.split(",") if s.strip()] if args.device == "cpu" else ["numpy"]
    if not paths or any(p not in ("numpy", "numba") for p in paths):
        raise UserError(f"--kernels must list numpy and/or numba, got {args.kernels!r}")
    X.use(args.device)
    cfg = ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                      n_head=args.n_head, n_embd=args.n_embd)
    base = GPT(cfg, seed=0, dtype=args.dtype)
    model = ThreadedGPT(base, args.threads) if args.threads > 1 and args.device == "cpu" else base
    optimizer = build_optimizer(OptimConfig(), model)
    rng = np.random.default_rng(0)
    idx = X.to_device(rng.integers(0, args.vocab_size, (args.batch_size, args.block_size)))
    targets = X.to_device(rng.integers(0, args.vocab_size, (args.batch_size, args.block_size)))

    def step():
        model.forward_backward(idx, targets)
        optimizer.step(model.flat, model.grad_flat, 1e-4)

    peak_before = matmul_peak(args.threads, args.dtype)
    times = {path: [] for path in paths}
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for path in paths:                                     # warm-up (and first compile)
            kernels.use(path, args.threads)
            for _ in range(3):
                step()
        for _ in range(args.steps):                            # rounds: one step of each path
            for path in paths:
                kernels.use(path, args.threads)
                t0 = X.now()
                step()
                times[path].append(X.now() - t0)
    kernels.use("auto", args.threads)
    peak = max(peak_before, matmul_peak(args.threads, args.dtype))
    tokens = args.batch_size * args.block_size
    results = []
    for path in paths:
        step_s = float(np.median(times[path]))
        model_flops = flops_per_token(base) * tokens / step_s
        results.append(dict(kernels=path, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                            block_size=args.block_size, batch_size=args.batch_size, dtype=args.dtype,
                            threads=args.threads, device=args.device, params=base.num_params(),
                            step_ms=step_s * 1e3, step_ms_min=min(times[path]) * 1e3,
                            step_ms_max=max(times[path]) * 1e3, tokens_per_s=tokens / step_s,
                            model_gflops=model_flops / 1e9, peak_gflops=peak / 1e9, mfu=model_flops / peak,
                            flops_formula="6*N + 12*L*C*T per token, N = non-embedding params (wte counted as the head)"))
    print_table(results, ["kernels", ("params", ","), ("step_ms", ".1f"), ("step_ms_min", ".1f"), ("step_ms_max", ".1f"),
                          ("tokens_per_s", ",.0f"), ("model_gflops", ".1f"), ("peak_gflops", ".1f"), ("mfu", ".3f")])
    print(f"model FLOPs per token: {results[0]['flops_formula']}; peak: {args.dtype} 2048^3 matmul on "
          f"{args.threads} thread(s); step times: median of {args.steps} interleaved steps per path")
    if args.json:
        write_json(args.json, results[0] if len(results) == 1 else {"rows": results})
    return 0
