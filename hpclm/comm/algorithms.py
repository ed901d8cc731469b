"""All-reduce algorithms on counted point-to-point transfers (hpclm.comm.wire).

Each `_name(wire, buf, op)` reduces the flat array `buf` (n elements) across `wire.comm` in
place; `op` "average" is reduced as a sum here and divided once at the end (ops.finish).
Non-powers of two in the recursive algorithms: the first 2*rem ranks (rem = P - 2^floor(log2 P))
fold pairwise into rem survivors before, and unfold after, as MPICH does.
"""
from mpi4py import MPI

from hpclm.comm import nodes
from hpclm.comm.layout import offsets, split_counts
from hpclm.comm.ops import combine
from hpclm.comm.wire import scratch

SEGMENT_BYTES = 1 << 20   # ring/rabenseifner pipeline unit: reduce segment k while k+1 arrives


def send_recv_reduce(wire, send, dest, acc, source, op):
    """Send `send` to dest while receiving source's matching array and reducing it into `acc`.

    Both sides cut their arrays into the same segments, so segment k is reduced while later
    ones are still in flight. `send` and `acc` must not overlap.
    """
    seg = max(1, SEGMENT_BYTES // acc.itemsize)
    tmp = scratch(acc, acc.size)                                         # (len(acc),)
    cuts = [(a, min(a + seg, acc.size)) for a in range(0, acc.size, seg)]
    recvs = [wire.irecv(tmp[a:b], source) for a, b in cuts]
    sends = [wire.isend(send[a:a + seg], dest) for a in range(0, send.size, seg)]
    for (a, b), req in zip(cuts, recvs):
        req.Wait()
        combine(acc[a:b], tmp[a:b], op)
    MPI.Request.Waitall(sends)


# --- ring (Patarasuk & Yuan): reduce-scatter then all-gather around the ring ---------------

def ring_reduce_scatter(wire, buf, op, counts=None):
    """After P-1 steps rank r holds the reduced block r of `counts` (default split_counts(n, P))."""
    P, r = wire.size, wire.rank
    starts = offsets(counts or split_counts(buf.size, P))
    block = lambda i: buf[starts[i % P]:starts[i % P + 1]]  # noqa: E731
    for s in range(P - 1):
        send_recv_reduce(wire, block(r - s - 1), (r + 1) % P, block(r - s - 2), (r - 1) % P, op)


def ring_allgather(wire, buf, counts=None):
    """Rank r starts holding block r of buf (blocks: `counts`, default split_counts(n, P)); after
    P-1 steps everyone holds every block."""
    P, r = wire.size, wire.rank
    starts = offsets(counts or split_counts(buf.size, P))
    block = lambda i: buf[starts[i % P]:starts[i % P + 1]]  # noqa: E731
    for s in range(P - 1):
        wire.sendrecv(block(r - s), (r + 1) % P, block(r - s - 1), (r - 1) % P)


def _ring(wire, buf, op):
    ring_reduce_scatter(wire, buf, op)
    ring_allgather(wire, buf)


# --- recursive doubling / Rabenseifner (Thakur, Rabenseifner & Gropp 2005) ----------------

def _fold_in(wire, buf, op):
    """(pof2, rem, newrank): ranks < 2*rem pair up, odd ones keep the pair's sum; newrank -1 = idle."""
    P, r = wire.size, wire.rank
    pof2 = 1 << (P.bit_length() - 1)
    rem = P - pof2
    if r >= 2 * rem:
        return pof2, rem, r - rem
    if r % 2 == 0:
        wire.send(buf, r + 1)
        return pof2, rem, -1
    tmp = scratch(buf, buf.size)
    wire.recv_into(tmp, r - 1)
    combine(buf, tmp, op)
    return pof2, rem, r // 2


def _fold_out(wire, buf, rem):
    r = wire.rank
    if r < 2 * rem:
        if r % 2:
            wire.send(buf, r - 1)
        else:
            wire.recv_into(buf, r + 1)


def _real(newrank, rem):
    """World rank of a survivor numbered `newrank`."""
    return newrank * 2 + 1 if newrank < rem else newrank + rem


def _recursive_doubling(wire, buf, op):
    pof2, rem, newrank = _fold_in(wire, buf, op)
    if newrank >= 0:
        tmp = scratch(buf, buf.size)                                     # (n,)
        mask = 1
        while mask < pof2:
            partner = _real(newrank ^ mask, rem)
            wire.sendrecv(buf, partner, tmp, partner)
            combine(buf, tmp, op)
            mask <<= 1
    _fold_out(wire, buf, rem)


def _rabenseifner(wire, buf, op):
    pof2, rem, newrank = _fold_in(wire, buf, op)
    if newrank >= 0:
        starts = offsets(split_counts(buf.size, pof2))
        span = lambda lo, hi: buf[starts[lo]:starts[hi]]  # noqa: E731   blocks lo..hi-1
        lo, hi, mask = 0, pof2, pof2 >> 1
        while mask:                      # recursive halving reduce-scatter: keep half each step
            partner = _real(newrank ^ mask, rem)
            mid = (lo + hi) // 2
            keep, give = ((lo, mid), (mid, hi)) if newrank & mask == 0 else ((mid, hi), (lo, mid))
            send_recv_reduce(wire, span(*give), partner, span(*keep), partner, op)
            (lo, hi), mask = keep, mask >> 1
        mask = 1
        while mask < pof2:               # recursive doubling all-gather: double the span each step
            partner_new = newrank ^ mask
            mine, theirs = newrank & ~(mask - 1), partner_new & ~(mask - 1)
            partner = _real(partner_new, rem)
            wire.sendrecv(span(mine, mine + mask), partner, span(theirs, theirs + mask), partner)
            mask <<= 1
    _fold_out(wire, buf, rem)


# --- binomial tree ----------------------------------------------------------------------------

def binomial_reduce(wire, buf, op, root=0):
    """The reduction of everyone's buf ends in root's buf (others' bufs are left partial)."""
    P, vr = wire.size, (wire.rank - root) % wire.size
    tmp = scratch(buf, buf.size)                                         # (n,)
    mask = 1
    while mask < P:
        if vr & mask:
            wire.send(buf, (vr - mask + root) % P)
            return
        if vr + mask < P:
            wire.recv_into(tmp, (vr + mask + root) % P)
            combine(buf, tmp, op)
        mask <<= 1


def binomial_bcast(wire, buf, root=0):
    P, vr = wire.size, (wire.rank - root) % wire.size
    mask = 1
    while mask < P:
        if vr & mask:
            wire.recv_into(buf, (vr - mask + root) % P)
            break
        mask <<= 1
    mask >>= 1
    while mask:
        if vr + mask < P:
            wire.send(buf, (vr + mask + root) % P)
        mask >>= 1


def _tree(wire, buf, op):
    binomial_reduce(wire, buf, op)
    binomial_bcast(wire, buf)


# --- hierarchical: node-local reduce, ring among node leaders, node-local broadcast ----------

def _hierarchical(wire, buf, op):
    node, leaders = nodes.split_nodes(wire.comm)
    local = wire.on(node)
    if local.size > 1:
        binomial_reduce(local, buf, op)
    if leaders is not None and leaders.Get_size() > 1:
        _ring(wire.on(leaders), buf, op)
    if local.size > 1:
        binomial_bcast(local, buf)


BODIES = {
    "ring": _ring,
    "recursive_doubling": _recursive_doubling,
    "rabenseifner": _rabenseifner,
    "tree": _tree,
    "hierarchical": _hierarchical,
}
