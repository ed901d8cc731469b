"""Compressed gradient averaging: move compressor payloads across the data-parallel communicator.

Compressors (hpclm.compress) never touch MPI; this module does, with the communicator passed in.
How a bucket's payloads combine is the compressor's `aggregate`, turned into a *strategy* here:

    strategy    used for                 what travels (per rank, n-element bucket, P ranks)
    allreduce   aggregate "sum"          each payload array all-reduced (hpclm.comm.allreduce,
                (none, fp16, bf16,       cfg.comm.algorithm): ~2(P-1)/P * payload_bytes(n) each way;
                randomk)                 then decompress(sum) / P. A payload array of a dtype our
                                         all-reduce cannot add (e.g. bf16 bits as uint16) falls back
                                         to `allgather`.
    allgather   aggregate "gather"       sizes first (one int64 per payload array, MPI Allgather),
                (int8, qsgd, terngrad,   then every rank's payload packed into one byte string
                topk, threshold, ...)    (8-byte aligned arrays): our allgather for equal sizes, MPI
                                         Allgatherv for unequal ones: (P-1) * payload_bytes(n) sent,
                                         the others' payloads received. Then decompress-and-sum in
                                         rank order (compressors with as_sparse, topk / threshold:
                                         every rank's (values, indices) in one bincount
                                         scatter-add), / P.
    vote        aggregate "sign_vote"    signSGD with majority vote, sharded like a parameter server
                (signsgd: compressors    over all ranks (the data movement of DeepSpeed's 1-bit
                with a bitwise           all-reduce): the B = ceil(n/8) bytes of packed signs are cut
                majority_vote)           into P chunks on byte boundaries (split_counts(B, P)), each
                                         sent in a block of L = ceil(B/P) bytes; an all-to-all gives
                                         rank r every rank's bits of chunk r, rank r takes the
                                         compressor's majority_vote of them (signsgd: ties -> +1) and
                                         packs it, an all-gather of the packed votes gives everyone the
                                         whole vote: 2 (P-1) L bytes each way (= 2(P-1)/P * n/8 when
                                         8P divides n), 32x fewer than fp32 at every P. The result is
                                         the vote (+1/-1): it is NOT divided by P.
    vote_allgather               the old form, for comparison (STRATEGY["signsgd"] = "vote_allgather")
                (sign_vote without       and for sign_vote compressors without majority_vote (their
                majority_vote)           vote has 0 on ties, which 1 bit cannot carry): the packed signs
                                         all-gathered as in `allgather` ((P-1) n/8 bytes each way,
                                         16x fewer than fp32 at P=4, 8x at P=8), then the compressor's
                                         majority_vote, else sign(sum_r sign(decompress(payload_r)))
                                         (0 where the vote ties).
    onebit      ef_sign (see STRATEGY)   DeepSpeed's 1-bit compressed all-reduce (parallel/onebit.py):
                                         all-to-all + all-gather of sign+scale chunks with worker and
                                         server error buffers; 2 (P-1) (n/(8P) + 4) bytes each way.
    powersgd    aggregate "low_rank"     whole model after backward (parallel/powersgd.py).

STRATEGY maps a compressor name to a strategy other than its aggregate's (module-level choice):
`ef_sign` runs as the 1-bit compressed all-reduce of 1-bit Adam (the name "onebit" too, when the
registry has no such compressor). Set STRATEGY["ef_sign"] = "allgather" for EF-SignSGD's plain
gather of every rank's signs, STRATEGY["signsgd"] = "vote_allgather" for signSGD's old all-gather.
`compress.onebit_adam` sends AdamW's momentum through the same 1-bit all-reduce instead
(parallel/onebit_adam.py, built here by build_data_parallel).

With one rank a compressor still compresses and decompresses (no communication), so its effect on
the loss shows at P=1 too.

`CompressedDataParallel` is DataParallel with compressed buckets (one compressor, wrapped in
error feedback by hpclm.compress.build_with_memory, per bucket). With `comm.overlap` each bucket
is compressed, exchanged and decompressed on the communication thread as soon as backward has
finished it; otherwise after backward on the training thread. Timer regions: `compress` and
`decompress` (with overlap they were measured on the communication thread, so they ran alongside
backward, like `comm_async`, which then holds only the exchange), `comm` / `comm_wait` /
`comm_async` as in DataParallel (for "vote", `comm` also holds each rank's vote of its chunk, n/P
elements between the two collectives). Bytes: every exchange goes through hpclm.comm (or charges
hpclm.comm.counters itself for MPI's own calls), so the training loop's counter deltas are the
bytes that crossed the wire; `bytes_uncompressed` is what the same gradient would move in an
uncompressed bandwidth-optimal all-reduce, 2(P-1)/P * n * itemsize per step.
"""
import numpy

