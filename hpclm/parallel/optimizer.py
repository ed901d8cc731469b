"""The distributed optimizer step, one contract for every data-parallel strategy:

    loss = opt.forward_backward(model, batches, timer)   # the step's micro-batches [(idx, targets)]
                                                # through the model: one after another with the sync's
                                                # backward hook (a pipeline: its schedule)
    hook = opt.backward_hook(micro, n_micro)   # for model.forward_backward (None: nothing to overlap)
    opt.source                                  # the model's parameter source (None: the model's own buffers)
    grad_norm = opt.step(lr)                    # gradient sync -> clip by the global norm -> update -> after
    opt.loss(model, idx, targets)               # evaluation loss (no gradients)
    opt.checkpoint() / opt.restore(ckpt, step)  # collective: full parameters, optimizer state, sync state
    opt.check_replicas(step)                    # stop if replicas that must agree do not
    opt.evaluate(run, group)                    # (val loss, {eval_metric_names: value}); run(group) evaluates
    opt.step_metrics()                          # {metric_names: value} of the last step (a record column each)
    opt.close()                                 # collective, after the last checkpoint: stop helper threads
    opt.memory()                                # bytes this rank holds, by kind, from the arrays themselves
    opt.close()                                 # the run is over (parameter servers: release them)
    opt.asynchronous                            # True: ranks need not meet every step (hpclm train's rounds)
    opt.can_run_ahead()                         # asynchronous: another step now would not wait for a peer

`DistributedOptimizer` here is replicated data parallelism (ZeRO stage 0): every rank of the dp
group holds all parameters, gradients and optimizer state, the gradient sync (hpclm.parallel.sync)
makes the gradient equal everywhere, and every rank applies the same update. The global norm is
then the norm of the local (already averaged) gradient. ZeRO (parallel/zero.py) and 1-bit Adam
(parallel/onebit_adam.py) are subclasses that change what is synced and what is updated.
"""
from dataclasses import dataclass

from hpclm.optim import clip_by_global_norm
from hpclm.parallel.replicas import check_identical
from hpclm.parallel.state import gather_states, rows_for_rank
from hpclm.timing.timer import Timer

_UNTIMED = Timer(enabled=False)


@dataclass
class CheckpointState:
    """What a checkpoint holds of the strategy, complete on rank 0 (None elsewhere)."""
    params: object          # (size,) host array in the single-process model's flat layout
    optim_state: dict       # {"t": int, name: (size,) host array}
    extra: dict             # {name: (P, ...) every rank's sync state}
    layout: object = None   # the params' ParamLayout when it is not the model's (tensor parallelism: the unsharded one)


def nbytes(*arrays):
    return int(sum(a.nbytes for a in arrays if a is not None))


class DistributedOptimizer:
    source = None
    tensor_norm = None      # parallel/tensor.py TensorNorm when the model is a tp shard: the norm over the tp group
    metric_names = ()       # per-rank record columns step_metrics() fills (parallel/gossip.py: consensus)
    eval_metric_names = ()  # evaluation record columns evaluate() fills beyond val_loss
    asynchronous = False    # ps async/ssp, gossip adpsgd: train.py agrees in non-blocking rounds

    def __init__(self, model, optimizer, sync, optim_cfg, timer=None):
        self.model, self.optimizer, self.sync, self.cfg = model, optimizer, sync, optim_cfg
        self.timer = timer or _UNTIMED
        self.group = sync.group

    @property
    def rank(self):
        return 0 if self.group is None else self.group.Get_rank()

    def backward_hook(self, micro, n_micro):
        return self.sync.backward_hook(micro == n_micro - 1)

    def forward_backward(self, model, batches, timer=None):
        return micro_batches_in_turn(self, model, batches, timer)

    def loss(self, model, idx, targets):
        return model.loss(idx, targets, source=self.source)

    def step(self, lr):
        """Sync the gradient, clip it by its global norm (returned, before clipping), update."""
        self.sync.finish()
        with self.timer.region("optimizer"):
            grad = self.model.grad_flat
            if self.tensor_norm is None:
                norm = clip_by_global_norm(grad, self.cfg.grad_clip)
            else:
                norm = clip_by_global_norm(grad, self.cfg.grad_clip, self.tensor_norm.norm(grad))
            self.optimizer.step(self.model.flat, self.model.grad_flat, lr)
        return norm

    def uncompressed_bytes(self):
        return self.sync.uncompressed_bytes()

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self):
        """Collective over the dp group: the CheckpointState on its rank 0, None elsewhere."""
        extra = gather_states(self.group, self.local_state())
        if self.rank != 0:
            return None
        return CheckpointState(self.model.flat, self.optimizer.state_dict(), extra, self.model.layout)

    def restore(self, ckpt, step):
        """Parameters and optimizer state from a checkpoint.Checkpoint; this rank's sync state."""
        ckpt.restore(self.model, self.optimizer)
        self._restore_sync(ckpt, step)

    def _restore_sync(self, ckpt, step):
        shapes = {name: (a.shape, a.dtype) for name, a in self.local_state().items()}
        world = 1 if self.group is None else self.group.Get_size()
        self.load_local_state(rows_for_rank(ckpt.extra, shapes, self.rank, world, "resume"))
        self.sync.step = step

    def local_state(self):
        """This rank's state beyond parameters and optimizer (the sync's: error buffers, ...)."""
        return self.sync.local_state()

    def load_local_state(self, flat):
        self.sync.load_local_state(flat)

    def check_replicas(self, step):
        check_identical(self.group, self.model.flat, step)

    def evaluate(self, run, group):
        """(validation loss, {}): `run(group)` is the loss over the evaluation rows sharded across `group`."""
        return run(group), {}

    def step_metrics(self):
        return {}

    def can_run_ahead(self):
        """Whether another step now completes without waiting for a slower rank (asynchronous only)."""
        return self.asynchronous

    def close(self):
        """Nothing to release by default (parameter servers stop theirs, gossip its thread)."""

    # ------------------------------------------------------------------------ memory
    def memory(self):
        """Bytes this rank holds now: {"params", "grads", "optimizer", "activations"} (peak of the last step)."""
        m = self.model
        return {"params": nbytes(m.flat), "grads": nbytes(m.grad_flat),
                "optimizer": nbytes(*self.optimizer.state.values()),
                "activations": int(getattr(m, "activation_bytes_peak", 0))}


def micro_batches_in_turn(strategy, model, batches, timer=None):
    """Forward and backward of each micro-batch in turn with `strategy`'s backward hooks and
    parameter source, gradients accumulated (their sum); the mean loss."""
    n, loss = len(batches), 0.0
    for j, (x, y) in enumerate(batches):
        loss += model.forward_backward(x, y, grad_ready=strategy.backward_hook(j, n), accumulate=j > 0,
                                       timer=timer, source=strategy.source)
    return loss / n
