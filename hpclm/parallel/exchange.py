"""How compressor payloads cross the data-parallel communicator: one *exchange* per compressor,
chosen once when the strategy is built (`exchange_of`), never switched per call.

Compressors (hpclm.compress) never touch MPI; this module does, with the communicator passed in.

    exchange     used for                 what travels (per rank, n-element bucket, P ranks)
    sum          aggregate "sum"          each payload array all-reduced (hpclm.comm.allreduce,
                 (none, fp16, bf16,       cfg.comm.algorithm): ~2(P-1)/P * payload_bytes(n) each way;
                 randomk)                 then decompress(sum) / P. Payload arrays must be of a dtype
                                          our all-reduce adds, or the compressor declares `wire_sum`.
    gather       aggregate "gather"       sizes first (one int64 per payload array, MPI Allgather),
                 (int8, qsgd, terngrad,   then every rank's payload packed into one byte string
                 topk, threshold, ...)    (8-byte aligned arrays): our allgather for equal sizes, MPI
                                          Allgatherv for unequal ones: (P-1) * payload_bytes(n) sent,
                                          the others' payloads received. Then decompress-and-sum in
                                          rank order (compressors with as_sparse, topk / threshold:
                                          every rank's (values, indices) in one bincount
                                          scatter-add), / P.
    vote         aggregate "sign_vote"    signSGD with majority vote, sharded like a parameter server
                 with a bitwise           over all ranks (the data movement of DeepSpeed's 1-bit
                 majority_vote (signsgd)  all-reduce): the B = ceil(n/8) bytes of packed signs are cut
                                          into P chunks on byte boundaries (split_counts(B, P)), each
                                          sent in a block of L = ceil(B/P) bytes; an all-to-all gives
                                          rank r every rank's bits of chunk r, rank r takes the
                                          compressor's majority_vote of them (signsgd: ties -> +1) and
                                          packs it, an all-gather of the packed votes gives everyone the
                                          whole vote: 2 (P-1) L bytes each way (= 2(P-1)/P * n/8 when
                                          8P divides n), 32x fewer than fp32 at every P. The result is
                                          the vote (+1/-1): it is NOT divided by P.
    vote_gather  sign_vote without a      the packed signs all-gathered as in `gather` ((P-1) n/8 bytes
                 bitwise majority_vote    each way), then the compressor's majority_vote, else
                 (ternary votes)          sign(sum_r sign(decompress(payload_r))) (0 where the vote ties);
                                          also selectable for signsgd, for comparison.
    onebit       ef_sign by default       DeepSpeed's 1-bit compressed all-reduce (parallel/onebit.py):
                                          all-to-all + all-gather of sign+scale chunks with worker and
                                          server error buffers; 2 (P-1) (n/(8P) + 4) bytes each way.

PowerSGD (aggregate "low_rank") is not a per-bucket exchange: parallel/powersgd.py runs it over the
whole model. `compress.exchange` = auto picks the row above for the compressor; naming one
overrides it (e.g. gather for EF-SignSGD's plain gather of every rank's signs).

A bucket's codec has one method, `average(comm, grad, step, algorithm, timer)`: `Compressed`
below (compressor + exchange) or a parallel.onebit.OneBitAllreduce. With one rank (comm None or
of size 1) a codec still compresses and decompresses, so its effect on the loss shows at P=1 too.
Every exchange charges its bytes to hpclm.comm.counters under the communicator's group.
"""
import numpy

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.comm.layout import offsets, split_counts
from hpclm.comm.ops import DTYPES as SUMMABLE_DTYPES
from hpclm.compress.base import AGGREGATE_GATHER, AGGREGATE_SIGN_VOTE, AGGREGATE_SUM
from hpclm.errors import UserError
from hpclm.timing.timer import Timer

EXCHANGES = ("sum", "gather", "vote", "vote_gather", "onebit")
SIZES_KEY = "payload_sizes:mpi"              # counter key of the size exchange before an Allgatherv
ALLGATHERV_KEY = "allgatherv:mpi"            # counter key of unequal-size payload gathers
ONEBIT_BY_DEFAULT = ("ef_sign",)             # compressors that `auto` runs as the 1-bit all-reduce


