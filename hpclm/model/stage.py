"""A pipeline rank's model: one or more contiguous ranges (chunks) of the GPT's units with one flat buffer.

    stage = StageModel(cfg, [(0, 3)], seed=1337)            # one chunk: Embedding, Block 0, Block 1
    stage = StageModel(cfg, [(0, 2), (3, 4)], seed=1337)    # two chunks (interleaved): [Embedding,
                                                            # Block 0] and [Block 2]
    stage.chunks, stage.units, stage.flat, stage.grad_flat, stage.params, stage.grads, stage.layout
    stage = StageModel.of(model, ranges)                    # the stage of any built GPT-like model
                                                            # (e.g. a tensor-parallel ShardedGPT)

A range (first, stop) indexes the GPT's units (0 = Embedding, 1..L = blocks, L + 1 = Head). With
the interleaved schedule a rank holds v non-adjacent chunks, virtual stages s, s + p, s + 2p, ...
of the p v virtual stages (`interleave`); `chunks[c]` is chunk c's list of units, `units` all of
them in order. The flat layout holds the parameters the units own, in the GPT's order (so the
gradient sync, ZeRO, clipping and checkpoints see one buffer however many chunks it has); a
stage that holds the tied Head but not the Embedding keeps its own copy of wte after them
(Megatron's word embeddings on the last stage), initialised like the first stage's, whose
gradients the two stages sum (hpclm.parallel.pipeline) so that both copies stay equal. Initial
values are the full GPT's, so a pipeline starts from exactly the single-process model.
`StageModel.of(model, ...)` takes the stage of an already built model instead: of a
tensor-parallel ShardedGPT it is the dp x tp x pp grid's stage (hpclm.parallel.grid), its tensors
(the tied copy too) the tp rank's shards, its units the shard's vocab-parallel and tp-hooked ones.
No MPI here.

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
        raise UserError(f"the pipeline's {stages} stages (parallel.pp x parallel.chunks) must be between 1 and "
                        f"model.n_layer ({L}): every stage needs at least one block")
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


def interleave(ranges, ranks):
    """Virtual stages -> ranks: rank s holds ranges s, s + ranks, s + 2 ranks, ... (its chunks, in order)."""
    return [list(ranges[s::ranks]) for s in range(ranks)]


def stage_layout(cfg, ranges):
    """(layout of the stage's flat buffer, whether it holds a tied copy of wte) for the chunks `ranges`."""
    return _units_layout(ParamLayout(gpt2_shapes(cfg)), _chunks(U.gpt_units(cfg), ranges), cfg.tie_weights)


def _chunks(units, ranges):
    """[units of each range]; UserError for an empty one or ranges out of order."""
    out = [units[first:stop] for first, stop in ranges]
    if not ranges or not all(out) or any(a[1] > b[0] for a, b in zip(ranges, ranges[1:])):
        raise UserError(f"pipeline stage with unit ranges {list(ranges)}: every chunk must hold a unit, "
                        f"in order")
    return out


def _units_layout(model_layout, chunks, tie_weights):
    """The stage layout of the units of `chunks` (ranges of a model whose flat layout is
    `model_layout`), the tensors' shapes taken from it (a tensor-parallel shard's are its shards)."""
    units = [u for chunk in chunks for u in chunk]
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

    def __init__(self, cfg, ranges, seed=0, dtype="float32"):
        self._take(GPT(cfg, seed=seed, dtype=dtype), ranges)   # the same initial values as one process

    @classmethod
    def of(cls, model, ranges):
        """The stage of chunks `ranges` [(first, stop)] of a built GPT-like model (a GPT, or a tp shard
        ShardedGPT whose `tensor` and shard `specs` the stage keeps): its units, their tensors'
        current values."""
        stage = cls.__new__(cls)
        stage._take(model, ranges)
        if getattr(model, "specs", None) is not None:
            stage.tensor = model.tensor
            stage.specs = {s.name: model.specs[s.name] for s in stage.layout.slots}
        return stage

    def _take(self, full, ranges):
        cfg = full.cfg
        self.chunks = _chunks(full.units, ranges)                   # [[unit]] per chunk
        self.layout, self.tied_copy = _units_layout(full.layout, self.chunks, cfg.tie_weights)
        self.cfg, self.dtype, self.ranges = cfg, full.dtype, [tuple(r) for r in ranges]
        self.units = [u for chunk in self.chunks for u in chunk]
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

    @property
    def first(self):
        """The first unit this rank holds (0: the Embedding)."""
        return self.ranges[0][0]

    @property
    def stop(self):
        """One past the last unit this rank holds (n_layer + 2: the Head)."""
        return self.ranges[-1][1]

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
