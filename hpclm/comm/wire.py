"""Counted point-to-point transfers of contiguous arrays as raw bytes, plus a reusable scratch area.

Every algorithm moves data only through a `Wire`, so its bytes are counted once, under the name
of the algorithm the caller asked for (a hierarchical all-reduce's inner ring counts as
"hierarchical"). Arrays go to MPI as `[array, MPI.BYTE]`: upper-case buffer calls, no pickles,
any dtype (float16 included); reductions happen in the array library, not in MPI.
"""
import threading

import numpy
from mpi4py import MPI

from hpclm import xp
from hpclm.comm.counters import counters, group_name

TAG = 0x6C6D  # one tag for all collective traffic; per-communicator FIFO order keeps steps apart


class Wire:
    """A communicator plus this call's byte tally; `on(sub)` shares the tally with a sub-communicator."""

    def __init__(self, comm, key, tally=None):
        self.comm, self.key = comm, key
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.tally = tally if tally is not None else [0, 0]  # [bytes sent, bytes received]

    def on(self, comm):
        return Wire(comm, self.key, self.tally)

    def sendrecv(self, sendarr, dest, recvarr, source):
        self.comm.Sendrecv([sendarr, MPI.BYTE], dest, TAG, [recvarr, MPI.BYTE], source, TAG)
        self.tally[0] += sendarr.nbytes
        self.tally[1] += recvarr.nbytes

    def send(self, arr, dest):
        self.comm.Send([arr, MPI.BYTE], dest, TAG)
        self.tally[0] += arr.nbytes

    def recv_into(self, arr, source):
        self.comm.Recv([arr, MPI.BYTE], source, TAG)
        self.tally[1] += arr.nbytes

    def isend(self, arr, dest):
        self.tally[0] += arr.nbytes
        return self.comm.Isend([arr, MPI.BYTE], dest, TAG)

    def irecv(self, arr, source):
        self.tally[1] += arr.nbytes
        return self.comm.Irecv([arr, MPI.BYTE], source, TAG)

    def charge(self, sent, recv):
        """Bytes moved inside an MPI collective (opaque to us): added by the caller's estimate."""
        self.tally[0] += int(sent)
        self.tally[1] += int(recv)

    def commit(self):
        """Add this call's bytes (and one call) to the counters, under this communicator's group."""
        counters.add(self.key, self.tally[0], self.tally[1], calls=1, group=group_name(self.comm))


_scratch = threading.local()
SMALL_BYTES = 64 << 10


def scratch(like, count):
    """A reusable 1-D array of `count` elements with `like`'s dtype and array module.

    One growing byte area per thread and array module: fresh large allocations would page-fault
    on every call (an 8 MiB temporary costs about a millisecond in first-touch faults). Small
    requests get a fresh array, which is cheaper than the bookkeeping.
    """
    mod = xp.array_module(like)
    nbytes = count * like.dtype.itemsize
    if nbytes <= SMALL_BYTES:
        return mod.empty(count, dtype=like.dtype)
    key = mod.__name__
    areas = getattr(_scratch, "areas", None)
    if areas is None:
        areas = _scratch.areas = {}
    area = areas.get(key)
    if area is None or area.nbytes < nbytes:
        area = areas[key] = mod.empty(max(nbytes, 1), dtype=numpy.uint8)
    return area[:nbytes].view(like.dtype)
