"""`hpclm memory`: the per-rank memory of a config on a world of any size, ZeRO stages 0-3, predicted
by the plans the strategies allocate from (hpclm.parallel.memory), without allocating anything.

    hpclm memory --config jobscripts/configs/gpt3_175b.toml --world 1024
    hpclm memory --set model.n_layer=12 --set model.n_embd=768 --set model.vocab_size=50257 --world 8 --zero 3
"""
import numpy as np

from hpclm.config import build_config
from hpclm.errors import UserError
from hpclm.model.params import ParamLayout, gpt2_shapes
from hpclm.model.units import gpt_units
from hpclm.parallel.memory import activation_bytes, peak_live_elements, planned_memory

UNITS = (("GiB", float(1 << 30)), ("MiB", float(1 << 20)))


def add_arguments(p):
    p.add_argument("--config", metavar="TOML", help="experiment file (as for hpclm train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--world", type=int, required=True, help="number of ranks (the dp group: tp = pp = 1)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="only this stage (default: all, and parallel.zero "
                   "is ignored)")


def rows(cfg, world):
    """[(stage, {kind: bytes})] per rank (rank 0: the largest shard) for stages 0-3."""
    if cfg.model.vocab_size < 1:
        raise UserError("hpclm memory needs model.vocab_size (the tokenizer is not read here)")
    layout = ParamLayout(gpt2_shapes(cfg.model))
    itemsize = np.dtype(cfg.train.dtype).itemsize
    micro = cfg.train.batch_size // (world * cfg.train.grad_accum)
    if micro < 1 or cfg.train.batch_size % (world * cfg.train.grad_accum):
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by world x grad_accum "
                        f"({world} x {cfg.train.grad_accum})")
    out = []
    for stage in range(4):
        live_params, live_grads = peak_live_elements(gpt_units(cfg.model), layout, stage,
                                                     overlap=cfg.comm.overlap and world > 1)
        held = planned_memory(stage, layout, world, 0, cfg.optim.name, itemsize, live_params, live_grads)
        held["activations"] = activation_bytes(cfg.model, micro, cfg.model.block_size, itemsize,
                                               recompute=cfg.parallel.recompute == "block")
        out.append((stage, held))
    return layout.size, micro, out


def run(args):
    if args.world < 1:
        raise UserError(f"--world must be >= 1, got {args.world}")
    cfg = build_config(args.config, args.overrides)
    psi, micro, table = rows(cfg, args.world)
    print(f"{psi:,} parameters ({psi / 1e9:.2f} B), {cfg.train.dtype}, optimizer {cfg.optim.name}, "
          f"{args.world} ranks, micro-batch {micro} x {cfg.model.block_size} tokens per rank")
    name, unit = next((u for u in UNITS if max(sum(h.values()) for _, h in table) >= u[1]), UNITS[-1])
    print(f"{'stage':>5} {'params':>10} {'grads':>10} {'optimizer':>10} {'activations':>12} {'total':>10}  {name} per rank")
    for stage, held in table:
        if args.zero is not None and stage != args.zero:
            continue
        total = sum(held.values())
        print(f"{stage:>5} " + " ".join(f"{held[k] / unit:>{w}.3f}" for k, w in
                                        (("params", 10), ("grads", 10), ("optimizer", 10), ("activations", 12)))
              + f" {total / unit:>10.3f}")
    print("params / grads include the temporary unit buffers alive at the peak (stages 2-3); activations: "
          "the caches of one micro-batch's forward (parallel.recompute = block: "
          "block inputs only; one block's cache comes back during backward)")
    return 0
