"""Data parallelism: every rank computes gradients on its shard, gradients are averaged, every rank
applies the same update.

Gradient buckets are contiguous slices of the flat gradient buffer (`comm.bucket_mb` each,
cut from the end because backward finalises the buffer from the end). With `comm.overlap`, the
model's `grad_ready(offset)` callback starts each bucket's all-reduce on the communication thread
(hpclm.comm.nonblocking) as soon as backward has finished it, so communication runs while
backward goes on; `finish()` waits for the rest. Without overlap, all buckets are reduced after
backward. The time the communication thread spent inside collectives is charged to the
`comm_async` region, the time the training thread waited to `comm_wait`, so the timing record
shows how much communication was hidden (comm_async - comm_wait).
"""
import threading
import time
import zlib

from hpclm import comm as C
from hpclm import xp as X
from hpclm.comm.nonblocking import shadow, start
from hpclm.errors import UserError
from hpclm.parallel.agree import collective_error

MiB = 1 << 20


def bucket_bounds(size, itemsize, bucket_mb):
    """[(start, stop)] slices of a flat buffer of `size` elements, highest offsets first."""
    if bucket_mb <= 0 or size == 0:
        return [(0, size)]
    per = max(1, int(bucket_mb * MiB) // itemsize)
    stops = list(range(size, 0, -per))
    return [(max(0, stop - per), stop) for stop in stops]


class DataParallel:
    averages_micro_batches = False   # finish() leaves the micro-batch mean to the training loop
    bytes_uncompressed = None        # compressed strategies: uncompressed all-reduce bytes per step

    def __init__(self, mpi_comm, grad_flat, cfg, timer=None):
        """cfg: the `comm` config section (algorithm, bucket_mb, overlap, check_every)."""
        self.comm, self.grad_flat, self.cfg, self.timer = mpi_comm, grad_flat, cfg, timer
        self.world = mpi_comm.Get_size()
        if cfg.algorithm not in C.ALGORITHMS:
            raise UserError(f"comm.algorithm {cfg.algorithm!r} is unknown; choose one of {', '.join(C.ALGORITHMS)}")
        self.buckets = bucket_bounds(grad_flat.shape[0], grad_flat.itemsize, cfg.bucket_mb)
        self._pending = []
        self._next = 0                       # index of the next bucket to start
        self._async_seconds = 0.0
        self._lock = threading.Lock()
        if self.world > 1 and cfg.overlap:
            shadow(mpi_comm)                 # collective Dup now, on the main thread, not inside backward

    # ------------------------------------------------------------------------------ gradients
    acts_alone = False                       # True: finish() works even with one rank (compression)

    def _reduce_bucket(self, wire_comm, i):
        """Average bucket i on the communication thread; its time is charged to comm_async."""
        lo, hi = self.buckets[i]
        t0 = time.perf_counter()
        C.allreduce(wire_comm, self.grad_flat[lo:hi], op="average", algorithm=self.cfg.algorithm)
        with self._lock:
            self._async_seconds += time.perf_counter() - t0

    def _reduce_bucket_now(self, i):
        """Average bucket i on the training thread (no overlap); its time is the comm region."""
        lo, hi = self.buckets[i]
        t = self.timer
        t and t.start("comm")
        C.allreduce(self.comm, self.grad_flat[lo:hi], op="average", algorithm=self.cfg.algorithm)
        t and t.stop("comm")

    def _charge_async(self):
        """Move what the communication thread measured into the step's timer regions."""
        with self._lock:
            seconds, self._async_seconds = self._async_seconds, 0.0
        if self.timer:
            self.timer.add("comm_async", seconds)

    def grad_ready(self, offset):
        """Backward callback: start every bucket lying entirely at or above `offset`."""
        while self._next < len(self.buckets) and self.buckets[self._next][0] >= offset:
            self._pending.append(start(self._reduce_bucket, self.comm, self._next))
            self._next += 1

    def backward_hook(self, last_micro):
        """The grad_ready callback to pass to forward_backward (None when nothing should overlap)."""
        return self.grad_ready if (self.world > 1 and self.cfg.overlap and last_micro) else None

    def finish(self):
        """Average the gradient over the ranks (waiting for overlapped buckets, reducing the rest)."""
        if self.world == 1 and not self.acts_alone:
            return
        if self.world > 1 and self.cfg.overlap:
            self.grad_ready(0)
            t = self.timer
            t and t.start("comm_wait")
            for req in self._pending:
                req.wait()
            t and t.stop("comm_wait")
            self._charge_async()
        else:
            for i in range(len(self.buckets)):
                self._reduce_bucket_now(i)
        self._pending, self._next = [], 0

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint_extra(self):
        """Collective: state to save beside the model ({name: array} on rank 0); none here."""
        return {}

    def restore(self, extra, step):
        """Load what checkpoint_extra saved (nothing for plain data parallelism)."""

    # ------------------------------------------------------------------------------ consistency
    def check_identical(self, flat, step):
        """Stop with a clear error if the parameters differ across ranks (CRC32 of the bytes)."""
        if self.world == 1:
            return
        crc = zlib.crc32(memoryview(X.to_host(flat)).cast("B"))
        crcs = self.comm.allgather(crc)
        if len(set(crcs)) > 1:
            groups = {}
            for rank, value in enumerate(crcs):
                groups.setdefault(value, []).append(rank)
            majority = max(groups.values(), key=len)
            odd = sorted(r for ranks in groups.values() if ranks is not majority for r in ranks)
            raise collective_error(f"parameters diverged across ranks at step {step}: "
                                   f"ranks {odd} differ from ranks {majority}")
