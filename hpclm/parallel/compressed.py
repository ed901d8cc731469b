"""Compressed data parallelism: every gradient bucket averaged through a codec of its own (a
compressor with error feedback moved by its exchange, or the 1-bit compressed all-reduce; see
hpclm.parallel.exchange), overlapped with backward like the plain all-reduce (parallel/buckets.py).

Timer regions: `compress` and `decompress` (with overlap they were measured on the communication
thread, so they ran alongside backward, like `comm_async`, which then holds only the exchange),
`comm` / `comm_wait` / `comm_async` as for the plain all-reduce (for the vote exchange `comm` also
holds each rank's vote of its chunk, n/P elements between the two collectives). Bytes: every
exchange goes through hpclm.comm, so the counters hold what crossed the wire;
`uncompressed_bytes()` is what the same gradient moves in an uncompressed all-reduce.
"""
from hpclm.parallel.buckets import BucketedSync
from hpclm.parallel.state import codecs_state, load_codecs_state


class CompressedSync(BucketedSync):
    """BucketedSync whose buckets are averaged by `make_codec(n, dtype)` codecs (one per bucket)."""

    def __init__(self, group, grad_flat, comm_cfg, make_codec, grad_scale=1.0, timer=None):
        super().__init__(group, grad_flat, comm_cfg, grad_scale=grad_scale, timer=timer)
        self.codecs = [make_codec(hi - lo, grad_flat.dtype) for lo, hi in self.buckets]

    def reduce_bucket(self, comm, grad, i, timer):
        self.codecs[i].average(comm, grad, self.step, self.algorithm, timer)

    def local_state(self):
        return codecs_state(self.codecs)

    def load_local_state(self, flat):
        load_codecs_state(self.codecs, flat)
