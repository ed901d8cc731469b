"""In-process A/B of one training step's forward_backward: the fused GPT of an older checkout
(its hpclm/model/gpt.py loaded under another name, sharing today's layers.py) against today's
units-composed GPT, on `hpclm bench model`'s default shape, 1 BLAS thread, steps alternating
old/new. Prints the median wall and CPU (process) milliseconds of each and their ratios.

    python results/bench_model/units_ab.py /path/to/old/checkout [steps]
"""
import importlib.util
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hpclm.config import ModelConfig
from hpclm.model import GPT


def load_old_gpt(checkout):
    spec = importlib.util.spec_from_file_location("old_gpt", f"{checkout}/hpclm/model/gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT


def main(checkout, steps=40):
    cfg = ModelConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=256)
    models = {"old": load_old_gpt(checkout)(cfg, seed=0), "new": GPT(cfg, seed=0)}
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 65, (16, 128)), rng.integers(0, 65, (16, 128))
    times = {k: ([], []) for k in models}
    with threadpool_limits(limits=1, user_api="blas"):
        for step in range(steps + 3):
            order = ("old", "new") if step % 2 == 0 else ("new", "old")
            for k in order:
                w0, c0 = time.perf_counter(), time.process_time()
                loss = models[k].forward_backward(idx, targets)
                w1, c1 = time.perf_counter(), time.process_time()
                if step >= 3:                                  # 3 warm-up steps
                    times[k][0].append(w1 - w0)
                    times[k][1].append(c1 - c0)
            assert np.array_equal(models["old"].grad_flat, models["new"].grad_flat), "gradients differ"
    med = {k: (float(np.median(w)) * 1e3, float(np.median(c)) * 1e3) for k, (w, c) in times.items()}
    ratio_w = np.median(np.array(times["new"][0]) / np.array(times["old"][0]))
    ratio_c = np.median(np.array(times["new"][1]) / np.array(times["old"][1]))
    print(f"steps {steps} (after 3 warm-up), forward_backward only, B 16 T 128 L 4 H 4 C 256 float32, 1 BLAS thread")
    for k in ("old", "new"):
        print(f"{k}: median wall {med[k][0]:.1f} ms, median cpu {med[k][1]:.1f} ms")
    print(f"new/old per step pair: wall {ratio_w:.4f}, cpu {ratio_c:.4f}; last loss {float(loss):.6f}; "
          f"gradients bit-identical every step")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