from hpclm import comm as C
from hpclm import xp as X
from hpclm.comm.layout import offsets, split_counts
from hpclm.comm.ops import DTYPES as SUMMABLE_DTYPES
from hpclm.compress.base import AGGREGATE_GATHER, AGGREGATE_LOW_RANK, AGGREGATE_SIGN_VOTE, AGGREGATE_SUM
from hpclm.errors import UserError
from hpclm.parallel.data import DataParallel
from hpclm.timing.timer import Timer

STRATEGY = {"ef_sign": "onebit", "onebit": "onebit"}
_BY_AGGREGATE = {AGGREGATE_SUM: "allreduce", AGGREGATE_GATHER: "allgather",
                 AGGREGATE_SIGN_VOTE: "vote", AGGREGATE_LOW_RANK: "powersgd"}
SIZES_KEY = "payload_sizes:mpi"              # counter key of the size exchange before an Allgatherv
ALLGATHERV_KEY = "allgatherv:mpi"            # counter key of unequal-size payload gathers


def strategy_of(compressor):
    name = getattr(compressor, "name", "")
    if name in STRATEGY:
        return STRATEGY[name]
    try:
        return _BY_AGGREGATE[compressor.aggregate]
    except KeyError:
        raise UserError(f"compressor {name!r} declares an unknown aggregate {compressor.aggregate!r}") from None


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
    return tuple(C.allreduce(comm, a if a.flags.c_contiguous and a.ndim == 1 else a.reshape(-1).copy(),
                             op=op, algorithm=algorithm) for a in payload)


def exchange_gather(comm, payload, algorithm="mpi"):
    """Every rank's payload (a list in rank order). Sizes travel first (an MPI Allgather of one int64
    per array); equal byte sizes go through hpclm.comm.allgather (ring if cfg says ring, else MPI's),
    unequal ones through MPI Allgatherv. Bytes are charged to hpclm.comm.counters."""
    P = _size(comm)
    if P == 1:
        return [payload]
    buf, counts = pack(payload)
    sizes = numpy.empty((P, len(counts) + 1), dtype=numpy.int64)
    comm.Allgather(numpy.array(counts + [buf.nbytes], dtype=numpy.int64), sizes)
    C.counters.add(SIZES_KEY, sizes[0].nbytes * (P - 1), sizes[0].nbytes * (P - 1), calls=1)
    nbytes = sizes[:, -1]
    if numpy.all(nbytes == nbytes[0]):
        full = C.allgather(comm, buf, algorithm="ring" if algorithm == "ring" else "mpi")
        starts = numpy.arange(P + 1) * int(nbytes[0])
    else:
        starts = numpy.concatenate([[0], numpy.cumsum(nbytes)])
        full = numpy.empty(int(starts[-1]), dtype=numpy.uint8)
        comm.Allgatherv(buf, [full, (nbytes, starts[:-1])])
        r = comm.Get_rank()
        C.counters.add(ALLGATHERV_KEY, buf.nbytes * (P - 1), int(starts[-1]) - int(nbytes[r]), calls=1)
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
        raise UserError(f"compressed: strategy 'vote' needs a payload of one packed-bit uint8 array of "
                        f"{(n + 7) // 8} bytes, got {[(a.dtype, a.size) for a in payload]}; use 'vote_allgather'")
    P = _size(comm)
    if P == 1:
        return compressor.majority_vote([payload], n)
    r = comm.Get_rank()
    counts, starts, L = vote_layout(n, P)
    xp = X.array_module(bits)
    send = xp.zeros((P, L), dtype=xp.uint8)
    for j in range(P):
        send[j, :counts[j]] = bits[starts[j]:starts[j + 1]]
    recv = C.alltoall(comm, send.reshape(-1), algorithm="mpi" if algorithm == "mpi" else "pairwise").reshape(P, L)
    mine = xp.zeros(L, dtype=xp.uint8)
    if counts[r]:
        elements = min(8 * starts[r + 1], n) - 8 * starts[r]
        vote = compressor.majority_vote([(recv[i, :counts[r]],) for i in range(P)], elements)[0]
        mine[:counts[r]] = vote
    full = C.allgather(comm, mine, algorithm="ring" if algorithm == "ring" else "mpi").reshape(P, L)
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


