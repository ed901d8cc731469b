"""The dp x tp x pp grid: a pipeline stage whose model is a tensor-parallel shard.

    stage = build_grid_stage(cfg, groups, timer)       # StageModel.of(ShardedGPT, the rank's chunk ranges)
    strategy = GridOptimizer(stage, ...)                # parallel/build.py builds it for tp > 1, pp > 1

Every world rank holds stage `pp_idx` of tp rank `tp_idx`'s shard (hpclm.comm.layout). What each
group does:

    tp  (within a stage)  the Megatron collectives of the stage's units (parallel/tensor.py): the
                          vocab-parallel embedding on the first stage, the vocab-parallel head and
                          loss on the last, the column/row pairs of every block
    pp  (one per dp, tp)  the pipeline schedule (parallel/pipeline.py): (B T, C) activations and
                          their gradients between tp rank t of stage s and tp rank t of stage s +- 1;
                          the tied wte's vocab shard summed between the first and last stage
    dp  (one per pp, tp)  the stage shard's gradient averaged (the plain bucketed all-reduce)

The clipping norm is the whole model's: per rank the stage shard's squares with the replicated
tensors (LayerNorms, row biases, wpe) weighted 1/tp and the tied copy left out, summed over tp
and over pp. Evaluation and the loss come from the last stage (PipelineOptimizer). Checkpoints
are the single-process file: each stage unsharded over its tp group, then the stages gathered
over the pipeline of dp rank 0, tp rank 0 (world rank 0); restoring slices the full model to the
stage's shard, so a run resumes on any layout (tp = 1, pp = 1 or another grid).
"""
import math

import numpy

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model.params import ParamLayout, gpt2_shapes
from hpclm.model.stage import StageModel, full_offsets, stage_layout
from hpclm.model.tensor_parallel import replicated_spans, shard_flat, shard_specs, unshard_flat
from hpclm.parallel.build import stage_ranges
from hpclm.parallel.optimizer import CheckpointState
from hpclm.parallel.pipeline_optimizer import PipelineOptimizer
from hpclm.parallel.replicas import check_identical
from hpclm.parallel.tensor import TensorNorm, build_tensor_model, sum_spans


def build_grid_stage(cfg, groups, timer=None):
    """This rank's stage (its pp index) of its tp shard (its tp index)."""
    return StageModel.of(build_tensor_model(cfg, groups.tp, timer), stage_ranges(cfg)[groups.pp.Get_rank()])


class GridOptimizer(PipelineOptimizer):
    """PipelineOptimizer on a tensor-parallel stage: the norm over tp x pp, checkpoints unsharded."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.hooks = model.tensor
        self.tp = self.hooks.comm
        self.replicated = replicated_spans(model.layout, model.specs)
        self.norm = TensorNorm(self.tp, self.replicated)

    def step(self, lr):
        """Under sequence parallelism the replicated tensors' gradients are partial sums over this
        rank's token rows: summed over the tp group first; then the pipeline's step."""
        if self.hooks.sequence_parallel:
            sum_spans(self.hooks, self.model.grad_flat, self.replicated)
        return super().step(lr)

    def global_norm(self):
        model = self.model
        sq = self.norm.local_squares(model.grad_flat)
        if model.tied_copy:                                # the first stage counts the tied wte
            w = model.grads["wte"].reshape(-1)
            sq -= float(X.array_module(w).dot(w, w))
        return math.sqrt(self.pp.allreduce(self.norm.total(sq)))

    def check_replicas(self, step):
        """The stage's dp replicas agree, and its replicated tensors across the tp group."""
        super().check_replicas(step)
        if self.hooks.size > 1:
            flat = self.model.flat
            replicated = numpy.concatenate([X.to_host(flat[a:b]) for a, b in self.replicated])
            check_identical(self.tp, replicated, step, "replicated parameters (LayerNorms, row biases, wpe)")

    # ------------------------------------------------------------------------ checkpoints
    def _unsharded_rows(self, shards):
        """Every tp rank's (1 + states, shard size) rows -> (1 + states, stage size) in the stage's
        unsharded layout (hpclm.model.stage.stage_layout)."""
        m = self.model
        layout, _ = stage_layout(m.cfg, m.ranges)
        specs = [shard_specs(m.cfg, len(shards), r) for r in range(len(shards))]
        return numpy.stack([unshard_flat([s[i] for s in shards], layout, m.layout, specs)
                            for i in range(shards[0].shape[0])])

    def checkpoint(self):
        """Collective over the world: the single-process CheckpointState on world rank 0."""
        rows = self._stage_rows()
        if self.rank != 0:                                  # not the stage's first dp replica
            return None
        shards = self.tp.gather(rows, root=0) if self.hooks.size > 1 else [rows]
        if self.hooks.rank != 0:
            return None
        stages = self.pp.gather(self._unsharded_rows(shards), root=0)
        if self.pp.Get_rank() != 0:
            return None
        cfg, names = self.model.cfg, sorted(self.optimizer.state)
        full_layout = ParamLayout(gpt2_shapes(cfg))
        full = numpy.zeros((rows.shape[0], full_layout.size), dtype=rows.dtype)
        for part, ranges in zip(stages, self.ranges):
            layout, tied = stage_layout(cfg, ranges)
            for mine, theirs, n in full_offsets(cfg, layout, tied):
                full[:, theirs:theirs + n] = part[:, mine:mine + n]
        state = {"t": self.optimizer.t, **{k: full[1 + i] for i, k in enumerate(names)}}
        return CheckpointState(full[0], state, {}, full_layout)

    def restore(self, ckpt, step):
        """The stage's shard of a single-process checkpoint's parameters and optimizer state (the
        tied copy from the full wte)."""
        m = self.model
        full = ParamLayout(gpt2_shapes(m.cfg))
        ckpt.check_layout(full)
        rows = {"params": ckpt.params, **ckpt.optim}
        for name, target in {"params": m.flat, **self.optimizer.state}.items():
            if name not in rows:
                raise UserError(f"checkpoint {ckpt.path} has no optimizer state {name!r}")
            local = shard_flat(numpy.asarray(rows[name]), full, m.layout, m.specs)
            target[...] = X.to_device(local.astype(m.dtype, copy=False))
        self.optimizer.t = ckpt.optim_t
        self.sync.step = step
