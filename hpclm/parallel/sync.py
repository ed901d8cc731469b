"""The gradient-synchronisation contract: what every data-parallel exchange of gradients implements,
so the optimizer step (hpclm.parallel.optimizer) calls every strategy the same way.

    hook = sync.backward_hook(last_micro)   # grad_ready(offset) callback for model.forward_backward, or None
    sync.finish()                           # after the last micro-batch: grad_flat <- the gradient to apply
                                            # (mean over micro-batches and the group's ranks, or the
                                            # compressed estimate of it), and sync.step += 1
    sync.uncompressed_bytes()               # bytes per rank per step of an uncompressed bandwidth-optimal
                                            # all-reduce of the gradient: 2 (P-1)/P * nbytes (0 for P = 1)
    sync.local_state() / load_local_state(s)   # this rank's state (error buffers, PowerSGD's Q) by name
    sync.step                               # finished steps: seeds compressors, ends a warm-up

The gradient arrives as the *sum* over the step's micro-batches; each sync multiplies by its
grad_scale (1 / micro-batches) before exchanging, so compressors see the mean. Bytes on the wire are
counted by hpclm.comm under the group's name. Implementations: buckets.AllReduceSync (bucketed,
overlapped all-reduce), compressed.CompressedSync (a codec per bucket), powersgd.PowerSGDSync (whole
model after backward), and Warmup below (uncompressed first, then another sync).
"""


class GradSync:
    """Base: no hook, state or bytes of its own; subclasses implement `average()`."""

    def __init__(self, group, grad_flat, grad_scale=1.0, timer=None):
        self.group, self.grad_flat, self.grad_scale, self.timer = group, grad_flat, grad_scale, timer
        self.world = 1 if group is None else group.Get_size()
        self.step = 0

    def backward_hook(self, last_micro):
        return None

    def finish(self):
        self.average()
        self.step += 1

    def average(self):
        raise NotImplementedError

    def uncompressed_bytes(self):
        P = self.world
        return 2 * (P - 1) * self.grad_flat.nbytes // P

    def local_state(self):
        return {}

    def load_local_state(self, state):
        """Load what local_state returned (nothing by default)."""


class Warmup(GradSync):
    """`plain` for the first `steps` steps (DGC's and 1-bit Adam's uncompressed warm-up), then `after`.
    Both see the same step count; the state and the reference bytes are `after`'s."""

    def __init__(self, plain, after, steps):
        super().__init__(after.group, after.grad_flat, after.grad_scale, after.timer)
        self.plain, self.after, self.steps = plain, after, steps

    def _active(self):
        active = self.plain if self.step < self.steps else self.after
        active.step = self.step
        return active

    def backward_hook(self, last_micro):
        return self._active().backward_hook(last_micro)

    def average(self):
        self._active().average()

    def uncompressed_bytes(self):
        return self.after.uncompressed_bytes()

    def local_state(self):
        return self.after.local_state()

    def load_local_state(self, state):
        self.after.load_local_state(state)
