"""Bucketed gradient exchange with overlap, and its plainest user: the averaging all-reduce.

Gradient buckets are contiguous slices of the flat gradient buffer (`comm.bucket_mb` each, cut
from the end because backward finalises the buffer from the end). With `comm.overlap`, the model's
`grad_ready(offset)` callback starts each bucket's exchange on the communication thread
(hpclm.comm.nonblocking) as soon as backward has finished it, so communication runs while backward
goes on; `finish()` waits for the rest. Without overlap (or with one rank), every bucket is
exchanged after backward on the training thread. What a bucket's exchange is, is the subclass's
`reduce_bucket(comm, grad, i, timer)`.

Timing: on the training thread the exchange charges its own regions (`comm`, and `compress` /
`decompress` for codecs); on the communication thread they are charged as parallel.background
does (`comm` as `comm_async`, the wait as `comm_wait`), so comm_async - comm_wait is the hidden
communication.
"""
from hpclm import comm as collectives
from hpclm.errors import UserError
from hpclm.parallel.background import Background
from hpclm.parallel.sync import GradSync

MiB = 1 << 20


def bucket_bounds(size, itemsize, bucket_mb):
    """[(start, stop)] slices of a flat buffer of `size` elements, highest offsets first."""
    if bucket_mb <= 0 or size == 0:
        return [(0, size)]
    per = max(1, int(bucket_mb * MiB) // itemsize)
    stops = list(range(size, 0, -per))
    return [(max(0, stop - per), stop) for stop in stops]


class BucketedSync(GradSync):
    """Buckets, overlap and timing; subclasses implement reduce_bucket(comm, grad, i, timer)."""

    def __init__(self, group, grad_flat, comm_cfg, grad_scale=1.0, timer=None, buckets=None):
        """comm_cfg: the `comm` config section (algorithm, bucket_mb, overlap); `buckets`: the
        [(start, stop)] slices, highest first (default: cut every comm.bucket_mb)."""
        super().__init__(group, grad_flat, grad_scale, timer)
        if comm_cfg.algorithm not in collectives.ALGORITHMS:
            raise UserError(f"comm.algorithm {comm_cfg.algorithm!r} is unknown; choose one of {', '.join(collectives.ALGORITHMS)}")
        self.algorithm = comm_cfg.algorithm
        self.overlapped = self.world > 1 and comm_cfg.overlap
        self.buckets = buckets or bucket_bounds(grad_flat.shape[0], grad_flat.itemsize, comm_cfg.bucket_mb)
        self._pending = []
        self._next = 0                       # index of the next bucket to start
        self._background = Background(group) if self.overlapped else None

    def reduce_bucket(self, comm, grad, i, timer):
        """Exchange bucket i (`grad`, already scaled) over `comm` (None: this rank alone)."""
        raise NotImplementedError

    def _scaled(self, i):
        lo, hi = self.buckets[i]
        grad = self.grad_flat[lo:hi]
        if self.grad_scale != 1.0:
            grad *= grad.dtype.type(self.grad_scale)
        return grad

    def _reduce_async(self, wire_comm, i, timer):
        self.reduce_bucket(wire_comm, self._scaled(i), i, timer)

    def grad_ready(self, offset):
        """Backward callback: start every bucket lying entirely at or above `offset`."""
        while self._next < len(self.buckets) and self.buckets[self._next][0] >= offset:
            self._pending.append(self._background.start(self._reduce_async, self._next))
            self._next += 1

    def backward_hook(self, last_micro):
        return self.grad_ready if (self.overlapped and last_micro) else None

    def average(self):
        if self.overlapped:
            self.grad_ready(0)
            self._background.wait(self._pending, self.timer)
        else:
            wire = self.group if self.world > 1 else None
            for i in range(len(self.buckets)):
                self.reduce_bucket(wire, self._scaled(i), i, self.timer)
        self._pending, self._next = [], 0


class AllReduceSync(BucketedSync):
    """Plain data parallelism: every bucket averaged by hpclm.comm.allreduce (comm.algorithm)."""

    def reduce_bucket(self, comm, grad, i, timer):
        if comm is None:
            return
        t = timer
        t and t.start("comm")
        collectives.allreduce(comm, grad, op="average", algorithm=self.algorithm)
        t and t.stop("comm")
