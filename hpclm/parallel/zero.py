"""ZeRO (Rajbhandari et al. 2019, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", arXiv 1910.02054) over the data-parallel group, on the flat parameter layout.

Shards. The flat buffer of Psi elements is cut into N contiguous shards, split_counts(Psi, N):
rank r owns [S_r, S_r+1) of the parameters, gradients and optimizer state (`ShardPlan`). The model's
units (embedding, block i, head: `unit_ranges`) are the buckets: a unit's range [lo, hi) meets
the shards in consecutive pieces, `plan.counts(lo, hi)` elements on each rank (zeros where it
does not reach), and our reduce_scatter / allgather take exactly those block counts.

    stage 1  optimizer state sharded. Backward fills the full gradient; as each unit finishes,
             its range is reduce-scattered (averaged) on the communication thread, so rank r's
             shard of the averaged gradient lands in place. Rank r updates its shard of the
             parameters (a view of the flat buffer) with its shard of the optimizer state; one
             all-gather on the shard counts rebuilds the flat buffer.
    stage 2  also gradients sharded: no full gradient buffer. A unit's backward writes into a
             temporary buffer of its ranges (the model's parameter-source seam), which is
             reduce-scattered into rank r's shard gradient (accumulated over micro-batches) and
             dropped. Update and all-gather as stage 1.
    stage 3  also parameters sharded: rank r keeps only its shard. Each unit's parameters are
             all-gathered into a temporary buffer just before its forward and again before its
             backward, and dropped after; the next unit's gather starts one unit ahead on the
             communication thread. No all-gather after the update.

Bytes per rank per step (ring, one micro-batch; n_u = |unit u|, c_u = rank r's piece of it): a
reduce-scatter or all-gather of a range sends n - (one rank's piece), so stages 1-2 send Psi - shard
twice = 2 (N-1)/N * 4 Psi (the all-reduce's volume) and stage 3 three times, 1.5x that, counting the
tied head's gathers of the embedding range (it reads wte) as the extra units they are.
Memory per rank (fp32 AdamW, `ZeroOptimizer.memory`): stage 1 8 Psi + 8 Psi / N, stage 2 4 Psi +
12 Psi / N, stage 3 16 Psi / N, plus the live temporary unit buffers (their peak is reported).
"""
import math
from dataclasses import dataclass

import numpy

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.comm.layout import offsets, split_counts
from hpclm.errors import UserError
from hpclm.optim import OPTIMIZERS
from hpclm.parallel.background import Background
from hpclm.parallel.buckets import BucketedSync
from hpclm.parallel.optimizer import CheckpointState, DistributedOptimizer, nbytes
from hpclm.parallel.replicas import check_identical
from hpclm.timing.timer import Timer

ALGORITHMS = ("ring", "mpi")      # reduce-scatter / all-gather algorithms with explicit block counts
UNTIMED = Timer(enabled=False)


# ---------------------------------------------------------------------------------- pure plans
def unit_of(name):
    """The unit a GPT-2 parameter name belongs to: "embedding", "h.<i>" or "head"."""
    if name in ("wte", "wpe"):
        return "embedding"
    if name.startswith("h."):
        return "h." + name.split(".")[1]
    return "head"


def unit_ranges(layout):
    """[(unit, lo, hi)] in flat (= forward) order; each unit's slots are contiguous in the layout."""
    out = []
    for slot in layout.slots:
        unit = unit_of(slot.name)
        if out and out[-1][0] == unit:
            out[-1] = (unit, out[-1][1], slot.offset + slot.size)
        else:
            if any(u == unit for u, _, _ in out):
                raise UserError(f"zero: the parameters of unit {unit} are not contiguous in the flat layout")
            out.append((unit, slot.offset, slot.offset + slot.size))
    return out


def read_ranges(unit, ranges):
    """[(lo, hi)] of the units whose parameters `unit` reads (the tied head: the embedding's too),
    in flat order; `ranges` {unit name: (lo, hi)}."""
    owners = sorted({unit_of(name) for name in unit.reads}, key=lambda u: ranges[u][0])
    return [ranges[u] for u in owners]


