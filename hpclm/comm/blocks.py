"""The building blocks on their own: reduce_scatter, allgather, bcast, reduce, alltoall.

Blocks follow `split_counts(n, P)` (the first n % P ranks get one element more), so a ZeRO
shard or a bucket is a plain slice of a flat buffer. Each takes `algorithm=` ("mpi" for MPI's
own, or ours) and counts its bytes under "<collective>:<algorithm>".
"""
from mpi4py import MPI

from hpclm import xp
from hpclm.comm import algorithms, buffers, ops
from hpclm.comm.allreduce import _MPI_OPS, lookup
from hpclm.comm.layout import offsets, split_counts
from hpclm.comm.wire import Wire
from hpclm.errors import UserError


def _counted(key, comm, body):
    wire = Wire(comm, key)
    if wire.size > 1:
        body(wire)
    wire.commit()


def _blocks(n, P, counts=None):
    """(block counts, their offsets): `counts` checked against n and P, or split_counts(n, P)."""
    if counts is None:
        counts = split_counts(n, P)
    elif len(counts) != P or sum(counts) != n or min(counts) < 0:
        raise UserError(f"comm: block counts {list(counts)} do not split {n} elements over {P} ranks")
    return list(counts), offsets(counts)


# --- reduce_scatter: n elements in, block r of the reduction out ----------------------------

def reduce_scatter(comm, sendbuf, recvbuf=None, op="sum", algorithm="ring", counts=None):
    """Rank r gets block r of the reduction of everyone's sendbuf (n,); blocks are `counts` (P
    element counts summing to n, zeros allowed: ZeRO's shard edges) or split_counts(n, P).

    recvbuf None: in place, returns the view of sendbuf holding block r (the rest of sendbuf is
    left as scratch). Otherwise sendbuf is untouched and recvbuf (counts[r],) receives block r.
    Bytes: the ring sends every block but its own, (n - counts[r]) elements; MPI's own is charged
    the same.
    """
    impl = lookup({"ring": "ring", "mpi": "mpi"}, ops.algorithm_for(op, algorithm, "ring"), "reduce_scatter")
    ops.check(sendbuf, op)
    P, r = comm.Get_size(), comm.Get_rank()
    counts, starts = _blocks(sendbuf.size, P, counts)
    work, deliver = buffers.prepare(sendbuf if recvbuf is None else sendbuf.copy())   # (n,)

    def body(wire):
        if impl == "ring":
            algorithms.ring_reduce_scatter(wire, work, op, counts)
        else:
            comm.Reduce_scatter(MPI.IN_PLACE, work, counts, op=_MPI_OPS[op])   # block r lands at work[0:]
            work[starts[r]:starts[r + 1]] = work[:counts[r]].copy()
            moved = (work.size - counts[r]) * work.itemsize
            wire.charge(moved, moved)
    _counted(f"reduce_scatter:{impl}", comm, body)
    ops.finish(work[starts[r]:starts[r + 1]], op, P)
    full = deliver().reshape(-1)
    mine = full[starts[r]:starts[r + 1]]
    if recvbuf is None:
        return mine
    _check_size(recvbuf, counts[r], "recvbuf")
    xp.array_module(recvbuf).copyto(recvbuf.reshape(-1), mine)
    return recvbuf


# --- allgather: block r in, all blocks out ---------------------------------------------------

def allgather(comm, sendbuf, recvbuf=None, algorithm="ring", counts=None):
    """Every rank's sendbuf, concatenated in rank order into recvbuf (n,).

    Rank r's sendbuf must hold counts[r] elements (`counts`: P element counts, zeros allowed, or
    split_counts(n, P)); recvbuf None allocates P * sendbuf.size elements (equal blocks). sendbuf
    may be the view of recvbuf where block r lies.
    """
    impl = lookup({"ring": "ring", "mpi": "mpi"}, algorithm, "allgather")
    P, r = comm.Get_size(), comm.Get_rank()
    if recvbuf is None:
        recvbuf = xp.array_module(sendbuf).empty(P * sendbuf.size, dtype=sendbuf.dtype)
    counts, starts = _blocks(recvbuf.size, P, counts)
    _check_size(sendbuf, counts[r], "sendbuf")
    full = recvbuf.reshape(-1)
    full[starts[r]:starts[r + 1]] = sendbuf.reshape(-1)
    work, deliver = buffers.prepare(recvbuf)

    def body(wire):
        if impl == "ring":
            algorithms.ring_allgather(wire, work, counts)
        else:
            comm.Allgatherv(MPI.IN_PLACE, [work, (counts, starts[:-1])])
            wire.charge(work[starts[r]:starts[r + 1]].nbytes * (P - 1), work.nbytes - counts[r] * work.itemsize)
    _counted(f"allgather:{impl}", comm, body)
    return deliver()


