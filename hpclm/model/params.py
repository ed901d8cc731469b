"""Flat parameter layout: every named tensor is a reshaped view into one contiguous 1-D buffer.

Gradients and optimizer states mirror the same layout, so a whole-model all-reduce is one call,
a bucket or a ZeRO shard is a slice, and a checkpoint is one dataset plus this index.
"""
from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple
    offset: int

    @property
    def size(self):
        return prod(self.shape)


class ParamLayout:
    """Ordered name -> (shape, offset) index of a flat buffer (GPT-2 names and order)."""

    def __init__(self, shapes):
        self.slots = []
        offset = 0
        for name, shape in shapes:
            self.slots.append(Slot(name, tuple(shape), offset))
            offset += prod(shape)
        self.size = offset
        self.by_name = {s.name: s for s in self.slots}

    def views(self, flat):
        """dict name -> writable view of `flat` with the tensor's shape."""
        assert flat.shape == (self.size,), (flat.shape, self.size)
        return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in self.slots}

    def decay_mask(self, xp, dtype):
        """1 for 2-D weights (weight decay applies), 0 for biases and LayerNorm gains (as GPT-2/nanoGPT)."""
        mask = xp.zeros(self.size, dtype=dtype)
        for s in self.slots:
            if len(s.shape) >= 2:
                mask[s.offset:s.offset + s.size] = 1
        return mask

    def index(self):
        """Plain-data description (for checkpoints): [(name, shape, offset), ...]."""
        return [(s.name, list(s.shape), s.offset) for s in self.slots]


def gpt2_shapes(cfg):
    """[(name, shape)] for a GPT-2 style model, weights stored (in, out) so y = x @ W + b."""
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    shapes = [("wte", (V, C)), ("wpe", (T, C))]
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes += [
            (p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (C, 4 * C)), (p + "mlp.c_fc.bias", (4 * C,)),
            (p + "mlp.c_proj.weight", (4 * C, C)), (p + "mlp.c_proj.bias", (C,)),
        ]
    shapes += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    if not cfg.tie_weights:
        shapes.append(("lm_head.weight", (C, V)))
    return shapes
