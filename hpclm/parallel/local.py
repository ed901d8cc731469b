"""Local SGD (post-local SGD, Lin et al. 2020) and DiLoCo (Douillard et al. 2023, arXiv 2311.08105)
as a distributed optimizer (`parallel.sync = local`, the [local] config section): every rank of the
dp group trains alone on its own gradient and the replicas meet only every H steps (every step for
the first K, post-local SGD's warm-up).

    step t = 1, 2, ... on rank r (x_r: its parameters, a: the anchor = the last synchronised model)
        g_r  = this rank's gradient (mean over its micro-batches); nothing exchanged
        clip g_r by its own norm; x_r <- inner optimizer step (optim.name; its state is rank r's)
        if t <= K or t % H == 0:                                     a synchronisation
          local.outer = average:  x_r <- mean_r x_r                  hpclm.comm.allreduce (comm.algorithm)
          local.outer = diloco:   d   = mean_r (a - x_r)             the pseudo-gradient, through the
                                                                     compress.name codec (error feedback
                                                                     as configured; none: all-reduce)
                                  m  <- mu m + d                     outer Nesterov SGD (PyTorch's form):
                                  a  <- a - lr_out (d + mu m)        lr_out = local.outer_lr, mu = local.outer_momentum
                                  x_r <- a                           every rank restarts from the anchor

With plain SGD, H = 1 and no clipping this is all-reduce data parallelism (averaging parameters is
averaging gradients), and so is DiLoCo with lr_out = 1, mu = 0; with AdamW the moments see per-rank
gradients and the two differ by design.

Bytes: a synchronisation moves one model (local SGD) or one compressed pseudo-gradient (DiLoCo)
through hpclm.comm, counted under the dp group; steps in between move nothing.
`uncompressed_bytes()` is what all-reduce DP sends every step, so `hpclm analyze`'s compression
ratio is the saving. Regions: `optimizer` (inner and outer updates), `comm` (and `compress` /
`decompress` for a codec).

Replicas differ between synchronisations: `check_replicas` checks them only right after one.
Evaluation and a checkpoint's `params` use x̄ = mean_r x_r (right after a synchronisation: the
model every rank holds), averaged by MPI's own Allreduce into a host buffer once per evaluation
or checkpoint (bookkeeping, not counted as training bytes). The checkpoint's optimizer state is the
mean of the ranks' inner states; every rank's parameters, inner state, the anchor, the outer
momentum and the codec's error buffers go to /extra as (P, ...) rows, and resuming with the same dp
size hands each rank its row (the run continues bit for bit, mid-period too). Another dp size
resumes every rank from x̄ with the anchor and outer momentum (equal on every rank) kept.
"""

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.optim import build_optimizer
from hpclm.parallel.optimizer import CheckpointState, DistributedOptimizer
from hpclm.parallel.replicas import check_identical, mean_over
from hpclm.parallel.state import codecs_state, gather_states, load_codecs_state
from hpclm.parallel.sync import GradSync


def build_local(cfg, group, model, timer=None, make_codec=None):
    """The LocalSGD strategy of cfg ([local], [optim], comm.algorithm) over the dp `group`;
    `make_codec(n, dtype)` the pseudo-gradient's codec (None: plain all-reduce)."""
    sync = OwnGradient(group, model.grad_flat, grad_scale=1.0 / cfg.micro_batches(), timer=timer)
    codec = make_codec(model.flat.shape[0], model.flat.dtype) if make_codec else None
    return LocalSGD(model, build_optimizer(cfg.optim, model), sync, cfg.optim, cfg.local, cfg.comm.algorithm,
                    codec, timer)


