"""1-bit Adam (Tang et al. 2021; DeepSpeed's OnebitAdam): after a warm-up of plain data-parallel
AdamW, Adam's variance is frozen and AdamW's *momentum*, not the gradient, goes through the 1-bit
compressed all-reduce (parallel/onebit.py, with its worker and server error buffers).

Steps before `compress.warmup_steps`: gradients are averaged uncompressed (DataParallel) and AdamW
runs as usual; v freezes at `optim.freeze_variance_step` <= warmup_steps. After that, on rank r:

    g_r = local gradient, clipped by its own norm (as DeepSpeed's engine clips before the step)
    m_r = beta1 m + (1 - beta1) g_r          AdamW's own momentum update (optim.AdamW.momentum_hook)
    m   = onebit_average(m_r)                 the same on every rank
    p  -= lr (m_hat / (sqrt(v_hat) + eps)) + decoupled weight decay

Momentum is the better thing to compress: it changes slowly from step to step, so the sign of
the error-compensated momentum is a much closer copy of it than the sign of a noisy per-rank
gradient is of the gradient. Bytes per rank per step are those of the 1-bit all-reduce
(~32x fewer than fp32). The exchange runs inside the optimizer step; its compress / comm /
decompress time is moved out of the `optimizer` region into its own regions, so the timing
record's regions stay disjoint. Error buffers belong to the checkpoint (as for ef_sign).
"""
from hpclm.errors import UserError
from hpclm.parallel.compressed import CompressedDataParallel, STRATEGY
from hpclm.parallel.onebit import OneBitAllreduce
from hpclm.timing.timer import Timer


def check_config(cfg):
    """UserError unless cfg describes a runnable 1-bit Adam."""
    if STRATEGY.get(cfg.compress.name) != "onebit":
        raise UserError(f"compress.onebit_adam needs compress.name ef_sign or onebit, not {cfg.compress.name!r}")
    if cfg.optim.name != "adamw":
        raise UserError(f"compress.onebit_adam needs optim.name adamw, not {cfg.optim.name!r}")
    warm, freeze = cfg.compress.warmup_steps, cfg.optim.freeze_variance_step
    if not 1 <= freeze <= warm:
        raise UserError(f"compress.onebit_adam needs 1 <= optim.freeze_variance_step ({freeze}) <= "
                        f"compress.warmup_steps ({warm}): v must be frozen before ranks see different gradients")


class OneBitAdamDataParallel(CompressedDataParallel):
    """Uncompressed gradient averaging for the warm-up, then the momentum's 1-bit average, one
    OneBitAllreduce (own error buffers) per gradient bucket, run from AdamW's momentum hook."""

    def __init__(self, mpi_comm, grad_flat, cfg, optimizer, timer=None, grad_scale=1.0):
        world = mpi_comm.Get_size()
        super().__init__(mpi_comm, grad_flat, cfg.comm, lambda n, dtype: OneBitAllreduce(n, world, dtype),
                         timer=timer, grad_scale=grad_scale, strategy="onebit",
                         warmup_steps=cfg.compress.warmup_steps)
        self._compressing = False            # True from finish() to the optimizer step of a compressed step
        self._spent = Timer()                # the exchange's regions, moved out of `optimizer` each step
        optimizer.momentum_hook = self.average_momentum

    def backward_hook(self, last_micro):
        return super().backward_hook(last_micro) if self.step < self.warmup_steps else None

    def finish(self):
        """Warm-up: average the gradient. Afterwards: only scale it (1 / grad_accum); it stays local."""
        self._compressing = self.step >= self.warmup_steps
        if not self._compressing:
            super().finish()
            return
        for i in range(len(self.buckets)):
            self._job(i)
        self.step += 1

    def average_momentum(self, m):
        """AdamW's momentum hook: m (size,) <- its 1-bit compressed average over the ranks."""
        if not self._compressing:
            return
        wire = self.comm if self.world > 1 else None
        for (lo, hi), comp in zip(self.buckets, self.compressors):
            comp.allreduce(wire, m[lo:hi], algorithm=self.cfg.algorithm, timer=self._spent)
        self._compressing = False
        regions = self._spent.collect()
        if self.timer:
            for region, seconds in regions.items():
                self.timer.add(region, seconds)
            self.timer.add("optimizer", -sum(regions.values()))     # the loop times the step as `optimizer`