def _summable(payload):
    return all(numpy.dtype(a.dtype) in SUMMABLE_DTYPES for a in payload)


def average(comm, grad, compressor, step=0, algorithm="mpi", strategy=None, timer=None):
    """Replace `grad` (a flat slice, e.g. a bucket) by its compressed average across `comm`'s ranks
    (the majority vote for "vote"). `compressor` may be wrapped in error feedback. One call; for
    onebit pass a parallel.onebit.OneBitAllreduce as `compressor`. `timer` (anything with
    start/stop) times the compress, comm and decompress regions. Returns grad."""
    strategy = strategy or strategy_of(compressor)
    if strategy == "onebit":
        return compressor.allreduce(comm, grad, algorithm=algorithm, timer=timer)
    job = BucketJob(compressor, strategy, grad, step)
    _region(timer, "compress", job.compress)
    _region(timer, "comm", lambda: job.exchange(comm, algorithm))
    _region(timer, "decompress", job.decompress)
    return grad


_UNTIMED = Timer(enabled=False)


def _region(timer, name, fn):
    """fn() timed as `name` on `timer` (an hpclm.timing.Timer, or None for untimed)."""
    with (timer or _UNTIMED).region(name):
        return fn()


class BucketJob:
    """One bucket's compressed average, in three steps: compress, exchange (communication only),
    decompress (into the bucket)."""

    def __init__(self, compressor, strategy, grad, step):
        self.compressor, self.strategy, self.grad, self.step = compressor, strategy, grad, step
        self.wire_sum = getattr(compressor, "wire_sum", None)     # its own reduction op, if it has one
        self.P = 1

    def compress(self):
        self.payload, self.ctx = self.compressor.compress(self.grad, self.step)
        if self.strategy == "allreduce" and self.wire_sum is None and not _summable(self.payload):
            self.strategy = "allgather"
        elif self.strategy == "vote" and getattr(self.compressor, "majority_vote", None) is None:
            self.strategy = "vote_allgather"     # a ternary vote (0 on ties) does not fit in 1 bit

    def exchange(self, comm, algorithm):
        self.P = _size(comm)
        if self.strategy == "allreduce":
            self.result = exchange_sum(comm, self.payload, algorithm, op=self.wire_sum or "sum")
        elif self.strategy == "vote":
            self.result = exchange_vote(comm, self.compressor, self.payload, self.ctx.n, algorithm)
        elif self.strategy in ("allgather", "vote_allgather"):
            self.result = exchange_gather(comm, self.payload, algorithm)
        else:
            raise UserError(f"compressed: strategy {self.strategy!r} is not a per-bucket exchange")

    def decompress(self):
        g, ctx = self.grad, self.ctx
        if self.strategy == "allreduce":
            g[...] = self.compressor.decompress(self.result, ctx)
            if self.P > 1:
                g *= g.dtype.type(1.0 / self.P)
        elif self.strategy == "allgather":
            combine_sum(self.compressor, self.result, ctx, g)
            if self.P > 1:
                g *= g.dtype.type(1.0 / self.P)
        elif self.strategy == "vote":
            g[...] = self.compressor.decompress(self.result, ctx)
        else:
            combine_vote(self.compressor, self.result, ctx, g)
        self.payload = self.result = None


# ------------------------------------------------------------------------------------ checkpoints
def flatten_state(prefix, state, out):
    """Nested {name: array | dict} -> out["prefix.name. ..."] = host array (flat names: a
    checkpoint's /extra holds datasets only, no groups)."""
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flatten_state(name, value, out)
        else:
            out[name] = numpy.asarray(X.to_host(value) if not numpy.isscalar(value) else value)
    return out


def unflatten_state(prefix, flat):
    """Inverse of flatten_state for the keys under prefix."""
    state = {}
    head = prefix + "."
    for name, value in flat.items():
        if not name.startswith(head):
            continue
        parts = name[len(head):].split(".")
        node = state
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return state


