"""Byte accounting: every collective adds the bytes it sent and received, per communicator and algorithm.

    from hpclm import comm
    comm.counters.reset()
    comm.allreduce(groups.dp, grads, algorithm="ring")
    comm.counters.snapshot()          # {"ring": {"bytes_sent": ..., "bytes_recv": ..., "calls": 1}}
    comm.counters.by_group()          # {"dp": {"bytes_sent": ..., "bytes_recv": ..., "calls": 1}}

A tally belongs to a (group, key) pair: the group is the name of the communicator the bytes moved
on (`group_name`: "dp", "tp", "pp", "node" as hpclm.comm.Groups names them, "world" for
MPI_COMM_WORLD, "other" for an unnamed one), the key names the collective and algorithm.
Counts are per process (this rank), thread safe (the non-blocking progress thread adds too).
For `algorithm="mpi"` MPI's internal traffic is opaque: the call is charged the
bandwidth-optimal volume 2(P-1)/P * nbytes each way (see hpclm.comm.allreduce.mpi).
"""
import threading
from dataclasses import asdict, dataclass

WORLD_NAMES = ("MPI_COMM_WORLD", "world")


def group_name(comm):
    """The group a communicator's bytes are counted under (its MPI name; see the module docstring)."""
    if comm is None:
        return "world"
    name = comm.Get_name()
    if name in WORLD_NAMES:
        return "world"
    return name or "other"


@dataclass
class Tally:
    bytes_sent: int = 0
    bytes_recv: int = 0
    calls: int = 0


class Counters:
    def __init__(self):
        self._lock = threading.Lock()
        self._tallies = {}                       # (group, key) -> Tally

    def add(self, key, bytes_sent=0, bytes_recv=0, calls=0, group="world"):
        with self._lock:
            tally = self._tallies.setdefault((group, key), Tally())
            tally.bytes_sent += int(bytes_sent)
            tally.bytes_recv += int(bytes_recv)
            tally.calls += int(calls)

    def _summed(self, pick):
        with self._lock:
            out = {}
            for pair, t in self._tallies.items():
                total = out.setdefault(pick(pair), Tally())
                total.bytes_sent += t.bytes_sent
                total.bytes_recv += t.bytes_recv
                total.calls += t.calls
            return {name: asdict(t) for name, t in out.items()}

    def snapshot(self):
        """{key: {"bytes_sent", "bytes_recv", "calls"}} summed over groups, a copy."""
        return self._summed(lambda pair: pair[1])

    def by_group(self):
        """{group: {"bytes_sent", "bytes_recv", "calls"}} summed over keys, a copy."""
        return self._summed(lambda pair: pair[0])

    def reset(self):
        with self._lock:
            self._tallies.clear()


counters = Counters()