def exchange_of(compressor, choice="auto"):
    """The exchange for `compressor` (see the module docstring); `choice` other than auto is checked."""
    name = getattr(compressor, "name", "")
    if choice == "auto":
        if name in ONEBIT_BY_DEFAULT:
            return "onebit"
        if compressor.aggregate == AGGREGATE_SUM:
            return "sum"
        if compressor.aggregate == AGGREGATE_GATHER:
            return "gather"
        if compressor.aggregate == AGGREGATE_SIGN_VOTE:
            return "vote" if hasattr(compressor, "majority_vote") else "vote_gather"
        raise UserError(f"compressor {name!r} has aggregate {compressor.aggregate!r}, which no per-bucket "
                        f"exchange carries")
    if choice not in EXCHANGES:
        raise UserError(f"compress.exchange must be auto or one of {', '.join(EXCHANGES)}, got {choice!r}")
    allowed = {"sum": compressor.aggregate == AGGREGATE_SUM,
               "gather": compressor.aggregate in (AGGREGATE_SUM, AGGREGATE_GATHER),
               "vote": compressor.aggregate == AGGREGATE_SIGN_VOTE and hasattr(compressor, "majority_vote"),
               "vote_gather": compressor.aggregate == AGGREGATE_SIGN_VOTE,
               "onebit": name in ONEBIT_BY_DEFAULT}
    if not allowed[choice]:
        raise UserError(f"compress.exchange={choice} does not fit compressor {name!r} "
                        f"(aggregate {compressor.aggregate!r})")
    return choice


def _size(comm):
    return 1 if comm is None else comm.Get_size()


# ------------------------------------------------------------------------------------ packing
def _align(nbytes):
    return (nbytes + 7) & ~7


def pack(payload):
    """One rank's payload arrays -> (uint8 host buffer, element counts); each array 8-byte aligned."""
    host = [numpy.ascontiguousarray(X.to_host(a)).reshape(-1) for a in payload]
    buf = numpy.zeros(sum(_align(a.nbytes) for a in host), dtype=numpy.uint8)
    at = 0
    for a in host:
        buf[at:at + a.nbytes] = a.view(numpy.uint8)
        at += _align(a.nbytes)
    return buf, [a.size for a in host]


def unpack(buf, counts, like):
    """Inverse of pack: arrays with the dtypes of `like` (a payload) and the given element counts."""
    out, at = [], 0
    for n, ref in zip(counts, like):
        dt = numpy.dtype(ref.dtype)
        a = buf[at:at + n * dt.itemsize].view(dt)
        out.append(X.to_device(a) if not isinstance(ref, numpy.ndarray) else a)
        at += _align(n * dt.itemsize)
    return tuple(out)


# ------------------------------------------------------------------------------------ exchanges
def exchange_sum(comm, payload, algorithm="mpi", op="sum"):
    """Sum every payload array across ranks (in place where the array allows); returns the payload.
    op: "sum", or a compressor's wire_sum (see hpclm.comm.ops)."""
    if _size(comm) == 1:
        return payload
    if op == "sum" and not all(numpy.dtype(a.dtype) in SUMMABLE_DTYPES for a in payload):
        raise UserError(f"exchange sum: payload dtypes {[str(a.dtype) for a in payload]} cannot be added on the "
                        f"wire; the compressor needs a wire_sum, or use compress.exchange=gather")
    return tuple(collectives.allreduce(comm, a if a.flags.c_contiguous and a.ndim == 1 else a.reshape(-1).copy(),
                             op=op, algorithm=algorithm) for a in payload)


