"""1-bit Adam (Tang et al. 2021; DeepSpeed's OnebitAdam) as a distributed optimizer: after a warm-up
of plain data-parallel AdamW, Adam's variance is frozen and AdamW's *momentum*, not the gradient,
goes through the 1-bit compressed all-reduce (parallel/onebit.py, with its worker and server error
buffers), one codec per gradient bucket.

Steps before `compress.warmup_steps`: gradients are averaged uncompressed (the plain sync) and AdamW
runs as usual; v freezes at `optim.freeze_variance_step` <= warmup_steps. After that, on rank r:

    g_r = local gradient (mean over micro-batches), clipped by its own norm (as DeepSpeed's
          engine clips before the step)
    p  -= lr wd mask p                         decoupled weight decay
    m_r = beta1 m + (1 - beta1) g_r            AdamW.update_moments (v frozen)
    m   = onebit_average(m_r)                  the same on every rank
    p  -= lr m_hat / (sqrt(v_hat) + eps)       AdamW.apply_moments

Momentum is the better thing to compress: it changes slowly from step to step, so the sign of the
error-compensated momentum is a much closer copy of it than the sign of a noisy per-rank gradient
is of the gradient. Bytes per rank per step are those of the 1-bit all-reduce (~32x fewer than
fp32). Regions: `optimizer` for the two AdamW halves, `compress` / `comm` / `decompress` for the
exchange (disjoint). Error buffers belong to the checkpoint (as for ef_sign).
"""
from hpclm.errors import UserError
from hpclm.optim import clip_by_global_norm
from hpclm.parallel.exchange import ONEBIT_BY_DEFAULT
from hpclm.parallel.onebit import OneBitAllreduce
from hpclm.parallel.optimizer import DistributedOptimizer
from hpclm.parallel.state import codecs_state, load_codecs_state


def check_config(cfg):
    """UserError unless cfg describes a runnable 1-bit Adam."""
    if cfg.compress.name not in ONEBIT_BY_DEFAULT:
        raise UserError(f"compress.onebit_adam needs compress.name ef_sign, not {cfg.compress.name!r}")
    if cfg.optim.name != "adamw":
        raise UserError(f"compress.onebit_adam needs optim.name adamw, not {cfg.optim.name!r}")
    warm, freeze = cfg.compress.warmup_steps, cfg.optim.freeze_variance_step
    if not 1 <= freeze <= warm:
        raise UserError(f"compress.onebit_adam needs 1 <= optim.freeze_variance_step ({freeze}) <= "
                        f"compress.warmup_steps ({warm}): v must be frozen before ranks see different gradients")


class OneBitAdam(DistributedOptimizer):
    """`sync` is the plain bucketed all-reduce of the warm-up; its buckets get one OneBitAllreduce each."""

    def __init__(self, model, optimizer, sync, optim_cfg, warmup_steps, timer=None):
        super().__init__(model, optimizer, sync, optim_cfg, timer)
        self.warmup_steps = warmup_steps
        self.codecs = [OneBitAllreduce(hi - lo, sync.world, sync.grad_flat.dtype) for lo, hi in sync.buckets]

    def _compressing(self):
        return self.sync.step >= self.warmup_steps

    def backward_hook(self, micro, n_micro):
        return None if self._compressing() else super().backward_hook(micro, n_micro)

    def step(self, lr):
        if not self._compressing():
            return super().step(lr)
        opt, m, grad, sync = self.optimizer, self.model, self.model.grad_flat, self.sync
        with self.timer.region("optimizer"):
            if sync.grad_scale != 1.0:
                grad *= grad.dtype.type(sync.grad_scale)
            norm = clip_by_global_norm(grad, self.cfg.grad_clip)
            opt.t += 1
            opt.decay(m.flat, lr)
            opt.update_moments(grad)
        momentum, wire = opt.state["exp_avg"], self.group if sync.world > 1 else None
        for (lo, hi), codec in zip(sync.buckets, self.codecs):
            codec.average(wire, momentum[lo:hi], sync.step, sync.algorithm, self.timer)
        with self.timer.region("optimizer"):
            opt.apply_moments(m.flat, lr)
        sync.step += 1
        return norm

    def local_state(self):
        return codecs_state(self.codecs)

    def load_local_state(self, flat):
        load_codecs_state(self.codecs, flat)
