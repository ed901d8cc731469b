"""Intra-process parallelism on CPU: the batch is cut into row slices run by a thread each.

NumPy's element-wise kernels run on one core; BLAS on all of them. With T threads, each running
forward/backward on B/T rows with single-threaded BLAS (NumPy releases the GIL in both), every
core is busy all the time, element-wise work included. The replicas share the parameter buffer;
each has its own gradient buffer, and the slices' gradients are combined into the model's
`grad_flat` (row-weighted mean) segment by segment as backward finalises them, so `grad_ready`
still fires early for communication overlap.

    model = ThreadedGPT(GPT(cfg), n_threads=2)   # same interface as GPT
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
from threadpoolctl import ThreadpoolController

from hpclm import kernels
from hpclm import xp as X
from hpclm.model.gpt import GPT


class ThreadedGPT:
    def __init__(self, model, n_threads):
        self.model = model
        self.n_threads = max(1, int(n_threads))
        self.replicas = [GPT(model.cfg, dtype=model.dtype, flat=model.flat, hooks=model.hooks)
                         for _ in range(self.n_threads)]
        self._scratch = X.np.empty_like(model.grad_flat)     # weighted slice gradients, reused every step
        self._pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="hpclm-rows")
        self._blas = ThreadpoolController()                  # found once: scanning the loaded libraries is not free

    @property
    def recompute(self):
        return self.model.recompute

    @recompute.setter
    def recompute(self, on):                # parallel.recompute: every slice's replica recomputes
        for m in (self.model, *self.replicas):
            m.recompute = on

    def __getattr__(self, name):            # params, grads, flat, grad_flat, layout, cfg, forward, ...
        return getattr(self.model, name)

    def _slices(self, batch):
        """Row ranges [(start, stop)] splitting `batch` rows as evenly as possible."""
        n = min(self.n_threads, batch)
        bounds = [batch * i // n for i in range(n + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def _run(self, fn, slices):
        with self._blas.limit(limits=1, user_api="blas"):
            futures = [self._pool.submit(fn, i, a, b) for i, (a, b) in enumerate(slices)]
            return [f.result() for f in futures]

    def loss(self, idx, targets, source=None):
        if source is not None:
            raise ValueError("ThreadedGPT runs its slices' units concurrently: use GPT (threads = 1) with a source")
        slices = self._slices(idx.shape[0])
        if len(slices) == 1:
            return self.model.loss(idx, targets)
        losses = self._run(lambda i, a, b: self.replicas[i].loss(idx[a:b], targets[a:b]), slices)
        return sum(loss * (b - a) for loss, (a, b) in zip(losses, slices)) / idx.shape[0]

    def forward_backward(self, idx, targets, grad_ready=None, accumulate=False, timer=None, source=None):
        """As GPT.forward_backward: row-weighted mean over the slices, gradients into model.grad_flat.
        The timer follows the first slice's thread (all slices run the same phases side by side).
        activation_bytes_peak is the slices' sum (they run at the same time). A parameter source
        is called in unit order, so it needs the one-thread model (it is refused here)."""
        if source is not None:
            raise ValueError("ThreadedGPT runs its slices' units concurrently: use GPT (threads = 1) with a source")
        batch = idx.shape[0]
        slices = self._slices(batch)
        if len(slices) == 1:
            return self.model.forward_backward(idx, targets, grad_ready=grad_ready, accumulate=accumulate, timer=timer)
        weights = [(b - a) / batch for a, b in slices]
        combine = _SegmentCombiner(self.model.grad_flat, [r.grad_flat for r in self.replicas[:len(slices)]],
                                   weights, accumulate, grad_ready, self._scratch)

        def work(i, a, b):
            return self.replicas[i].forward_backward(idx[a:b], targets[a:b], timer=timer if i == 0 else None,
                                                     grad_ready=lambda off: combine.reached(i, off))

        losses = self._run(work, slices)
        self.model.activation_bytes_peak = sum(r.activation_bytes_peak for r in self.replicas[:len(slices)])
        return sum(loss * w for loss, w in zip(losses, weights))


class _SegmentCombiner:
    """Sums replica gradients into the model's buffer as soon as every replica has finished a segment.

    Each replica reports offsets in decreasing order (gradients at [offset, size) are final); the
    segment between the previous common offset and the new one is combined once, then announced.
    """

    def __init__(self, out, parts, weights, accumulate, grad_ready, scratch):
        self.out, self.parts, self.weights, self.scratch = out, parts, weights, scratch
        self.accumulate, self.grad_ready = accumulate, grad_ready
        self.reached_by = [out.shape[0]] * len(parts)          # per replica: lowest final offset
        self.done = out.shape[0]                               # combined down to here
        self.lock = threading.Lock()

    def reached(self, replica, offset):
        with self.lock:
            self.reached_by[replica] = offset
            lo, hi = max(self.reached_by), self.done       # every replica is final above lo
            if lo >= hi:
                return
            seg = slice(lo, hi)
            for i, (part, w) in enumerate(zip(self.parts, self.weights)):
                _add_scaled(self.out[seg], part[seg], w, i == 0 and not self.accumulate, self.scratch[seg])
            self.done = lo
            if self.grad_ready is not None:
                self.grad_ready(lo)


def _add_scaled(out, part, w, first, scratch):
    """out = part * w (first) or out += part * w, (n,) each, rounding the product and then the sum as
    NumPy does; one compiled pass when the kernels are on (hpclm.model.fused.add_scaled)."""
    if isinstance(out, numpy.ndarray) and kernels.enabled():
        from hpclm.model.fused import add_scaled
        add_scaled(out, part, w, first)
    elif first:
        X.array_module(out).multiply(part, w, out=out)
    else:
        X.array_module(out).multiply(part, w, out=scratch)
        out += scratch
