"""Collectives over MPI written out in Python: ring, recursive doubling/halving, trees, hierarchical.

    from hpclm import comm
    comm.allreduce(mpi_comm, sendbuf, recvbuf=None, op="sum", algorithm="ring")
    req = comm.iallreduce(mpi_comm, grads); ...; req.wait()
    comm.counters.snapshot()

Communicators are always passed in (see comm.Groups); pure rank arithmetic is in comm.layout and
the alpha-beta-gamma cost model in comm.costmodel (neither imports MPI).
"""
from hpclm.comm.allreduce import (ALGORITHMS, allreduce, auto, choose, hierarchical, mpi, rabenseifner,
                                  recursive_doubling, ring, set_cost_params, tree)
from hpclm.comm.blocks import allgather, alltoall, bcast, reduce, reduce_scatter
from hpclm.comm.buffers import set_cuda_aware
from hpclm.comm.counters import counters, group_name
from hpclm.comm.groups import Groups
from hpclm.comm.layout import Layout
from hpclm.comm.nonblocking import Request, iallgather, iallreduce, ireduce_scatter
from hpclm.comm.ops import OPS

__all__ = ["ALGORITHMS", "OPS", "allreduce", "auto", "choose", "hierarchical", "mpi", "rabenseifner",
           "recursive_doubling", "ring", "tree", "set_cost_params", "allgather", "alltoall", "bcast",
           "reduce", "reduce_scatter", "set_cuda_aware", "counters", "group_name", "Groups", "Layout", "Request",
           "iallgather", "iallreduce", "ireduce_scatter"]