def exchange_gather(comm, payload, algorithm="mpi"):
    """Every rank's payload (a list in rank order). Sizes travel first (an MPI Allgather of one int64
    per array); equal byte sizes go through hpclm.comm.allgather (ring if cfg says ring, else MPI's),
    unequal ones through MPI Allgatherv. Bytes are charged to hpclm.comm.counters."""
    P = _size(comm)
    if P == 1:
        return [payload]
    group = collectives.group_name(comm)
    buf, counts = pack(payload)
    sizes = numpy.empty((P, len(counts) + 1), dtype=numpy.int64)
    comm.Allgather(numpy.array(counts + [buf.nbytes], dtype=numpy.int64), sizes)
    collectives.counters.add(SIZES_KEY, sizes[0].nbytes * (P - 1), sizes[0].nbytes * (P - 1), calls=1, group=group)
    nbytes = sizes[:, -1]
    if numpy.all(nbytes == nbytes[0]):
        full = collectives.allgather(comm, buf, algorithm="ring" if algorithm == "ring" else "mpi")
        starts = numpy.arange(P + 1) * int(nbytes[0])
    else:
        starts = numpy.concatenate([[0], numpy.cumsum(nbytes)])
        full = numpy.empty(int(starts[-1]), dtype=numpy.uint8)
        comm.Allgatherv(buf, [full, (nbytes, starts[:-1])])
        r = comm.Get_rank()
        collectives.counters.add(ALLGATHERV_KEY, buf.nbytes * (P - 1), int(starts[-1]) - int(nbytes[r]), calls=1,
                       group=group)
    return [unpack(full[starts[i]:starts[i + 1]], sizes[i, :-1], payload) for i in range(P)]


