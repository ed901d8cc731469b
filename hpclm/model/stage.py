"""A pipeline stage's model: a contiguous range of the GPT's units with its own flat buffers.

    stage = StageModel(cfg, first=0, stop=3, seed=1337)   # Embedding, Block 0, Block 1
    stage.units, stage.flat, stage.grad_flat, stage.params, stage.grads, stage.layout
    stage = StageModel.of(model, first, stop)              # the stage of any built GPT-like model
                                                           # (e.g. a tensor-parallel ShardedGPT)

`first`/`stop` index the GPT's units (0 = Embedding, 1..L = blocks, L + 1 = Head). The stage's
flat layout holds the parameters its units own, in the GPT's order; a stage that holds the tied
Head but not the Embedding keeps its own copy of wte after them (Megatron's word embeddings on
the last stage), initialised like the first stage's, whose gradients the two stages sum
(hpclm.parallel.pipeline) so that both copies stay equal. Initial values are the full GPT's, so a
pipeline starts from exactly the single-process model. `StageModel.of(model, ...)` takes the stage
of an already built model instead: of a tensor-parallel ShardedGPT it is the dp x tp x pp grid's
stage (hpclm.parallel.grid), its tensors (the tied copy too) the tp rank's shards, its units the
shard's vocab-parallel and tp-hooked ones. No MPI here.

`balanced_ranges(cfg, stages)` cuts the units into stages of about equal parameter counts.
"""
import numpy

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model import units as U
from hpclm.model.gpt import GPT
from hpclm.model.params import ParamLayout, gpt2_shapes


def unit_sizes(cfg):
    """Parameter count of each of the GPT's units (Embedding, blocks, Head)."""
    full = ParamLayout(gpt2_shapes(cfg))
    return [sum(full.by_name[n].size for n in u.names) for u in U.gpt_units(cfg)]


def ranges_from_layers(cfg, stage_layers):
    """[(first, stop)] unit ranges from the number of blocks per stage (the Embedding joins the first
    stage, the Head the last)."""
    if sum(stage_layers) != cfg.n_layer or min(stage_layers) < 0:
        raise UserError(f"parallel.stage_layers {list(stage_layers)} must be non-negative and sum to "
                        f"model.n_layer ({cfg.n_layer})")
    out, at = [], 1
    for s, n in enumerate(stage_layers):
        first = 0 if s == 0 else at
        at += n
        stop = at + 1 if s == len(stage_layers) - 1 else at
        out.append((first, stop))
    return out


def balanced_ranges(cfg, stages):
    """[(first, stop)] unit ranges of `stages` stages whose parameter counts are as equal as block
    boundaries allow: stage k starts where the running count is nearest k / stages of the total,
    keeping at least one block per stage (the Embedding joins the first, the Head the last)."""
    L = cfg.n_layer
    if not 1 <= stages <= L:
        raise UserError(f"parallel.pp ({stages}) must be between 1 and model.n_layer ({L}): "
                        f"every stage needs at least one block")
    sizes = unit_sizes(cfg)
    prefix = numpy.concatenate([[0], numpy.cumsum(sizes)])     # prefix[c] = parameters of units < c
    cuts, lo = [], 2
    for k in range(1, stages):
        hi = L - (stages - k) + 1                               # leave a block for every later stage
        best = min(range(lo, hi + 1), key=lambda c: abs(prefix[c] - prefix[-1] * k / stages))
        cuts.append(best)
        lo = best + 1
    bounds = [0] + cuts + [L + 2]
    return list(zip(bounds[:-1], bounds[1:]))


def stage_layout(cfg, first, stop):
    """(layout of the stage's flat buffer, whether it holds a tied copy of wte) for units [first, stop)."""
    return _units_layout(ParamLayout(gpt2_shapes(cfg)), U.gpt_units(cfg)[first:stop], cfg.tie_weights, first, stop)


def _units_layout(model_layout, units, tie_weights, first, stop):
    """The stage layout of `units` (a range of a model whose flat layout is `model_layout`), the
    tensors' shapes taken from it (a tensor-parallel shard's are its shards)."""
    if not units:
        raise UserError(f"pipeline stage with units [{first}, {stop}) holds no unit")
    names = [n for u in units for n in u.names]
    tied_copy = isinstance(units[-1], U.Head) and tie_weights and not isinstance(units[0], U.Embedding)
    if tied_copy:
        names.append("wte")
    return ParamLayout([(n, model_layout.by_name[n].shape) for n in names]), tied_copy


def full_offsets(cfg, layout, tied_copy):
    """[(stage offset, full-model offset, size)] of a stage layout's slots but the tied copy: where
    the stage's parameters sit in the single-process flat layout (for checkpoints)."""
    full = ParamLayout(gpt2_shapes(cfg))
    return [(s.offset, full.by_name[s.name].offset, s.size) for s in layout.slots
            if not (tied_copy and s.name == "wte")]


class StageModel:
    tensor = None                  # a tensor-parallel shard's tp collectives (parallel/tensor.py)
    specs = None                   # and its {name: Shard or None} of the stage's tensors

    def __init__(self, cfg, first, stop, seed=0, dtype="float32"):
        self._take(GPT(cfg, seed=seed, dtype=dtype), first, stop)   # the same initial values as one process

    @classmethod
    def of(cls, model, first, stop):
        """The stage [first, stop) of a built GPT-like model (a GPT, or a tp shard ShardedGPT whose
        `tensor` and shard `specs` the stage keeps): its units, their tensors' current values."""
        stage = cls.__new__(cls)
        stage._take(model, first, stop)
        if getattr(model, "specs", None) is not None:
            stage.tensor = model.tensor
            stage.specs = {s.name: model.specs[s.name] for s in stage.layout.slots}
        return stage

    def _take(self, full, first, stop):
        cfg = full.cfg
        self.layout, self.tied_copy = _units_layout(full.layout, full.units[first:stop], cfg.tie_weights,
                                                    first, stop)
        self.cfg, self.dtype, self.first, self.stop = cfg, full.dtype, first, stop
        self.units = full.units[first:stop]
        names = [s.name for s in self.layout.slots]
        xp = X.np
        self.flat = xp.zeros(self.layout.size, dtype=self.dtype)
        self.grad_flat = xp.zeros(self.layout.size, dtype=self.dtype)
        self.params = self.layout.views(self.flat)
        self.grads = self.layout.views(self.grad_flat)
        for n in names:
            self.params[n][...] = full.params[n]
        self.resident = U.ResidentSource(self)
        self.activation_bytes_peak = 0
        self.recompute = False                                  # parallel.recompute = block

    def boundary_rows(self, n):
        """Rows of the (n, C) activation that crosses the stage's boundaries: all n, or under
        sequence parallelism this tp rank's block of them."""
        if self.tensor is None:
            return n
        lo, hi = self.tensor.rows(n)
        return hi - lo

    def num_params(self):
        """Parameters of this stage (the tied copy included)."""
        return self.layout.size
