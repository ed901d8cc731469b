"""GPT-2 style language model with a hand-written forward and backward pass.

Pre-LayerNorm blocks: x += attn(ln_1(x)); x += mlp(ln_2(x)); then ln_f and an output head tied
to wte (or a separate lm_head.weight). Parameters and gradients are views into two flat buffers
(`model.flat`, `model.grad_flat`), named as GPT-2 names them. The model is the composition of
`model.units` (units.py: Embedding, Block 0..L-1, Head), each unit's parameters taken from a
source (default: these views) just before its forward and its backward.

Dimension legend: B batch, T time, C n_embd, V vocab, N = B * T.
"""
import numpy

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model import units as U
from hpclm.model.params import ParamLayout, gpt2_shapes

INIT_STD = 0.02


def count_params(layout, tie_weights, non_embedding=False):
    """Parameters of `layout`; non_embedding drops wpe (and wte unless it is also the output head)."""
    n = layout.size
    if non_embedding:
        n -= layout.by_name["wpe"].size
        if not tie_weights:
            n -= layout.by_name["wte"].size
    return n


class GPT:
    def __init__(self, cfg, seed=0, dtype="float32", flat=None, hooks=None):
        """flat: an existing parameter buffer to share (no initialisation), as the thread replicas do.
        hooks: Block hooks (units.IdentityHooks' methods) given to every block."""
        cfg.validate()
        if cfg.vocab_size < 1:
            raise UserError("model.vocab_size must be set (>= 1) to build a model")
        self.cfg = cfg
        self.dtype = numpy.dtype(dtype)
        self.layout = ParamLayout(self._shapes(cfg))
        xp = X.np
        self.flat = xp.zeros(self.layout.size, dtype=self.dtype) if flat is None else flat  # all parameters
        self.grad_flat = xp.zeros(self.layout.size, dtype=self.dtype)   # all gradients, same layout
        self.params = self.layout.views(self.flat)
        self.grads = self.layout.views(self.grad_flat)
        if flat is None:
            self.flat[...] = xp.asarray(self._initial_values(seed))
        self.hooks = hooks
        self.units = self._build_units(cfg, hooks)                     # Embedding, Block 0..L-1, Head
        U.check_tiling(self.units, self.layout)
        self._unit_offset = {u: U.param_range(u, self.layout)[0] for u in self.units}  # grad_ready's offsets
        self.resident = U.ResidentSource(self)
        self.activation_bytes_peak = 0                                 # set by forward_backward
        self.recompute = False                                         # parallel.recompute = block

    # A tensor-parallel shard (model/tensor_parallel.py ShardedGPT) overrides these three.
    def _shapes(self, cfg):
        return gpt2_shapes(cfg)

    def _build_units(self, cfg, hooks):
        return U.gpt_units(cfg, hooks)

    def _initial_values(self, seed, layout=None):
        """GPT-2 init of `layout` (default the model's), drawn on the host so every backend starts
        from the same numbers."""
        layout = layout or self.layout
        rng = numpy.random.default_rng(seed)
        flat = numpy.zeros(layout.size, dtype=self.dtype)
        proj_std = INIT_STD / numpy.sqrt(2 * self.cfg.n_layer)         # residual projections
        for s in layout.slots:
            view = flat[s.offset:s.offset + s.size]
            if s.name.endswith("ln_1.weight") or s.name.endswith("ln_2.weight") or s.name == "ln_f.weight":
                view[:] = 1.0
            elif len(s.shape) == 2:
                std = proj_std if s.name.endswith("c_proj.weight") else INIT_STD
                view[:] = rng.normal(0.0, std, s.size)
        return flat

    def num_params(self, non_embedding=False):
        """Parameter count; non_embedding drops wpe (and wte unless it is also the output head)."""
        return count_params(self.layout, self.cfg.tie_weights, non_embedding)

    def drop_gradients(self):
        """Free the flat gradient buffer: a source (ZeRO 2-3) hands each unit's backward its own."""
        self.grad_flat = self.grads = None

    def drop_parameters(self):
        """Free the flat parameter buffer: a source (ZeRO 3) hands each unit its parameters."""
        self.flat = self.params = None

    # ------------------------------------------------------------------------------------ forward
    def _check_input(self, idx, targets=None):
        if idx.ndim != 2 or idx.shape[1] > self.cfg.block_size or idx.shape[1] < 1:
            raise UserError(f"input must be (B, T) with 1 <= T <= block_size={self.cfg.block_size}, got {idx.shape}")
        if targets is not None and targets.shape != idx.shape:
            raise UserError(f"targets must have the shape of idx {idx.shape}, got {targets.shape}")

    def forward(self, idx, source=None):
        """idx (B, T) ints -> logits (B, T, V). Keeps no caches."""
        self._check_input(idx)
        source = source or self.resident
        B, T = idx.shape
        x, _ = U.forward_units(self.units[:-1], source, idx, B, T, keep=False)      # (N, C)
        head = self.units[-1]
        p, _ = source.acquire(head, "forward")
        logits = head.logits(p, x)                                                     # (N, V)
        source.release(head, "forward")
        return logits.reshape(B, T, -1)

    def loss(self, idx, targets, source=None):
        """Mean cross-entropy of targets (B, T) under the model, without gradients."""
        self._check_input(idx, targets)
        B, T = idx.shape
        loss, _ = U.forward_units(self.units, source or self.resident, idx, B, T, targets, keep=False)
        return float(loss)

    # ------------------------------------------------------------------------------------ backward
    def forward_backward(self, idx, targets, grad_ready=None, accumulate=False, timer=None, source=None):
        """Loss of targets (B, T) given idx (B, T); fills model.grads (zeroed first unless accumulate).

        grad_ready(offset), if given, is called as soon as every gradient at flat offsets
        [offset, size) is final (after the head, after each block from the last, after the
        embeddings: after each unit's release, at the unit's first offset), so a data-parallel
        strategy can start communicating those buckets early.
        timer (an hpclm.timing.Timer), if given, times the "forward" and "backward" regions.
        source: where each unit's parameters and gradients come from (units.py); default the
        model's own views. Sets activation_bytes_peak: the bytes of all caches at the end of forward
        (with self.recompute, blocks keep only their inputs and run their forward again in backward).
        """
        self._check_input(idx, targets)
        if not accumulate and self.grad_flat is not None:
            self.grad_flat.fill(0)
        source = source or self.resident
        B, T = idx.shape
        if timer:
            timer.start("forward")
        loss, caches = U.forward_units(self.units, source, idx, B, T, targets, recompute=self.recompute)
        self.activation_bytes_peak = U.activation_bytes(caches)    # caches only shrink from here
        if timer:
            timer.stop("forward")
            timer.start("backward")
        done = None if grad_ready is None else (lambda unit: grad_ready(self._unit_offset[unit]))
        U.backward_units(self.units, source, None, caches, unit_done=done)
        if timer:
            timer.stop("backward")
        return float(loss)
