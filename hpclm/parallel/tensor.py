"""Tensor parallelism over the tp group (Megatron-LM, Shoeybi et al. 2019): the conjugate
collectives, the tp-sharded model of a rank, and the strategy wrapper that makes a data-parallel
strategy run on that shard.

    model = build_tensor_model(cfg, groups.tp, timer)     # model/tensor_parallel.py ShardedGPT
    strategy = TensorParallel(dp_strategy, model)         # parallel/build.py does both

Conjugate pairs (forward, backward), all on our all-reduce algorithms (comm.algorithm, MPI's
own included), bytes counted in the "tp" group, timed as the region "tp_comm"; a group of one
returns at once:

    copy_to / column_in        identity            | all-reduce (sum)
    reduce_from / row_out      all-reduce (sum)    | identity
    gather_last                all-gather, last dim| scatter_last: this rank's block

The dp strategy (replicated or ZeRO-1) syncs each tp rank's own flat shard over its dp group
unchanged; the wrapper adds what tensor parallelism changes: the global gradient norm (sharded
elements count on every rank, replicated ones once), checkpoints of the unsharded model
(gathered over the tp group at save, sliced at load, so any tp resumes any other), and the check
that replicated tensors agree across the tp group.
"""
import copy
import math

import numpy

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model.tensor_parallel import ShardedGPT, shard_flat, shard_specs, unshard_flat
from hpclm.model.units import param_range
from hpclm.parallel.optimizer import CheckpointState, micro_batches_in_turn
from hpclm.parallel.replicas import check_identical
from hpclm.timing.timer import Timer

_UNTIMED = Timer(enabled=False)


class TensorCollectives:
    """The conjugate collectives of one tp group (the Block hooks and the vocab-parallel units' comm)."""

    sequence_parallel = False

    def __init__(self, comm, algorithm="mpi", timer=None):
        self.comm, self.algorithm = comm, algorithm
        self.size = 1 if comm is None else comm.Get_size()
        self.rank = 0 if comm is None else comm.Get_rank()
        self.timer = timer or _UNTIMED

    def all_reduce(self, x, op="sum"):
        """x (contiguous) reduced over the group with op ("sum" | "max"), in place; returns x."""
        if self.size == 1:
            return x
        with self.timer.region("tp_comm"):
            return collectives.allreduce(self.comm, x, op=op, algorithm=self.algorithm)

    def _identity(self, x):
        return x

    def _sum(self, x):
        return self.all_reduce(x, "sum")

    # f (copy_to) and g (reduce_from) of Megatron; the Block hooks are the same pairs
    copy_to, copy_to_backward = _identity, _sum
    reduce_from, reduce_from_backward = _sum, _identity
    column_in, column_in_backward = _identity, _sum
    row_out, row_out_backward = _sum, _identity

    def rows(self, n):
        """(lo, hi): the token rows of n this rank holds outside the column-row pairs (all of them)."""
        return 0, n

    def gather_last(self, x):
        """x (N, c) -> (N, c * size): every rank's block in rank order along the last dim."""
        if self.size == 1:
            return x
        xp = X.array_module(x)
        N, c = x.shape
        out = xp.empty(self.size * N * c, dtype=x.dtype)
        with self.timer.region("tp_comm"):
            collectives.allgather(self.comm, xp.ascontiguousarray(x).reshape(-1), out,
                                  algorithm="mpi" if self.algorithm == "mpi" else "ring")
        return xp.ascontiguousarray(out.reshape(self.size, N, c).transpose(1, 0, 2)).reshape(N, self.size * c)

    def scatter_last(self, dx):
        """The backward of gather_last: dx (N, c * size) -> this rank's block (N, c)."""
        if self.size == 1:
            return dx
        c = dx.shape[1] // self.size
        return X.array_module(dx).ascontiguousarray(dx[:, self.rank * c:(self.rank + 1) * c])


