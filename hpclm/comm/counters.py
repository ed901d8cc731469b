"""Byte accounting: every collective adds the bytes it sent and received, per algorithm.

    from hpclm import comm
    comm.counters.reset()
    comm.allreduce(c, grads, algorithm="ring")
    comm.counters.snapshot()   # {"ring": {"bytes_sent": ..., "bytes_recv": ..., "calls": 1}}

Counts are per process (this rank), thread safe (the non-blocking progress thread adds too).
For `algorithm="mpi"` MPI's internal traffic is opaque: the call is charged the
bandwidth-optimal volume 2(P-1)/P * nbytes each way (see hpclm.comm.allreduce.mpi).
"""
import threading
from dataclasses import asdict, dataclass


@dataclass
class Tally:
    bytes_sent: int = 0
    bytes_recv: int = 0
    calls: int = 0


class Counters:
    def __init__(self):
        self._lock = threading.Lock()
        self._tallies = {}

    def add(self, key, bytes_sent=0, bytes_recv=0, calls=0):
        with self._lock:
            tally = self._tallies.setdefault(key, Tally())
            tally.bytes_sent += int(bytes_sent)
            tally.bytes_recv += int(bytes_recv)
            tally.calls += int(calls)

    def snapshot(self):
        """{key: {"bytes_sent", "bytes_recv", "calls"}}, a copy."""
        with self._lock:
            return {key: asdict(t) for key, t in self._tallies.items()}

    def reset(self):
        with self._lock:
            self._tallies.clear()


counters = Counters()