def gather_states(comm, local):
    """Collective: {name: this rank's array} -> on rank 0 {name: (P, *shape) stacked}, else None.
    Every rank holds the same names and shapes (buffer Gather of one concatenated float64/byte row)."""
    P = _size(comm)
    names = sorted(local)
    if P == 1:
        return {name: numpy.asarray(local[name])[None] for name in names}
    row = numpy.concatenate([numpy.ascontiguousarray(local[n]).reshape(-1).view(numpy.uint8) for n in names]) \
        if names else numpy.zeros(0, numpy.uint8)
    rank = comm.Get_rank()
    recv = numpy.empty((P, row.size), dtype=numpy.uint8) if rank == 0 else None
    comm.Gather(row, recv, root=0)
    if rank != 0:
        return None
    out, at = {}, 0
    for n in names:
        a = numpy.asarray(local[n])
        out[n] = numpy.ascontiguousarray(recv[:, at:at + a.nbytes]).view(a.dtype).reshape((P,) + a.shape)
        at += a.nbytes
    return out


def rows_for_rank(extra, names_shapes, rank, world, where):
    """{name: array} of this rank from checkpoint extras stacked (P, ...); UserError on a mismatch."""
    out = {}
    for name, (shape, dtype) in names_shapes.items():
        if name not in extra:
            raise UserError(f"{where}: checkpoint has no /extra/{name} (was it written without this compressor?)")
        a = extra[name]
        if a.shape != (world,) + tuple(shape):
            raise UserError(f"{where}: checkpoint /extra/{name} has shape {a.shape}, expected {(world,) + tuple(shape)} "
                            f"(resume with the same world size and compressor)")
        out[name] = a[rank].astype(dtype, copy=False)
    return out


class _CompressedStrategy:
    """What the compressed strategies share on top of DataParallel: they average micro-batches
    themselves, report the uncompressed volume beside the bytes they send, and checkpoint their
    state (local_state() / load_local_state(), every rank's stacked on rank 0)."""

    averages_micro_batches = True

    @property
    def bytes_uncompressed(self):
        """Bytes per rank per step of an uncompressed bandwidth-optimal all-reduce of the gradient."""
        P = self.world
        return 2 * (P - 1) * self.grad_flat.nbytes // P if P > 1 else 0

    def checkpoint_extra(self):
        """Collective: every rank's compression state, stacked on rank 0 as {name: (P, ...)}."""
        return gather_states(self.comm if self.world > 1 else None, self.local_state())

    def restore(self, extra, step):
        """Load this rank's rows of the checkpoint's extras and continue counting steps at `step`."""
        local = self.local_state()
        shapes = {name: (a.shape, a.dtype) for name, a in local.items()}
        rank = self.comm.Get_rank() if self.world > 1 else 0
        self.load_local_state(rows_for_rank(extra, shapes, rank, self.world, "resume"))
        self.step = step


# ------------------------------------------------------------------------------------ data parallel
class CompressedDataParallel(_CompressedStrategy, DataParallel):
    """DataParallel whose buckets are averaged through a compressor (see the module docstring).

    make(n, dtype) builds the compressor of a bucket of n elements (e.g. build_with_memory), or a
    OneBitAllreduce for strategy onebit. grad_scale multiplies the gradient before compression
    (1 / grad_accum: the compressor sees the mean over micro-batches, so the loop must not scale
    again: `averages_micro_batches` is True)."""

    acts_alone = True

    def __init__(self, mpi_comm, grad_flat, cfg, make, timer=None, grad_scale=1.0, strategy=None, warmup_steps=0):
        super().__init__(mpi_comm, grad_flat, cfg, timer=timer)
        self.grad_scale = grad_scale
        self.warmup_steps = warmup_steps             # steps averaged uncompressed before compression starts
        self.compressors = [make(hi - lo, grad_flat.dtype) for lo, hi in self.buckets]
        self.strategy = strategy or strategy_of(self.compressors[0])
        if self.strategy == "powersgd":
            raise UserError("compressed: powersgd runs over the whole model; use PowerSGDDataParallel")
        self.step = 0
        self._compute = {"compress": 0.0, "decompress": 0.0}

    def _job(self, i):
        lo, hi = self.buckets[i]
        grad = self.grad_flat[lo:hi]
        if self.grad_scale != 1.0:
            grad *= grad.dtype.type(self.grad_scale)
        return grad

    def _run_bucket(self, wire_comm, i, threaded):
        """Compress, exchange and decompress bucket i. On the communication thread (threaded) the
        regions go to a Timer of their own and are charged in finish(): `comm` to comm_async."""
        grad, comp = self._job(i), self.compressors[i]
        t = Timer() if threaded else self.timer
        if self.strategy == "onebit":
            comp.allreduce(wire_comm, grad, algorithm=self.cfg.algorithm, timer=t)
        else:
            job = BucketJob(comp, self.strategy, grad, self.step)
            _region(t, "compress", job.compress)
            _region(t, "comm", lambda: job.exchange(wire_comm, self.cfg.algorithm))
            _region(t, "decompress", job.decompress)
        if threaded:
            with self._lock:
                totals = t.collect()
                self._async_seconds += totals.pop("comm", 0.0)
                for region, seconds in totals.items():
                    self._compute[region] = self._compute.get(region, 0.0) + seconds

    def _reduce_bucket(self, wire_comm, i):            # runs on the communication thread
        if self.step < self.warmup_steps:
            self._job(i)
            super()._reduce_bucket(wire_comm, i)
        else:
            self._run_bucket(wire_comm, i, threaded=True)

    def _reduce_bucket_now(self, i):
        if self.step < self.warmup_steps:
            self._job(i)
            super()._reduce_bucket_now(i)
        else:
            self._run_bucket(self.comm if self.world > 1 else None, i, threaded=False)

    def _charge_async(self):
        super()._charge_async()
        with self._lock:
            compute, self._compute = self._compute, {"compress": 0.0, "decompress": 0.0}
        for region, seconds in compute.items():
            if seconds and self.timer:
                self.timer.add(region, seconds)

    def finish(self):
        """Average the gradient (compressed) over the ranks; with one rank, compress + decompress."""
        super().finish()
        self.step += 1

    # --------------------------------------------------------------------------- checkpoints
    def local_state(self):
        out = {}
        for i, comp in enumerate(self.compressors):
            state = comp.state_dict() if hasattr(comp, "state_dict") else {}
            flatten_state(f"compress.bucket{i}", state, out)
        return out

    def load_local_state(self, flat):
        for i, comp in enumerate(self.compressors):
            state = unflatten_state(f"compress.bucket{i}", flat)
            if state and hasattr(comp, "load_state_dict"):
                comp.load_state_dict(state)