def vote_layout(n, P):
    """(chunk byte counts, their offsets (P+1), block bytes L) of the sharded vote of n packed signs:
    split_counts(ceil(n/8), P) on byte boundaries, each chunk travelling in a block of L = ceil(B/P)."""
    counts = split_counts((n + 7) // 8, P)
    return counts, offsets(counts), max(counts)


def exchange_vote(comm, compressor, payload, n, algorithm="mpi"):
    """signSGD's majority vote, sharded over the ranks: the packed vote (a payload) of every rank's
    packed signs `payload` = (bits (ceil(n/8),) uint8,). All-to-all of the chunks (rank r receives
    every rank's bits of chunk r), rank r's `compressor.majority_vote` of its chunk (element-wise, so
    the vote of a chunk is that chunk of the vote; ties as the compressor breaks them), all-gather of
    the packed votes. Chunks shorter than the block are zero-padded on the wire; bytes are charged
    by hpclm.comm: 2 (P-1) L each way (vote_layout)."""
    bits = payload[0]
    if len(payload) != 1 or numpy.dtype(bits.dtype) != numpy.uint8 or bits.size != (n + 7) // 8:
        raise UserError(f"exchange vote needs a payload of one packed-bit uint8 array of "
                        f"{(n + 7) // 8} bytes, got {[(a.dtype, a.size) for a in payload]}; use vote_gather")
    P = _size(comm)
    if P == 1:
        return compressor.majority_vote([payload], n)
    r = comm.Get_rank()
    counts, starts, L = vote_layout(n, P)
    xp = X.array_module(bits)
    send = xp.zeros((P, L), dtype=xp.uint8)
    for j in range(P):
        send[j, :counts[j]] = bits[starts[j]:starts[j + 1]]
    recv = collectives.alltoall(comm, send.reshape(-1), algorithm="mpi" if algorithm == "mpi" else "pairwise").reshape(P, L)
    mine = xp.zeros(L, dtype=xp.uint8)
    if counts[r]:
        elements = min(8 * starts[r + 1], n) - 8 * starts[r]
        vote = compressor.majority_vote([(recv[i, :counts[r]],) for i in range(P)], elements)[0]
        mine[:counts[r]] = vote
    full = collectives.allgather(comm, mine, algorithm="ring" if algorithm == "ring" else "mpi").reshape(P, L)
    return (xp.concatenate([full[j, :counts[j]] for j in range(P)]),)


# ------------------------------------------------------------------------------------ combining
def combine_sum(compressor, payloads, ctx, out):
    """out <- sum over ranks of decompress(payload_r) (rank order); a compressor with
    `as_sparse(payload) -> (values (k,), indices (k,))` (topk, threshold) scatter-adds them all at once."""
    xp = X.array_module(out)
    as_sparse = getattr(compressor, "as_sparse", None)
    if as_sparse is not None:
        pairs = [as_sparse(p) for p in payloads]
        values = xp.concatenate([v for v, _ in pairs]).astype(out.dtype, copy=False)
        index = xp.concatenate([i for _, i in pairs]).astype(xp.int64, copy=False)
        out[...] = xp.bincount(index, weights=values, minlength=ctx.n).astype(out.dtype, copy=False)
        return out
    out[...] = compressor.decompress(payloads[0], ctx)
    for p in payloads[1:]:
        out += compressor.decompress(p, ctx)
    return out


def combine_vote(compressor, payloads, ctx, out):
    """out <- the element-wise majority vote of the ranks' signs: the compressor's own
    `majority_vote(payloads, n)` when it has one (signsgd: ties -> +1, GPU kernel), else
    sign(sum_r sign(decompress(payload_r))) (0 where the vote ties)."""
    xp = X.array_module(out)
    vote = getattr(compressor, "majority_vote", None)
    if vote is not None:
        out[...] = compressor.decompress(vote(payloads, ctx.n), ctx)
        return out
    votes = xp.zeros(ctx.n, dtype=xp.int32)
    for p in payloads:
        votes += xp.sign(compressor.decompress(p, ctx)).astype(xp.int32)
    out[...] = xp.sign(votes)
    return out


# ------------------------------------------------------------------------------------ codecs
_UNTIMED = Timer(enabled=False)


def timed(timer, name, fn):
    """fn() timed as region `name` on `timer` (an hpclm.timing.Timer, or None for untimed)."""
    with (timer or _UNTIMED).region(name):
        return fn()


class Compressed:
    """A bucket's codec: `compressor` (maybe wrapped in error feedback) moved by `exchange` (not onebit)."""

    def __init__(self, compressor, exchange):
        if exchange not in EXCHANGES or exchange == "onebit":
            raise UserError(f"Compressed: {exchange!r} is not a payload exchange")
        self.compressor, self.exchange = compressor, exchange
        self.wire_sum = getattr(compressor, "wire_sum", None)

    def average(self, comm, grad, step=0, algorithm="mpi", timer=None):
        """grad <- its compressed average over `comm` (the majority vote for vote exchanges).
        Regions: compress, comm (communication only), decompress. Returns grad."""
        comp, P = self.compressor, _size(comm)
        payload, ctx = timed(timer, "compress", lambda: comp.compress(grad, step))
        if self.exchange == "sum":
            result = timed(timer, "comm", lambda: exchange_sum(comm, payload, algorithm, op=self.wire_sum or "sum"))
        elif self.exchange == "vote":
            result = timed(timer, "comm", lambda: exchange_vote(comm, comp, payload, ctx.n, algorithm))
        else:
            result = timed(timer, "comm", lambda: exchange_gather(comm, payload, algorithm))

        def decompress():
            if self.exchange == "sum":
                grad[...] = comp.decompress(result, ctx)
            elif self.exchange == "gather":
                combine_sum(comp, result, ctx, grad)
            elif self.exchange == "vote":
                grad[...] = comp.decompress(result, ctx)
                return
            else:
                combine_vote(comp, result, ctx, grad)
                return
            if P > 1:
                grad[...] *= grad.dtype.type(1.0 / P)
        timed(timer, "decompress", decompress)
        return grad

    def state_dict(self):
        return self.compressor.state_dict() if hasattr(self.compressor, "state_dict") else {}

    def load_state_dict(self, state):
        if state and hasattr(self.compressor, "load_state_dict"):
            self.compressor.load_state_dict(state)


def average(comm, grad, compressor, step=0, algorithm="mpi", exchange="auto", timer=None):
    """Replace `grad` (a flat slice, e.g. a bucket) by its compressed average across `comm`'s ranks,
    in one call: `compressor` is a registry compressor (maybe in error feedback), or for onebit a
    parallel.onebit.OneBitAllreduce (its own codec). Returns grad."""
    codec = compressor if hasattr(compressor, "average") else Compressed(compressor, exchange_of(compressor, exchange))
    return codec.average(comm, grad, step, algorithm, timer)
