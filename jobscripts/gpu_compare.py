"""The GPU check's comparisons (jobscripts/gpu_check.sh), each printing one verdict line and exiting 1
when it fails:

    python jobscripts/gpu_compare.py model [--device gpu]     # one forward/backward, float64, device vs NumPy
    python jobscripts/gpu_compare.py runs RUN_A RUN_B --steps 20 --rtol 1e-4   # per-step training losses
    python jobscripts/gpu_compare.py topk [--device gpu] [--n 16M]   # top-k 1 %: ours vs argpartition

`model` builds the same GPT (same seed) on the CPU and on the device and compares the loss and every
gradient of one batch (relative to the largest gradient, float64: 1e-10). `runs` compares the
per-step losses of two training runs' timing records over their first --steps steps (float32 runs on
different hardware agree to round-off there, then drift apart chaotically). `topk` times the topk
compressor's selection (cuda.topk_indices on the GPU, the compiled or NumPy path on the CPU) against
the array library's own argpartition of |g| on the same gradient (medians of 10, after a warm-up),
and checks that both select the same set.
"""
import time
import argparse
import sys

import numpy as np

from hpclm import xp as X
from hpclm.compress import build
from hpclm.config import CompressConfig, ModelConfig
from hpclm.model import GPT
from hpclm.timing.reader import read_run


def one_step(device, cfg, idx, targets):
    X.use(device)
    model = GPT(cfg, seed=7, dtype="float64")
    loss = model.forward_backward(X.to_device(idx), X.to_device(targets))
    return loss, X.to_host(model.grad_flat)


def compare_model(args):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=97)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, cfg.vocab_size, (2, 3, cfg.block_size))
    cpu_loss, cpu_grad = one_step("cpu", cfg, idx, targets)
    dev_loss, dev_grad = one_step(args.device, cfg, idx, targets)
    loss_err = abs(dev_loss - cpu_loss) / abs(cpu_loss)
    grad_err = float(np.abs(dev_grad - cpu_grad).max() / np.abs(cpu_grad).max())
    ok = loss_err <= 1e-10 and grad_err <= 1e-10
    print(f"model float64 forward/backward, {args.device} vs cpu: loss {dev_loss:.12f} vs {cpu_loss:.12f} "
          f"(rel {loss_err:.1e}), gradients max rel {grad_err:.1e} over {cpu_grad.size} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def compare_runs(args):
    a, b = read_run(args.a), read_run(args.b)
    n = min(args.steps, len(a.per_step["loss"]), len(b.per_step["loss"]))
    la, lb = a.per_step["loss"][:n], b.per_step["loss"][:n]
    rel = np.abs(la - lb) / np.abs(lb)
    ok = n == args.steps and bool(np.all(rel <= args.rtol))
    print(f"training losses {args.a} vs {args.b}, first {n} steps: max rel diff {rel.max():.2e} "
          f"(step {int(rel.argmax()) + 1}; tolerance {args.rtol:g}); final losses {a.per_step['loss'][-1]:.4f} / "
          f"{b.per_step['loss'][-1]:.4f} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def median_ms(fn, repeats=10):
    fn()
    times = []
    for _ in range(repeats):
        X.synchronize()
        t0 = time.perf_counter()
        fn()
        X.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def compare_topk(args):
    X.use(args.device)
    xp, n = X.np, args.n
    g = xp.asarray(np.random.default_rng(0).standard_normal(n).astype(np.float32))     # (n,)
    compressor = build(CompressConfig(name="topk", density=0.01))
    k = max(1, n // 100)

    def ours():
        return compressor.compress(g, 0)

    def library():
        return xp.argpartition(xp.abs(g), n - k)[n - k:]
    picked = X.to_host(compressor.sent_indices(*ours()))
    same = bool(np.array_equal(np.sort(picked), np.sort(X.to_host(library()))))
    t_ours, t_lib = median_ms(ours), median_ms(library)
    print(f"top-k 1 % of {n} float32 on {args.device}: ours {t_ours:.3f} ms (the compressor's compress: selection and payload), "
          f"{xp.__name__}.argpartition {t_lib:.3f} ms: {t_lib / t_ours:.2f}x; same set: {same} -> "
          f"{'PASS' if same else 'FAIL'}")
    return 0 if same else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model")
    m.add_argument("--device", default="gpu")
    r = sub.add_parser("runs")
    r.add_argument("a")
    r.add_argument("b")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--rtol", type=float, default=1e-4)
    t = sub.add_parser("topk")
    t.add_argument("--device", default="gpu")
    t.add_argument("--n", type=int, default=1 << 24)
    args = ap.parse_args()
    return {"model": compare_model, "runs": compare_runs, "topk": compare_topk}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