def last_sync(t, steps, warmup_steps):
    """Finished steps at the latest synchronisation at or before step count t (0: the start)."""
    if t <= warmup_steps:
        return t
    return max(warmup_steps, (t // steps) * steps)


class OwnGradient(GradSync):
    """The gradient stays this rank's own: only scaled to the mean over its micro-batches."""

    def average(self):
        if self.grad_scale != 1.0:
            self.grad_flat *= self.grad_flat.dtype.type(self.grad_scale)


class LocalSGD(DistributedOptimizer):
    """Local SGD (local.outer = average) or DiLoCo (diloco); see the module docstring."""

    def __init__(self, model, optimizer, sync, optim_cfg, local_cfg, algorithm, codec=None, timer=None):
        super().__init__(model, optimizer, sync, optim_cfg, timer)
        self.H, self.K = local_cfg.steps, local_cfg.warmup_steps
        self.diloco = local_cfg.outer == "diloco"
        self.outer_lr, self.outer_momentum = local_cfg.outer_lr, local_cfg.outer_momentum
        self.algorithm, self.codec = algorithm, codec
        flat = model.flat
        self.anchor = flat.copy() if self.diloco else None                       # (size,) a
        self.momentum = X.np.zeros_like(flat) if self.diloco else None           # (size,) m
        self._delta = X.np.empty_like(flat) if self.diloco else None             # (size,) d, reused
        self.synced_at = 0            # finished steps at the last synchronisation (0: identical at the start)
        self._mean, self._mean_at = None, None   # x̄ on the device for evaluation, and its step count

    def _wire(self):
        return self.group if self.sync.world > 1 else None

    def step(self, lr):
        """The rank's own clipped gradient through the inner optimizer; then a synchronisation if due."""
        norm = super().step(lr)
        t = self.sync.step
        if t <= self.K or t % self.H == 0:
            self._synchronise(t)
        return norm

    def _synchronise(self, t):
        flat, wire, timer = self.model.flat, self._wire(), self.timer
        if not self.diloco:
            if wire is not None:
                with timer.region("comm"):
                    collectives.allreduce(wire, flat, op="average", algorithm=self.algorithm)
        else:
            d, m = self._delta, self.momentum
            with timer.region("optimizer"):
                X.array_module(flat).subtract(self.anchor, flat, out=d)          # (size,) a - x_r
            if self.codec is not None:
                self.codec.average(wire, d, t, self.algorithm, timer)
            elif wire is not None:
                with timer.region("comm"):
                    collectives.allreduce(wire, d, op="average", algorithm=self.algorithm)
            with timer.region("optimizer"):
                mu = d.dtype.type(self.outer_momentum)
                m *= mu
                m += d                                                            # m <- mu m + d
                if self.outer_momentum:
                    d += mu * m                                                   # Nesterov: d + mu m
                d *= d.dtype.type(self.outer_lr)
                self.anchor -= d
                flat[...] = self.anchor
        self.synced_at = t

    def _synced(self):
        return self.sync.step == self.synced_at

    def check_replicas(self, step):
        """Replicas must agree right after a synchronisation; in between they differ by design."""
        if self._synced():
            check_identical(self.group, self.model.flat, step)

    # ------------------------------------------------------------------------ evaluation
    def loss(self, model, idx, targets):
        """The loss of x̄ (collective on the first call after a step, when the replicas differ)."""
        if self._synced():
            return model.loss(idx, targets)
        if self._mean_at != self.sync.step:
            self._mean = X.to_device(mean_over(self.group, model.flat))
            self._mean_at = self.sync.step
        own = model.flat.copy()
        try:
            model.flat[...] = self._mean
            return model.loss(idx, targets)
        finally:
            model.flat[...] = own

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self):
        """Collective: params x̄, the mean inner optimizer state, every rank's own state in extra."""
        params = mean_over(self.group, self.model.flat)
        optim_state = {name: mean_over(self.group, buf) for name, buf in self.optimizer.state.items()}
        extra = gather_states(self.group, self.local_state())
        if self.rank != 0:
            return None
        return CheckpointState(params, {"t": self.optimizer.t, **optim_state}, extra, self.model.layout)

    def restore(self, ckpt, step):
        ckpt.restore(self.model, self.optimizer)                  # x̄ and the mean inner state
        world = 1 if self.group is None else self.group.Get_size()
        rows = ckpt.extra.get("local.params")
        if rows is not None and rows.shape[0] == world:
            self._restore_sync(ckpt, step)                        # this rank's own row of everything
            self.synced_at = last_sync(step, self.H, self.K)
        else:                                                     # another dp size: everyone from x̄
            if self.diloco and "local.anchor" in ckpt.extra:
                self.anchor[...] = X.to_device(ckpt.extra["local.anchor"][0])
                self.momentum[...] = X.to_device(ckpt.extra["local.outer_momentum"][0])
            elif self.diloco:
                self.anchor[...] = self.model.flat
            self.sync.step = self.synced_at = step
        self._mean_at = None

    def local_state(self):
        """This rank's parameters, inner optimizer state, anchor, outer momentum, codec state (host)."""
        state = {"local.params": self.model.flat}
        state.update({f"local.optim.{name}": buf for name, buf in self.optimizer.state.items()})
        if self.diloco:
            state.update({"local.anchor": self.anchor, "local.outer_momentum": self.momentum})
        state = {name: X.to_host(a) for name, a in state.items()}
        if self.codec is not None:
            state.update(codecs_state([self.codec]))
        return state

    def load_local_state(self, flat):
        self.model.flat[...] = X.to_device(flat["local.params"])
        for name, buf in self.optimizer.state.items():
            buf[...] = X.to_device(flat[f"local.optim.{name}"])
        if self.diloco:
            self.anchor[...] = X.to_device(flat["local.anchor"])
            self.momentum[...] = X.to_device(flat["local.outer_momentum"])
        if self.codec is not None:
            load_codecs_state([self.codec], flat)

    def memory(self):
        held = super().memory()
        held["optimizer"] += sum(a.nbytes for a in (self.anchor, self.momentum, self._delta) if a is not None)
        return held