@dataclass(frozen=True)
class ShardPlan:
    """Contiguous shards of a flat buffer of `size` elements over `world` ranks."""
    size: int
    world: int

    @property
    def bounds(self):
        return offsets(split_counts(self.size, self.world))

    def shard(self, rank):
        b = self.bounds
        return b[rank], b[rank + 1]

    def counts(self, lo, hi):
        """Elements of [lo, hi) in each rank's shard (rank order; they add up to hi - lo)."""
        b = self.bounds
        return [max(0, min(hi, b[r + 1]) - max(lo, b[r])) for r in range(self.world)]

    def piece(self, rank, lo, hi):
        """(start, stop) of [lo, hi) within rank's shard, relative to the shard's start."""
        s0, s1 = self.shard(rank)
        a, b = max(lo, s0), min(hi, s1)
        return (a - s0, b - s0) if b > a else (0, 0)


# ---------------------------------------------------------------------------------- stage 1
class UnitReduceScatter(BucketedSync):
    """Stage 1's gradient sync: the units are the buckets, each reduce-scattered in place (averaged)
    on the plan's counts, so the rank's shard of the full gradient buffer holds its average."""

    def __init__(self, group, grad_flat, comm_cfg, plan, ranges, grad_scale=1.0, timer=None):
        super().__init__(group, grad_flat, comm_cfg, grad_scale, timer,
                         buckets=[(lo, hi) for _, lo, hi in reversed(ranges)])
        self.plan = plan

    def reduce_bucket(self, comm, grad, i, timer):
        if comm is None:
            return
        lo, hi = self.buckets[i]
        t = timer
        t and t.start("comm")
        collectives.reduce_scatter(comm, grad, op="average", algorithm=self.algorithm, counts=self.plan.counts(lo, hi))
        t and t.stop("comm")


# ---------------------------------------------------------------------------------- stages 2, 3
class ShardedSource:
    """The model's parameter source for stages 2 and 3 (see hpclm.model: acquire(unit, phase) ->
    (params, grads), release(unit, phase)). Gradients of a unit's backward go to temporary buffers
    that release reduce-scatters into the shard gradient; at stage 3 parameters are all-gathered
    into temporary buffers too, the next unit's one unit ahead."""

    def __init__(self, opt):
        self.opt, self.stage = opt, opt.stage
        self.layout, self.plan = opt.layout, opt.plan
        self.ranges = {u: (lo, hi) for u, lo, hi in opt.ranges}
        self.order = {}                                   # id(unit) -> index in the model's units
        self.units = []
        self._gathered = {}                               # (index, phase) -> (buffers, request or None)
        self._pending = []                                # reduce-scatter requests of this step
        self.live = {"params": 0, "grads": 0}             # elements of temporary buffers alive now
        self.peak = {"params": 0, "grads": 0}             # ... and at most, since the start

    def bind(self, units):
        self.units = list(units)
        self.order = {id(u): i for i, u in enumerate(self.units)}

    def _unit_ranges(self, unit):
        return read_ranges(unit, self.ranges)

    def _views(self, spans, buffers):
        views = {}
        for (lo, hi), buf in zip(spans, buffers):
            for slot in self.layout.slots:
                if lo <= slot.offset < hi:
                    views[slot.name] = buf[slot.offset - lo:slot.offset - lo + slot.size].reshape(slot.shape)
        return views

    def _track(self, kind, elements):
        self.live[kind] += elements
        self.peak[kind] = max(self.peak[kind], self.live[kind])

    def _launch(self, fn, *args):
        """fn(comm, *args, timer=...) on the communication thread (returns its request), or here
        on the training thread without overlap (returns None)."""
        opt = self.opt
        if opt.background is not None:
            return opt.background.start(fn, *args)
        fn(opt.wire, *args, timer=opt.timer)
        return None

    # -- stage 3: gathers
    def _gather(self, wire_comm, spans, buffers, timer=None):
        """Each span's parameters from every rank's shard piece into its buffer."""
        opt = self.opt
        with (timer or UNTIMED).region("comm"):
            for (lo, hi), buf in zip(spans, buffers):
                a, b = self.plan.piece(opt.rank, lo, hi)
                if wire_comm is None:
                    buf[...] = opt.shard_params[a:b]
                else:
                    collectives.allgather(wire_comm, opt.shard_params[a:b], buf, algorithm=opt.algorithm,
                                          counts=self.plan.counts(lo, hi))

    def _start_gather(self, index, phase):
        spans = self._unit_ranges(self.units[index])
        buffers = [X.np.empty(hi - lo, dtype=self.opt.dtype) for lo, hi in spans]
        self._track("params", sum(b.size for b in buffers))
        self._gathered[(index, phase)] = (spans, buffers, self._launch(self._gather, spans, buffers))

    def _params(self, index, phase):
        if (index, phase) not in self._gathered:
            self._start_gather(index, phase)
        spans, buffers, req = self._gathered[(index, phase)]
        if req is not None:
            self.opt.background.wait([req], self.opt.timer)
        step = 1 if phase == "forward" else -1            # prefetch the next unit of this pass
        if 0 <= index + step < len(self.units) and (index + step, phase) not in self._gathered:
            self._start_gather(index + step, phase)
        return self._views(spans, buffers)

    # -- the seam
    def acquire(self, unit, phase):
        index = self.order[id(unit)]
        params = self._params(index, phase) if self.stage == 3 else self.opt.model.params
        if phase == "forward":
            return params, None
        spans = self._unit_ranges(unit)
        buffers = [X.np.zeros(hi - lo, dtype=self.opt.dtype) for lo, hi in spans]
        self._track("grads", sum(b.size for b in buffers))
        self._grad_buffers = (spans, buffers)
        return params, self._views(spans, buffers)

    def release(self, unit, phase):
        index = self.order[id(unit)]
        if self.stage == 3:
            _, buffers, _ = self._gathered.pop((index, phase))
            self._track("params", -sum(b.size for b in buffers))
        if phase == "backward":
            spans, buffers = self._grad_buffers
            self._grad_buffers = None
            self._reduce(spans, buffers)

    def _reduce(self, spans, buffers):
        opt = self.opt
        for buf in buffers:
            if opt.grad_scale != 1.0:
                buf *= buf.dtype.type(opt.grad_scale)
        self.finish()                          # at most one reduce-scatter in flight: its buffers are live
        req = self._launch(self._reduce_into_shard, spans, buffers)
        if req is None:
            self._track("grads", -sum(b.size for b in buffers))
        else:
            self._pending.append((req, buffers))

    def _reduce_into_shard(self, wire_comm, spans, buffers, timer=None):
        """Each span's gradient averaged over the ranks, this rank's piece added into the shard."""
        opt = self.opt
        with (timer or UNTIMED).region("comm"):
            for (lo, hi), buf in zip(spans, buffers):
                a, b = self.plan.piece(opt.rank, lo, hi)
                mine = buf if wire_comm is None else collectives.reduce_scatter(
                    wire_comm, buf, op="average", algorithm=opt.algorithm, counts=self.plan.counts(lo, hi))
                opt.shard_grads[a:b] += mine

    def finish(self):
        """Wait for the reduce-scatters in flight (after the last one, the shard gradient is complete)."""
        if self._pending:
            self.opt.background.wait([req for req, _ in self._pending], self.opt.timer)
        self._track("grads", -sum(b.size for _, buffers in self._pending for b in buffers))
        self._pending = []