# --- bcast and reduce (rooted) ---------------------------------------------------------------

def bcast(comm, buf, root=0, algorithm="tree"):
    """root's buf into every rank's buf (in place); returns buf."""
    impl = lookup({"tree": "tree", "mpi": "mpi"}, algorithm, "bcast")
    work, deliver = buffers.prepare(buf)

    def body(wire):
        if impl == "tree":
            algorithms.binomial_bcast(wire, work, root)
        else:
            comm.Bcast([work, MPI.BYTE], root)
            wire.charge(0 if wire.rank != root else work.nbytes, work.nbytes if wire.rank != root else 0)
    _counted(f"bcast:{impl}", comm, body)
    return deliver()


def reduce(comm, sendbuf, recvbuf=None, op="sum", root=0, algorithm="tree"):
    """The reduction of everyone's sendbuf, on root (in recvbuf, or in place in sendbuf).

    On other ranks the returned array's contents are unspecified (sendbuf may be overwritten
    when recvbuf is None).
    """
    impl = lookup({"tree": "tree", "mpi": "mpi"}, ops.algorithm_for(op, algorithm, "tree"), "reduce")
    ops.check(sendbuf, op)
    P = comm.Get_size()
    work, deliver = buffers.prepare(sendbuf, recvbuf)

    def body(wire):
        if impl == "tree":
            algorithms.binomial_reduce(wire, work, op, root)
        else:
            comm.Reduce(MPI.IN_PLACE if wire.rank == root else work, work if wire.rank == root else None,
                        op=_MPI_OPS[op], root=root)
            wire.charge(work.nbytes if wire.rank != root else 0, work.nbytes * (P - 1) if wire.rank == root else 0)
    _counted(f"reduce:{impl}", comm, body)
    if comm.Get_rank() == root:
        ops.finish(work, op, P)
    return deliver()


# --- alltoall: equal blocks, block j goes to rank j ------------------------------------------

def alltoall(comm, sendbuf, recvbuf=None, algorithm="pairwise"):
    """Block j (of P equal blocks) of rank i's sendbuf lands in block i of rank j's recvbuf."""
    impl = lookup({"pairwise": "pairwise", "mpi": "mpi"}, algorithm, "alltoall")
    P, r = comm.Get_size(), comm.Get_rank()
    if sendbuf.size % P:
        raise UserError(f"comm: alltoall needs a size divisible by the group size {P}, got {sendbuf.size}")
    if recvbuf is None:
        recvbuf = xp.array_module(sendbuf).empty_like(sendbuf)
    _check_size(recvbuf, sendbuf.size, "recvbuf")
    if recvbuf is sendbuf:
        raise UserError("comm: alltoall cannot work in place; pass a separate recvbuf")
    send, _ = buffers.prepare(sendbuf)
    work, deliver = buffers.prepare(recvbuf)
    k = sendbuf.size // P
    block = lambda a, i: a[i * k:(i + 1) * k]  # noqa: E731
    block(work, r)[...] = block(send, r)

    def body(wire):
        if impl == "pairwise":
            for s in range(1, P):
                dest, source = (r + s) % P, (r - s) % P
                wire.sendrecv(block(send, dest), dest, block(work, source), source)
        else:
            comm.Alltoall([send, MPI.BYTE], [work, MPI.BYTE])
            wire.charge(k * send.itemsize * (P - 1), k * send.itemsize * (P - 1))
    _counted(f"alltoall:{impl}", comm, body)
    return deliver()


def _check_size(a, n, what):
    if a.size != n:
        raise UserError(f"comm: {what} has {a.size} elements, expected {n}")
    if not a.flags.c_contiguous:
        raise UserError(f"comm: {what} must be C-contiguous")


__all__ = ["reduce_scatter", "allgather", "bcast", "reduce", "alltoall"]
