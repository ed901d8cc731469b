"""H = 1 against all-reduce DP (mpiexec -n 4 python h1_gap.py): the relative parameter gap
max|x - x_DP| / max|x_DP| and the loss gap after STEPS steps of a tiny model (float64, same global
batch, no clipping), for plain SGD (where the two are the same algorithm) and AdamW (where Adam's
moments see per-rank gradients under local SGD / DiLoCo, the averaged gradient under DP)."""
from types import SimpleNamespace

import numpy as np
from mpi4py import MPI

from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.timing.timer import Timer
from hpclm.train import train_step

STEPS, VOCAB, BLOCK, BATCH, SEED = 20, 29, 16, 48, 11
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=20000).astype(np.uint16)


def run(world, optim, sync, outer="average"):
    cfg = Config(model=MODEL, optim=OptimConfig(name=optim, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                                                decay_steps=STEPS, grad_clip=0.0))
    cfg.train.batch_size, cfg.train.dtype, cfg.train.max_steps = BATCH, "float64", STEPS
    cfg.parallel.sync, cfg.local.steps, cfg.local.outer = sync, 1, outer
    cfg.local.outer_lr, cfg.local.outer_momentum = 1.0, 0.0
    cfg.validate()
    model = GPT(MODEL, seed=SEED, dtype="float64")
    s = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=build_strategy(cfg, world, model),
                        sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=world.Get_rank(), world=world.Get_size()))
    for step in range(STEPS):
        loss, _, _ = train_step(s, step)
    return model.flat.copy(), world.allreduce(loss) / world.Get_size()


def main():
    world = MPI.COMM_WORLD
    for optim in ("sgd", "adamw"):
        ref, ref_loss = run(world, optim, "allreduce")
        for outer in ("average", "diloco"):
            x, loss = run(world, optim, "local", outer)
            gap = np.max(np.abs(x - ref)) / np.max(np.abs(ref))
            if world.Get_rank() == 0:
                print(f"P={world.Get_size()} {optim:5s} {outer:7s} H=1: parameter gap {gap:.2e}, "
                      f"train loss {loss:.6f} vs DP {ref_loss:.6f} ({100 * (loss / ref_loss - 1):+.3f} %)")


if __name__ == "__main__":
    main()