class SequenceCollectives(TensorCollectives):
    """tp with sequence parallelism (Korthikanti et al. 2022): outside the column-row pairs
    (LayerNorms, residuals, the embedding's output, the head's LayerNorm) each rank holds its
    contiguous block of the N = B T token rows (per-token work, so any contiguous split will do).

        copy_to / column_in        all-gather rows (N/P, C) -> (N, C)   | reduce-scatter rows
        reduce_from / row_out      reduce-scatter rows (N, C) -> (N/P, C) | all-gather rows

    The same bytes as the all-reduces they replace; the replicated tensors' gradients are then
    partial sums over the rows, summed over the group by TensorParallel's backward hook."""

    sequence_parallel = True

    def rows(self, n):
        per = n // self.size
        return self.rank * per, (self.rank + 1) * per

    def _blocks_algorithm(self):
        return "mpi" if self.algorithm == "mpi" else "ring"

    def _gather_rows(self, x):
        """x (N/P, C) -> (N, C), the ranks' blocks in rank order."""
        if self.size == 1:
            return x
        xp = X.array_module(x)
        out = xp.empty((self.size * x.shape[0], x.shape[1]), dtype=x.dtype)
        with self.timer.region("tp_comm"):
            collectives.allgather(self.comm, xp.ascontiguousarray(x).reshape(-1), out.reshape(-1),
                                  algorithm=self._blocks_algorithm())
        return out

    def _scatter_rows(self, x):
        """x (N, C) -> this rank's block of rows of the sum over the group (N/P, C)."""
        if self.size == 1:
            return x
        if x.shape[0] % self.size:
            raise UserError(f"sequence parallelism: {x.shape[0]} token rows do not split over tp = {self.size}")
        xp = X.array_module(x)
        with self.timer.region("tp_comm"):
            block = collectives.reduce_scatter(self.comm, xp.ascontiguousarray(x).reshape(-1),
                                               algorithm=self._blocks_algorithm())
        return block.reshape(-1, x.shape[1])

    copy_to, copy_to_backward = _gather_rows, _scatter_rows
    column_in, column_in_backward = _gather_rows, _scatter_rows
    reduce_from, reduce_from_backward = _scatter_rows, _gather_rows
    row_out, row_out_backward = _scatter_rows, _gather_rows


def build_tensor_model(cfg, tp_comm, timer=None):
    """This rank's ShardedGPT of cfg.model over the tp communicator (collectives on comm.algorithm;
    with parallel.sequence_parallel, the sequence-parallel pairs)."""
    kind = SequenceCollectives if cfg.parallel.sequence_parallel else TensorCollectives
    hooks = kind(tp_comm, cfg.comm.algorithm, timer)
    return ShardedGPT(cfg.model, hooks.size, hooks.rank, hooks, seed=cfg.train.seed, dtype=cfg.train.dtype)


def check_tensor_config(cfg):
    """UserError for what does not combine with tensor parallelism (yet)."""
    if cfg.compress.name != "none" or cfg.compress.onebit_adam:
        raise UserError("parallel.tp > 1 with gradient compression is not built; use compress.name = none")
    if cfg.parallel.zero > 1:
        raise UserError(f"parallel.tp > 1 with parallel.zero={cfg.parallel.zero}: only ZeRO-1 is combined with "
                        "tensor parallelism so far")


def sum_spans(hooks, flat, spans):
    """flat[a:b] for every (a, b) in spans summed over the tp group (one all-reduce), in place."""
    if not spans:
        return
    xp = X.array_module(flat)
    summed = hooks.all_reduce(xp.concatenate([flat[a:b] for a, b in spans]))
    at = 0
    for a, b in spans:
        flat[a:b] = summed[at:at + b - a]
        at += b - a


class TensorNorm:
    """The global gradient norm of a tp-sharded model: a rank's sharded elements count once, its
    replicated ones (equal on every tp rank) 1/tp each, summed over the tp group."""

    def __init__(self, comm, replicated):
        self.comm, self.replicated = comm, replicated          # replicated: [(lo, hi)] flat spans
        self.size = 1 if comm is None else comm.Get_size()

    def local_squares(self, grad, lo=0):
        """This rank's weighted sum of squares of `grad`, the flat span [lo, lo + grad.size)."""
        xp = X.array_module(grad)
        sq = float(xp.dot(grad, grad))
        hi = lo + grad.size
        for a, b in self.replicated:
            a, b = max(a, lo), min(b, hi)
            if a < b:
                seg = grad[a - lo:b - lo]
                sq -= (1.0 - 1.0 / self.size) * float(xp.dot(seg, seg))
        return sq

    def total(self, sq):
        """Sum of the ranks' weighted squares (a scalar; like ZeRO's norm, not a counted collective)."""
        return sq if self.size == 1 else self.comm.allreduce(sq)

    def norm(self, grad):
        return math.sqrt(self.total(self.local_squares(grad)))


