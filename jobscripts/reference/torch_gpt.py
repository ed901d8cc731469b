"""A PyTorch twin of hpclm's GPT, for comparison only (PyTorch is not a dependency of hpclm).

It starts from hpclm's initial parameters (same seed), trains on hpclm's batches with
torch.optim.AdamW and nanoGPT's schedule, and evaluates on hpclm's fixed validation batches, so
the two trajectories can be compared step by step and the final losses side by side:

    python jobscripts/reference/torch_gpt.py --config jobscripts/configs/shakespeare_char.toml --steps 2000
    python jobscripts/reference/torch_gpt.py --compare 50        # hpclm vs torch, loss per step
    python jobscripts/reference/torch_gpt.py --bench             # torch step time / MFU, bench-model config
"""
import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from hpclm.config import ModelConfig, OptimConfig, build_config
from hpclm.data import BatchSampler, eval_offsets, get_batch, load_tokens
from hpclm.model import GPT
from hpclm.optim import build_optimizer, clip_by_global_norm, lr_at


class TorchGPT(torch.nn.Module):
    """GPT-2 with hpclm's parameter names; hpclm stores weights (in, out), torch uses them as x @ W."""

    def __init__(self, hp_model, bias=True):
        """bias=False: biases stay zero and untrained, as nanoGPT's bias=False recipe has none."""
        super().__init__()
        self.cfg = hp_model.cfg
        self.p = torch.nn.ParameterDict({name.replace(".", "__"): torch.nn.Parameter(
            torch.tensor(np.array(v)), requires_grad=bias or not name.endswith("bias"))
            for name, v in hp_model.params.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, idx):
        B, T = idx.shape
        C, H = self.cfg.n_embd, self.cfg.n_head
        x = self.w("wte")[idx] + self.w("wpe")[:T]
        for i in range(self.cfg.n_layer):
            h = f"h.{i}."
            a = F.layer_norm(x, (C,), self.w(h + "ln_1.weight"), self.w(h + "ln_1.bias"))
            q, k, v = (a @ self.w(h + "attn.c_attn.weight") + self.w(h + "attn.c_attn.bias")).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + y @ self.w(h + "attn.c_proj.weight") + self.w(h + "attn.c_proj.bias")
            m = F.layer_norm(x, (C,), self.w(h + "ln_2.weight"), self.w(h + "ln_2.bias"))
            f = F.gelu(m @ self.w(h + "mlp.c_fc.weight") + self.w(h + "mlp.c_fc.bias"), approximate="tanh")
            x = x + f @ self.w(h + "mlp.c_proj.weight") + self.w(h + "mlp.c_proj.bias")
        x = F.layer_norm(x, (C,), self.w("ln_f.weight"), self.w("ln_f.bias"))
        return x @ self.w("wte").T

    def loss(self, idx, targets):
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def torch_optimizer(model, cfg):
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def train(cfg, steps, compare=False, bias=True):
    data = load_tokens(cfg.data, cfg.model.block_size)
    cfg.model.vocab_size = data.tokenizer.vocab_size
    hp = GPT(cfg.model, seed=cfg.train.seed, dtype="float32")
    tm = TorchGPT(hp, bias=bias)
    opt = torch_optimizer(tm, cfg.optim)
    hp_opt = build_optimizer(cfg.optim, hp) if compare else None
    sampler = BatchSampler(data.train, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)
    for step in range(steps):
        x, y = sampler.batch(step)
        lr = lr_at(step, cfg.optim, cfg.train.max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = tm.loss(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in tm.parameters() if p.requires_grad], cfg.optim.grad_clip)
        opt.step()
        if compare:
            hp_loss = hp.forward_backward(x, y)
            clip_by_global_norm(hp.grad_flat, cfg.optim.grad_clip)
            hp_opt.step(hp.flat, hp.grad_flat, lr)
            print(f"step {step}: torch {loss.item():.6f} hpclm {hp_loss:.6f} diff {loss.item() - hp_loss:+.2e}")
        elif (step + 1) % 250 == 0 or step == steps - 1:
            print(f"step {step + 1}: train loss {loss.item():.4f}", flush=True)
    offsets = eval_offsets(cfg.train.seed, cfg.train.eval_batches, cfg.train.batch_size,
                           len(data.val) - cfg.model.block_size)
    with torch.no_grad():
        losses = [tm.loss(*map(torch.from_numpy, get_batch(data.val, cfg.model.block_size, rows))).item()
                  for rows in offsets]
    print(f"torch reference{'' if bias else ' (no biases)'}: val loss {np.mean(losses):.4f} after {steps} steps "
          f"({cfg.train.eval_batches} fixed batches, as hpclm evaluates)")


def bench(threads, steps=20):
    torch.set_num_threads(threads)
    cfg = ModelConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=256)
    hp = GPT(cfg, seed=0)
    tm = TorchGPT(hp)
    opt = torch_optimizer(tm, OptimConfig())
    x = torch.randint(0, 65, (16, 128))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = tm.loss(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    a = torch.randn(2048, 2048)
    a @ a
    peak = max(2 * 2048 ** 3 / min(_timed(lambda: a @ a) for _ in range(5)), 1)
    flops = (6 * hp.num_params(non_embedding=True) + 12 * 4 * 256 * 128) * 16 * 128
    step = float(np.median(times))
    print(f"torch {torch.__version__}: step {step * 1e3:.1f} ms, {flops / step / 1e9:.1f} GFLOP/s, "
          f"peak {peak / 1e9:.1f} GFLOP/s, MFU {flops / step / peak:.3f}")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="jobscripts/configs/shakespeare_char.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--compare", type=int, metavar="N", help="run hpclm and torch side by side for N steps")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bias", action="store_true", help="train without biases (nanoGPT's bias=False)")
    args = p.parse_args()
    if args.bench:
        return bench(args.threads)
    torch.set_num_threads(args.threads)
    cfg = build_config(args.config, args.overrides)
    train(cfg, args.compare or args.steps, compare=bool(args.compare), bias=not args.no_bias)


if __name__ == "__main__":
    main()