# ---------------------------------------------------------------------------------- optimizer
class ZeroOptimizer(DistributedOptimizer):
    """Stages 1-3 over the dp `group`; see the module docstring."""

    def __init__(self, model, optim_cfg, comm_cfg, stage, group, grad_scale=1.0, timer=None):
        if comm_cfg.algorithm not in ALGORITHMS:
            raise UserError(f"parallel.zero needs comm.algorithm {' or '.join(ALGORITHMS)} (its reduce-scatter "
                            f"and all-gather), not {comm_cfg.algorithm!r}")
        self.model, self.cfg, self.stage, self.group = model, optim_cfg, stage, group
        self.timer = timer or UNTIMED
        self.world = 1 if group is None else group.Get_size()
        self.wire = group if self.world > 1 else None
        self.algorithm, self.grad_scale = comm_cfg.algorithm, grad_scale
        self.layout, self.dtype = model.layout, numpy.dtype(model.dtype)
        self.plan = ShardPlan(self.layout.size, self.world)
        self.ranges = unit_ranges(self.layout)
        lo, hi = self.plan.shard(self.rank)
        mask = self.layout.decay_mask(X.np, self.dtype)[lo:hi].copy()
        self.optimizer = OPTIMIZERS[optim_cfg.name](optim_cfg, hi - lo, self.dtype, mask)
        self.background = Background(group) if (self.world > 1 and comm_cfg.overlap) else None
        self.sync = None
        if stage == 1:
            self.sync = UnitReduceScatter(group, model.grad_flat, comm_cfg, self.plan, self.ranges,
                                          grad_scale, timer)
            self.shard_grads = model.grad_flat[lo:hi]
        else:
            self.shard_grads = X.np.zeros(hi - lo, dtype=self.dtype)
            model.drop_gradients()
        if stage == 3:
            self.shard_params = model.flat[lo:hi].copy()
            model.drop_parameters()
        else:
            self.shard_params = model.flat[lo:hi]
        self.source = ShardedSource(self) if stage >= 2 else None
        if self.source is not None:
            self.source.bind(model.units)

    def backward_hook(self, micro, n_micro):
        return self.sync.backward_hook(micro == n_micro - 1) if self.sync else None

    def step(self, lr):
        t = self.timer
        if self.sync is not None:
            self.sync.finish()
        else:
            self.source.finish()
        with t.region("optimizer"):
            if self.tensor_norm is None:
                sq = float(X.array_module(self.shard_grads).dot(self.shard_grads, self.shard_grads))
            else:                                              # a tp shard: replicated elements weighted
                sq = self.tensor_norm.local_squares(self.shard_grads, self.plan.shard(self.rank)[0])
        if self.wire is not None:
            with t.region("comm"):
                sq = self.wire.allreduce(sq)                       # the norm over the sharding group
        if self.tensor_norm is not None:
            sq = self.tensor_norm.total(sq)                    # ... and over the tp group
        norm = math.sqrt(sq)
        with t.region("optimizer"):
            clip = self.cfg.grad_clip
            if clip > 0 and norm > clip:
                self.shard_grads *= clip / (norm + 1e-6)
            self.optimizer.step(self.shard_params, self.shard_grads, lr)
        if self.stage < 3 and self.wire is not None:
            with t.region("comm"):
                collectives.allgather(self.wire, self.shard_params, self.model.flat, algorithm=self.algorithm,
                            counts=split_counts(self.layout.size, self.world))
        if self.stage >= 2:
            self.shard_grads.fill(0)
        return norm

    def uncompressed_bytes(self):
        P = self.world
        return 2 * (P - 1) * self.layout.size * self.dtype.itemsize // P

    # ------------------------------------------------------------------------ checkpoints
    def _gather_full(self, shard):
        """Collective: the whole flat array from every rank's shard, on rank 0 (None elsewhere)."""
        if self.wire is None:
            return X.to_host(shard).copy()
        counts = split_counts(self.layout.size, self.world)
        host = numpy.ascontiguousarray(X.to_host(shard))
        full = numpy.empty(self.layout.size, dtype=host.dtype) if self.rank == 0 else None
        self.wire.Gatherv(host, [full, (counts, offsets(counts)[:-1])] if self.rank == 0 else None, root=0)
        return full

    def checkpoint(self):
        params = self._gather_full(self.shard_params)
        state = {name: self._gather_full(buf) for name, buf in self.optimizer.state.items()}
        if self.rank != 0:
            return None
        return CheckpointState(params, {"t": self.optimizer.t, **state}, {}, self.layout)

    def restore(self, ckpt, step):
        ckpt.check_layout(self.layout)
        lo, hi = self.plan.shard(self.rank)
        if self.stage < 3:
            self.model.flat[...] = X.to_device(ckpt.params.astype(self.dtype, copy=False))
        else:
            self.shard_params[...] = X.to_device(ckpt.params[lo:hi].astype(self.dtype, copy=False))
        self.optimizer.load_state_dict({"t": ckpt.optim_t, **{k: v[lo:hi] for k, v in ckpt.optim.items()}})

    def check_replicas(self, step):
        if self.stage < 3:
            check_identical(self.group, self.model.flat, step)

    # ------------------------------------------------------------------------ memory
    def memory(self):
        m, peak = self.model, (self.source.peak if self.source else {"params": 0, "grads": 0})
        params = nbytes(m.flat) if self.stage < 3 else nbytes(self.shard_params) + peak["params"] * self.dtype.itemsize
        grads = nbytes(m.grad_flat) if self.stage < 2 else nbytes(self.shard_grads) + peak["grads"] * self.dtype.itemsize
        return {"params": params, "grads": grads, "optimizer": nbytes(*self.optimizer.state.values()),
                "activations": int(getattr(m, "activation_bytes_peak", 0))}


def build_zero(cfg, group, model, timer=None):
    """The ZeroOptimizer of cfg.parallel.zero (compression and other syncs are rejected by config)."""
    if cfg.compress.onebit_adam:
        raise UserError("parallel.zero with compress.onebit_adam: 1-bit Adam needs the whole momentum on every rank")
    return ZeroOptimizer(model, cfg.optim, cfg.comm, cfg.parallel.zero, group,
                         grad_scale=1.0 / cfg.micro_batches(), timer=timer)
