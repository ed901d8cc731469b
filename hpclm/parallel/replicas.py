"""The identical-replicas check of data parallelism: every rank of a group must hold the same
parameters (bit for bit) after the same averaged update; a diverged rank stops the run with one
message naming it. Strategies whose replicas differ by design (gossip, local SGD) take their
average x̄ with `mean_over`."""
import zlib

import numpy

from hpclm import xp as X
from hpclm.parallel.agree import collective_error


def check_identical(group, flat, step, what="parameters"):
    """Stop with a clear error on every rank of `group` if `flat` differs across its ranks (CRC32)."""
    if group is None or group.Get_size() == 1:
        return
    crc = zlib.crc32(memoryview(X.to_host(flat)).cast("B"))
    crcs = group.allgather(crc)
    if len(set(crcs)) > 1:
        by_value = {}
        for rank, value in enumerate(crcs):
            by_value.setdefault(value, []).append(rank)
        majority = max(by_value.values(), key=len)
        odd = sorted(r for ranks in by_value.values() if ranks is not majority for r in ranks)
        raise collective_error(f"{what} diverged across ranks at step {step}: "
                               f"ranks {odd} differ from ranks {majority}")


def mean_over(group, arr):
    """(n,) host copy of `arr` averaged over `group` by MPI's Allreduce (not in hpclm.comm's counters)."""
    host = numpy.ascontiguousarray(X.to_host(arr)).copy()
    size = 1 if group is None else group.Get_size()
    if size > 1:
        total = numpy.empty_like(host)
        group.Allreduce(host, total)                  # sum
        host = total / host.dtype.type(size)
    return host