class TensorParallel:
    """A data-parallel strategy (replicated or ZeRO-1 over the dp group) on a ShardedGPT; see the
    module docstring. The DistributedOptimizer contract, delegated where nothing changes."""

    def __init__(self, inner, model):
        self.inner, self.model = inner, model
        self.hooks = model.tensor
        self.tp = self.hooks.comm
        inner.tensor_norm = TensorNorm(self.tp, model.replicated)
        self._partial = {}                  # unit's first offset -> its replicated spans (sequence parallelism)
        for unit in model.units:
            lo, hi = param_range(unit, model.layout)
            self._partial[lo] = [(a, b) for a, b in model.replicated if lo <= a and b <= hi]

    def __getattr__(self, name):            # optimizer, sync, group, ... of the dp strategy
        return getattr(self.inner, name)

    @property
    def source(self):
        return self.inner.source

    def forward_backward(self, model, batches, timer=None):
        """The micro-batches in turn with this wrapper's hooks (the sequence-parallel sums)."""
        return micro_batches_in_turn(self, model, batches, timer)

    def loss(self, model, idx, targets):
        return model.loss(idx, targets, source=self.source)

    def backward_hook(self, micro, n_micro):
        """The dp strategy's hook; under sequence parallelism, after the last micro-batch each unit's
        replicated gradients (partial sums over this rank's rows) are first summed over the tp group."""
        inner = self.inner.backward_hook(micro, n_micro)
        if not self.hooks.sequence_parallel or self.hooks.size == 1 or micro < n_micro - 1:
            return inner

        def ready(offset):
            sum_spans(self.hooks, self.model.grad_flat, self._partial[offset])
            if inner is not None:
                inner(offset)
        return ready

    def step(self, lr):
        return self.inner.step(lr)

    def uncompressed_bytes(self):
        return self.inner.uncompressed_bytes()

    def memory(self):
        return self.inner.memory()

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self):
        """Collective over the world: the unsharded CheckpointState on world rank 0, None elsewhere."""
        state = self.inner.checkpoint()                    # on each tp rank's dp rank 0
        if state is not None and state.extra:
            raise UserError("tensor parallelism: a sync state in the checkpoint cannot be unsharded")
        states = self.tp.gather(state, root=0) if self.hooks.size > 1 else [state]
        if self.hooks.rank != 0 or state is None:
            return None
        m = self.model
        specs = [shard_specs(m.cfg, m.tp, r) for r in range(m.tp)]

        def full(arrays):
            return unshard_flat([X.to_host(a) for a in arrays], m.full_layout, m.layout, specs)

        optim = {"t": state.optim_state["t"]}
        optim.update({name: full([s.optim_state[name] for s in states])
                      for name in state.optim_state if name != "t"})
        return CheckpointState(full([s.params for s in states]), optim, {}, layout=m.full_layout)

    def restore(self, ckpt, step):
        """Parameters and optimizer state from an unsharded checkpoint (any tp), sliced to this shard."""
        m = self.model
        ckpt.check_layout(m.full_layout)
        view = copy.copy(ckpt)
        view.params = shard_flat(ckpt.params, m.full_layout, m.layout, m.specs)
        view.optim = {name: shard_flat(buf, m.full_layout, m.layout, m.specs) for name, buf in ckpt.optim.items()}
        view.layout = m.layout.index()
        self.inner.restore(view, step)

    def check_replicas(self, step):
        """The dp replicas of this shard agree, and so do the replicated tensors across the tp group."""
        self.inner.check_replicas(step)
        flat = self.model.flat
        if flat is not None and self.hooks.size > 1:
            replicated = numpy.concatenate([X.to_host(flat[a:b]) for a, b in self.model.replicated])
            check_identical(self.tp, replicated, step, "replicated parameters (LayerNorms, row biases, wpe)")
