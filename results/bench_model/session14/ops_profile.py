"""Where one row slice's step goes: ThreadedGPT's per-thread work (B = 8 rows, 1 thread, 1-thread BLAS)
with each hpclm.model.layers function timed (wall clock, summed over the steps), the rest of the block
(the two projection products, bias and residual adds, bias sums) as "other", and AdamW. Run with the
tree to measure on PYTHONPATH:  python ops_profile.py [B] [numpy|numba]"""
import collections
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hpclm import heap, kernels
from hpclm.config import ModelConfig, OptimConfig
from hpclm.model import GPT
from hpclm.model import layers as L
from hpclm.optim import build_optimizer

B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
path = sys.argv[2] if len(sys.argv) > 2 else "numba"
STEPS = 10
heap.keep_freed_blocks()
spent = collections.defaultdict(float)


def timed(name):
    f = getattr(L, name)

    def g(*a, **k):
        t0 = time.perf_counter()
        r = f(*a, **k)
        spent[name] += time.perf_counter() - t0
        return r
    setattr(L, name, g)


for name in ("embedding_forward", "embedding_backward", "layernorm_forward", "layernorm_backward", "linear_forward",
             "linear_backward", "gelu_forward", "gelu_backward", "attention_forward", "attention_backward",
             "cross_entropy_forward", "cross_entropy_backward"):
    timed(name)
cfg = ModelConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=256)
model = GPT(cfg, seed=0, dtype="float32")
optimizer = build_optimizer(OptimConfig(), model)
rng = np.random.default_rng(0)
idx, targets = rng.integers(0, 65, (B, 128)), rng.integers(0, 65, (B, 128))
kernels.use(path, 1)
with threadpool_limits(limits=1, user_api="blas"):
    for _ in range(3):
        model.forward_backward(idx, targets)
        optimizer.step(model.flat, model.grad_flat, 1e-4)
    spent.clear()
    t_fb = t_opt = 0.0
    for _ in range(STEPS):
        t0 = time.perf_counter()
        model.forward_backward(idx, targets)
        t1 = time.perf_counter()
        optimizer.step(model.flat, model.grad_flat, 1e-4)
        t_fb, t_opt = t_fb + t1 - t0, t_opt + time.perf_counter() - t1
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    t0 = time.perf_counter()
    a @ a
    peak = 2 * 2048 ** 3 / (time.perf_counter() - t0)
print(f"kernels={path} B={B}: 1-thread matmul peak {peak / 1e9:.1f} GFLOP/s; per step: forward+backward "
      f"{1e3 * t_fb / STEPS:.1f} ms, AdamW {1e3 * t_opt / STEPS:.1f} ms")
for name, t in sorted(spent.items(), key=lambda kv: -kv[1]):
    print(f"  {name:24s} {1e3 * t / STEPS:7.2f} ms")
print(f"  {'other':24s} {1e3 * (t_fb - sum(spent.values())) / STEPS:7.2f} ms")