def build_data_parallel(mpi_comm, model, cfg, timer=None, optimizer=None):
    """The data-parallel strategy for `cfg`: plain DataParallel for compress.name "none", else
    CompressedDataParallel (per-bucket compressors with error feedback as configured),
    PowerSGDDataParallel for a low-rank compressor, or OneBitAdamDataParallel (which hooks into
    `optimizer`) for compress.onebit_adam. Raises UserError for an unknown compressor."""
    name = cfg.compress.name
    if cfg.compress.onebit_adam:
        from hpclm.parallel.onebit_adam import OneBitAdamDataParallel, check_config
        check_config(cfg)
        if optimizer is None:
            raise UserError("compress.onebit_adam: build_data_parallel needs the optimizer")
        return OneBitAdamDataParallel(mpi_comm, model.grad_flat, cfg, optimizer, timer=timer,
                                      grad_scale=1.0 / cfg.train.grad_accum)
    if name == "none":
        return DataParallel(mpi_comm, model.grad_flat, cfg.comm, timer=timer)
    from hpclm import compress
    rank = mpi_comm.Get_rank()
    scale = 1.0 / cfg.train.grad_accum
    registered = name in compress.REGISTRY
    if name == "powersgd" or (registered and compress.REGISTRY[name].aggregate == AGGREGATE_LOW_RANK):
        from hpclm.parallel.powersgd import PowerSGDDataParallel
        return PowerSGDDataParallel(mpi_comm, model, cfg, timer=timer, grad_scale=scale)
    if STRATEGY.get(name) == "onebit":
        from hpclm.parallel.onebit import OneBitAllreduce
        world = mpi_comm.Get_size()
        return CompressedDataParallel(mpi_comm, model.grad_flat, cfg.comm,
                                      lambda n, dtype: OneBitAllreduce(n, world, dtype),
                                      timer=timer, grad_scale=scale, strategy="onebit",
                                      warmup_steps=cfg.compress.warmup_steps)
    from hpclm.compress.memory import build_with_memory
    return CompressedDataParallel(mpi_comm, model.grad_flat, cfg.comm,
                                  lambda n, dtype: build_with_memory(cfg.compress, n, dtype, rank=rank),
                                  timer=timer, grad_scale=scale, warmup_steps=cfg.compress.warmup_steps)


__all__ = ["STRATEGY", "strategy_of", "average", "exchange_sum", "exchange_gather", "exchange_vote",
           "vote_layout", "combine_sum",
           "combine_vote", "pack", "unpack", "BucketJob", "CompressedDataParallel", "build_data_parallel",
           "gather_states"]
