"""The distributed optimizer of a pipeline stage (parallel.pp > 1), against the same contract as
every strategy (hpclm.parallel.optimizer):

    forward_backward   the step's micro-batches through the stage's schedule (parallel/pipeline.py)
    step(lr)           the tied wte's gradients summed over the first and last stage, the stage's
                       gradient averaged over its dp group (the plain bucketed all-reduce, 1/m
                       scaling), the global norm summed over the pipeline's stages (the tied copy
                       counted once), clip, the stage's own update
    loss               a forward-only pass through the pipeline (evaluation)
    checkpoint/restore the single-process layout: every stage's parameters and optimizer state
                       gathered to the pipeline's first rank (buffer Send/Recv), sliced on resume
                       (an interleaved stage's chunks each to their place: `ranges` holds every
                       pp rank's chunk ranges, hpclm.parallel.build.stage_ranges)

With parallel.zero = 1 (`zero`, a hpclm.parallel.zero.ZeroOptimizer over the stage's dp group) the
stage's optimizer state is sharded over its dp replicas: after the tied gradients are summed, its
step is ZeRO's (units reduce-scattered, the shard updated, one all-gather), its norm taken over the
pipeline through PipelineNorm; checkpoints gather the shards to dp rank 0 first.

The dp replicas of a stage hold equal parameters (checked like data parallelism); the two wte
copies of a tied model get equal gradients and equal updates, so they stay equal.
"""
import math

import numpy
from mpi4py import MPI

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model.params import ParamLayout, gpt2_shapes
from hpclm.model.stage import full_offsets, stage_layout
from hpclm.parallel.optimizer import CheckpointState, DistributedOptimizer
from hpclm.parallel.pipeline import PipelineEngine, PipelineNorm, stage_norm_squared

CKPT_TAG = 0x5053


class PipelineOptimizer(DistributedOptimizer):
    def __init__(self, model, optimizer, sync, optim_cfg, pp_comm, schedule_name, micro_batches, ranges,
                 timer=None, zero=None):
        super().__init__(model, optimizer, sync, optim_cfg, timer)
        self.pp, self.ranges, self.zero = pp_comm, ranges, zero
        self.engine = PipelineEngine(model, pp_comm, schedule_name, micro_batches)
        if zero is not None:
            zero.tensor_norm = PipelineNorm(pp_comm, model)

    @classmethod
    def over_zero(cls, zero, optim_cfg, pp_comm, schedule_name, micro_batches, ranges, timer=None):
        """The pipeline stage's optimizer with ZeRO-1 (`zero`) over its dp group."""
        return cls(zero.model, zero.optimizer, zero.sync, optim_cfg, pp_comm, schedule_name, micro_batches,
                   ranges, timer, zero=zero)

    def forward_backward(self, model, batches, timer=None):
        B, T = batches[0][0].shape
        return self.engine.loss_everywhere(self.engine.run(batches, B, T, timer))

    def step(self, lr):
        t, model = self.timer, self.model
        with t.region("comm"):
            self.engine.tie_gradients()
        if self.zero is not None:
            return self.zero.step(lr)
        self.sync.finish()
        with t.region("comm"):
            norm = self.global_norm()
        with t.region("optimizer"):
            clip = self.cfg.grad_clip
            if clip > 0 and norm > clip:
                model.grad_flat *= clip / (norm + 1e-6)
            self.optimizer.step(model.flat, model.grad_flat, lr)
        return norm

    def global_norm(self):
        """The whole model's gradient norm: the stages' squares summed over the pipeline."""
        return math.sqrt(self.pp.allreduce(stage_norm_squared(self.model)))

    def loss(self, model, idx, targets):
        """Forward only, virtual stage by virtual stage (blocking Send/Recv of the activation); the loss
        everywhere."""
        return self.engine.loss_everywhere(self.engine.forward_only(idx, targets, CKPT_TAG + 1))

    # ------------------------------------------------------------------------ checkpoints
    def _stage_rows(self):
        """This stage's parameters and optimizer states as one host array (1 + states, size), on dp
        rank 0 (None elsewhere: with ZeRO-1 the states' shards are gathered there, collectively)."""
        state = self.optimizer.state
        if self.zero is None:
            rows = [X.to_host(state[k]) for k in sorted(state)]
        else:
            rows = [self.zero._gather_full(state[k]) for k in sorted(state)]
        if self.rank != 0:
            return None
        return numpy.stack([X.to_host(self.model.flat)] + rows)

    def checkpoint(self):
        """Collective over the pipeline (on every dp rank; only dp rank 0's pipeline writes)."""
        rows = self._stage_rows()
        if self.rank != 0:                                   # not the dp group's first replica
            return None
        cfg, names = self.model.cfg, sorted(self.optimizer.state)
        if self.pp.Get_rank() != 0:
            self.pp.Send([rows, MPI.BYTE], 0, CKPT_TAG)
            return None
        full = numpy.zeros((rows.shape[0], ParamLayout(gpt2_shapes(cfg)).size), dtype=rows.dtype)
        for s, ranges in enumerate(self.ranges):
            layout, tied = stage_layout(cfg, ranges)
            part = rows if s == 0 else numpy.empty((rows.shape[0], layout.size), dtype=rows.dtype)
            if s:
                self.pp.Recv([part, MPI.BYTE], s, CKPT_TAG)
            for mine, theirs, n in full_offsets(cfg, layout, tied):
                full[:, theirs:theirs + n] = part[:, mine:mine + n]
        state = {"t": self.optimizer.t, **{k: full[1 + i] for i, k in enumerate(names)}}
        return CheckpointState(full[0], state, {}, ParamLayout(gpt2_shapes(cfg)))

    def _stage_part(self, row, full):
        """The stage's flat array (its layout, the tied copy from wte) of a single-process row."""
        out = numpy.empty(self.model.layout.size, dtype=self.model.dtype)
        for slot in self.model.layout.slots:
            src = full.by_name[slot.name]
            out[slot.offset:slot.offset + slot.size] = row[src.offset:src.offset + src.size]
        return out

    def restore(self, ckpt, step):
        """This stage's slices of the checkpoint's parameters and optimizer state (the tied copy
        from the full wte; with ZeRO-1 this dp rank's shard of them)."""
        full = ParamLayout(gpt2_shapes(self.model.cfg))
        ckpt.check_layout(full)
        self.model.flat[...] = X.to_device(self._stage_part(ckpt.params, full))
        lo, hi = (0, self.model.layout.size) if self.zero is None else self.zero.plan.shard(self.rank)
        for name, target in self.optimizer.state.items():
            if name not in ckpt.optim:
                raise UserError(f"checkpoint {ckpt.path} has no optimizer state {name!r}")
            target[...] = X.to_device(self._stage_part(ckpt.optim[name], full)[lo:hi])
        self.optimizer.t = ckpt.optim_t
        self.sync.step = step
