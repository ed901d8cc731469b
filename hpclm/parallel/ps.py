"""Parameter servers (parallel.sync = ps, [ps]): S ranks serve, W = world - S ranks work.

The last S world ranks are the servers, so world rank 0 (which prints and writes checkpoints)
is a worker. The flat parameter buffer is cut into S balanced contiguous shards
(hpclm.comm.layout.split_counts); server k holds shard k and its optimizer state and runs the
serve loop of parallel/ps_server.py (the modes sync | async | ssp are described there). A worker
is a DistributedOptimizer (`PSWorker`): it computes its gradient, pushes each shard's piece to
that shard's server, pulls the new parameters back (float32 or float16: ps.pull_dtype) and
copies them into its model (in the model's dtype, or float16 with ps.pull_dtype = float16). All data-path messages are buffers on a duplicate of the world
named "ps", so their bytes are counted under group "ps" (hpclm.comm.counters).

How it plugs into `hpclm train` (the smallest change there): `split_world` runs right after the
data is loaded, before the dp x tp x pp groups are built. On a server, train.setup returns a
`ParameterServer`, whose `serve` is the server's whole run (a signal there stops the workers at
their next step boundary, and the server answers their checkpoint); on a worker the roles'
`workers` communicator stands in for the world in the rest of set-up and in
the loop (groups, sampler, evaluation, the stop agreement, checkpoints, the timing record), so no
world-wide collective of the loop needs the servers. In async mode and ssp with s > 0 the worker is
`asynchronous`: the loop agrees in non-blocking rounds and a fast worker keeps pushing while a
slow one finishes its round (ssp: while its next push would be answered at once, `can_run_ahead`).
When the loop ends, normally or by a UserError that every worker raises together, each worker
sends STOP (`release`) and the servers leave their loop; a worker that dies ends the job
through mpiexec (MPICH kills the other ranks).

Checkpoints: worker 0 gathers the shards' parameters and optimizer state from the servers into
the single-process layout (sync: bit-exact resume); a resume sends them back and every worker
pulls. The checkpoint is taken after the workers agree on the slowest one's clock (a collective),
so in async mode every push before it has been applied and in ssp every clock all workers pushed
(a worker that ran ahead has later clocks pending at the server; they are not in the checkpoint,
and a resume restarts every worker at the servers' clock).
"""
from dataclasses import dataclass

import numpy
from mpi4py import MPI

from hpclm import comm as collectives
from hpclm import compress, kernels
from hpclm import xp as X
from hpclm.comm.layout import offsets, split_counts
from hpclm.compress.memory import build_with_memory
from hpclm.errors import UserError
from hpclm.optim import OPTIMIZERS
from hpclm.parallel.agree import collective_error
from hpclm.parallel.optimizer import CheckpointState, DistributedOptimizer, micro_batches_in_turn, nbytes
from hpclm.parallel.ps_server import (GROUP, LOAD, PULL, PUSH, SAVE, STOP, TAG_CTRL, TAG_GRAD, TAG_PARAMS,
                                      TAG_REPLY, TAG_STATE, ServerShard, payload_header, pull_dtype,
                                      write_report)
from hpclm.parallel.replicas import check_identical
from hpclm.parallel.state import flatten_state, gather_states, rows_for_rank, unflatten_state
from hpclm.timing.timer import Timer

_UNTIMED = Timer(enabled=False)


@dataclass
class PSRoles:
    """Who serves and who works, and the communicators of both."""
    comm: object           # duplicate of the world named "ps": all server <-> worker messages
    workers_comm: object   # the workers' communicator (None on a server)
    servers_comm: object   # the servers' communicator (None on a worker)
    servers: int           # S
    workers: int           # W

    @property
    def is_server(self):
        return self.servers_comm is not None

    @property
    def server_index(self):
        return self.servers_comm.Get_rank()

    def worker_rank(self, worker):
        return worker                         # workers are world ranks 0 .. W-1

    def server_rank(self, server):
        return self.workers + server          # servers are world ranks W .. W+S-1

    def servers_sum(self, value):
        """The sum of a float over the servers (the squared norm of a clock's averaged gradient)."""
        if self.servers == 1:
            return value
        total = numpy.array([value])
        self.servers_comm.Allreduce(MPI.IN_PLACE, total)
        return float(total[0])

    def release(self):
        """Tell every server that this worker is done (once)."""
        if getattr(self, "_released", False) or self.is_server:
            return
        self._released = True
        stop = numpy.array([STOP, 0, 0, 0], dtype=numpy.float64)
        for k in range(self.servers):
            self.comm.Send([stop, MPI.BYTE], dest=self.server_rank(k), tag=TAG_CTRL)


def shard_bounds(size, servers):
    """[lo_0, lo_1, ..., size]: server k holds [bounds[k], bounds[k+1]) of the flat buffer."""
    return offsets(split_counts(size, servers))


def check_config(cfg, world_size):
    """UserError unless the [ps] run fits the world and the rest of the config."""
    S = cfg.ps.servers
    if S >= world_size:
        raise UserError(f"ps.servers ({S}) must be smaller than the world size ({world_size}): "
                        f"at least one rank must work")
    W = world_size - S
    if cfg.train.batch_size % (W * cfg.micro_batches()):
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by the number of "
                        f"parameter-server workers x grad_accum x parallel.micro_batches ({W} x {cfg.micro_batches()})")
    if cfg.parallel.tp > 1 or cfg.parallel.pp > 1 or cfg.parallel.zero or cfg.parallel.dp:
        raise UserError("parallel.sync=ps runs plain data parallelism over the workers: leave parallel.tp, "
                        "parallel.pp, parallel.zero and parallel.dp at their defaults")
    if cfg.compress.onebit_adam or cfg.compress.warmup_steps or cfg.compress.name in ("powersgd", "randomk"):
        raise UserError("parallel.sync=ps compresses each push on its own: compress.onebit_adam, "
                        "compress.warmup_steps and the compressors whose decompression needs the sender's "
                        "context (powersgd, randomk) do not apply")


def split_world(world, cfg):
    """Collective on `world`: the PSRoles of this rank (UserError on every rank if the config does not fit)."""
    size, rank = world.Get_size(), world.Get_rank()
    check_config(cfg, size)
    S = cfg.ps.servers
    W = size - S
    comm = world.Dup()
    comm.Set_name(GROUP)
    server = rank >= W
    part = world.Split(1 if server else 0, rank)
    part.Set_name("servers" if server else "world")
    return PSRoles(comm, None if server else part, part if server else None, S, W)


@dataclass
class ParameterServer:
    """What `hpclm train` runs on a server rank: `serve()`."""
    roles: PSRoles
    cfg: object
    model: object          # the initial model (the workers build the same from train.seed)

    def serve(self):
        return serve(self.roles, self.cfg, self.model)


def serve(roles, cfg, model):
    """A server's whole run: its shard of `model`'s initial parameters, the loop, the report file."""
    kernels.use(cfg.train.kernels, 1)          # the optimizer's compiled update, as on the workers
    k = roles.server_index
    bounds = shard_bounds(model.layout.size, roles.servers)
    lo, hi = bounds[k], bounds[k + 1]
    mask = model.layout.decay_mask(numpy, model.dtype)[lo:hi].copy()
    optimizer = OPTIMIZERS[cfg.optim.name](cfg.optim, hi - lo, model.dtype, mask)
    codec = compress.build(cfg.compress) if cfg.compress.name != "none" else None
    shard = ServerShard(roles, numpy.array(X.to_host(model.flat[lo:hi])), optimizer, cfg.optim, cfg.ps, codec)
    shard.serve()
    return write_report(cfg.train.out_dir, shard.report(lo, hi))


class PSWorker(DistributedOptimizer):
    """A worker's optimizer step: push the gradient's shards, pull the parameters' shards. The
    record's metrics: `staleness`, the largest staleness the servers gave this worker's pushes of
    the step (the round, with several pushes when it ran ahead), and `pushes`, their number."""

    metric_names = ("staleness", "pushes")

    def __init__(self, model, roles, group, cfg, timer=None):
        self.model, self.roles, self.group, self.cfg = model, roles, group, cfg.optim
        self.timer = timer or _UNTIMED
        self.mode = cfg.ps.mode
        self.bound = 0 if cfg.ps.mode == "sync" else cfg.ps.staleness
        self.grad_scale = 1.0 / cfg.micro_batches()
        self.bounds = shard_bounds(model.layout.size, roles.servers)
        self.pull_dtype = pull_dtype(cfg.ps, model.dtype)
        self.pulled = [numpy.empty(hi - lo, self.pull_dtype) for lo, hi in self._shards()]
        self.replies = numpy.zeros((roles.servers, 3))      # [version, staleness, norm] per server
        self.ctrl = numpy.zeros((roles.servers, 4))
        rank = 0 if group is None else group.Get_rank()
        self.codecs = None if cfg.compress.name == "none" else [     # per shard, with error feedback if wanted
            build_with_memory(cfg.compress, hi - lo, model.dtype, rank=rank) for lo, hi in self._shards()]
        self._sending = {}                                  # shard -> the compressed push's arrays in flight
        self.clock = 0                                      # steps this worker has pushed
        self.state_names = sorted(OPTIMIZERS[cfg.optim.name].state_names)   # optimizer state held by the servers
        # async, and ssp with s > 0: workers need not meet every step (train.py's rounds; ssp s = 0 is sync)
        self.asynchronous = self.bound > 0 or self.mode == "async"
        self._pushed = []                                   # staleness of each push since step_metrics()

    def _shards(self):
        return list(zip(self.bounds[:-1], self.bounds[1:]))

    def backward_hook(self, micro, n_micro):
        return None

    def forward_backward(self, model, batches, timer=None):
        return micro_batches_in_turn(self, model, batches, timer)

    def _count(self, sent=0, recv=0):
        collectives.counters.add("ps", bytes_sent=sent, bytes_recv=recv, calls=1, group=GROUP)

    def _exchange(self, op, lr=0.0, norm=0.0):
        """Send op (with the gradient for PUSH) to every server, receive every server's answer."""
        comm, grad, flat = self.roles.comm, X.to_host(self.model.grad_flat), self.model.flat
        requests = []
        for k, (lo, hi) in enumerate(self._shards()):
            dest = self.roles.server_rank(k)
            self.ctrl[k] = (op, self.clock, lr, norm)
            requests.append(comm.Isend([self.ctrl[k], MPI.BYTE], dest=dest, tag=TAG_CTRL))
            self._count(sent=self.ctrl[k].nbytes)
            if op == PUSH:
                for buf in self._push_buffers(k, grad[lo:hi]):
                    requests.append(comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG_GRAD))
                    self._count(sent=buf.nbytes)
            requests.append(comm.Irecv([self.pulled[k], MPI.BYTE], source=dest, tag=TAG_PARAMS))
            requests.append(comm.Irecv([self.replies[k], MPI.BYTE], source=dest, tag=TAG_REPLY))
            self._count(recv=self.pulled[k].nbytes + self.replies[k].nbytes)
        with self.timer.region("comm_wait"):
            MPI.Request.Waitall(requests)
        for k, (lo, hi) in enumerate(self._shards()):
            flat[lo:hi] = X.to_device(self.pulled[k])          # the assignment casts an fp16 pull

    def _push_buffers(self, k, grad):
        """The arrays that carry shard k's gradient: itself, or a header and its compressed payload."""
        if self.codecs is None:
            return [grad]
        with self.timer.region("compress"):
            payload, _ = self.codecs[k].compress(grad, self.clock)
            payload = [numpy.ascontiguousarray(X.to_host(a)) for a in payload]
        self._sending[k] = [payload_header(payload), *payload]     # alive until the Isends complete
        return self._sending[k]

    def step(self, lr):
        """Push this worker's (micro-batch averaged) gradient, pull the parameters; the gradient
        norm the servers clipped by (sync/ssp: of the averaged gradient; async: this worker's)."""
        grad = self.model.grad_flat
        if self.grad_scale != 1.0:
            grad *= self.grad_scale
        norm = float(X.np.sqrt(X.np.dot(grad, grad)))
        self._exchange(PUSH, lr, norm)
        self.clock += 1
        self._pushed.append(float(self.replies[:, 1].max()))      # the servers' staleness of this push
        clipped_by = float(self.replies[0, 2])         # nan where the server answered before applying (ssp)
        return clipped_by if numpy.isfinite(clipped_by) else norm

    def step_metrics(self):
        """{"staleness": largest of the pushes since the last call, "pushes": their number}."""
        pushed, self._pushed = self._pushed, []
        return {"staleness": max(pushed), "pushes": len(pushed)} if pushed else {"pushes": 0}

    def can_run_ahead(self):
        """async: always; ssp: while the next push would be answered at once (the servers had
        applied every clock up to this one's - s when they last answered)."""
        if self.mode == "async":
            return True
        return self.asynchronous and float(self.replies[:, 0].min()) >= self.clock + 1 - self.bound

    def uncompressed_bytes(self):
        """What this worker's pushes since the last step_metrics() (train.py reads this just before
        it) would send uncompressed: its whole gradient each (at least one push)."""
        return max(1, len(self._pushed)) * self.model.grad_flat.nbytes

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self):
        """Collective over the workers: worker 0 gathers every server's shard once every worker's
        pushes so far have been answered (async: applied; ssp: the server waits until the slowest
        worker's clock is applied, as workers that ran ahead hold later, pending clocks)."""
        extra = gather_states(self.group, self.local_state())
        clock = self.clock if self.group is None else self.group.allreduce(self.clock, op=MPI.MIN)
        if self.rank != 0:
            return None
        comm, names = self.roles.comm, self.state_names
        params = numpy.empty(self.model.layout.size, self.model.dtype)
        state = {name: numpy.empty(self.model.layout.size, self.model.dtype) for name in names}
        t = numpy.empty(1)
        for k, (lo, hi) in enumerate(self._shards()):
            src = self.roles.server_rank(k)
            comm.Send([numpy.array([SAVE, clock, 0, 0], dtype=numpy.float64), MPI.BYTE], dest=src, tag=TAG_CTRL)
            for buf in (params[lo:hi], *(state[n][lo:hi] for n in names)):
                comm.Recv([buf, MPI.BYTE], source=src, tag=TAG_STATE)
                self._count(recv=buf.nbytes)
            comm.Recv([t, MPI.BYTE], source=src, tag=TAG_STATE)
        return CheckpointState(params, {"t": int(t[0]), **state}, extra, self.model.layout)

    def restore(self, ckpt, step):
        """Collective over the workers: worker 0 sends each server its shard of the checkpoint's
        parameters and optimizer state; then every worker pulls."""
        ckpt.check_layout(self.model.layout)
        if self.rank == 0:
            comm, names = self.roles.comm, self.state_names
            params = ckpt.params.astype(self.model.dtype, copy=False)
            state = {n: ckpt.optim[n].astype(self.model.dtype, copy=False) for n in names if n in ckpt.optim}
            if len(state) != len(names):
                raise collective_error(f"checkpoint {ckpt.path} has no optimizer state {sorted(set(names) - set(state))}")
            for k, (lo, hi) in enumerate(self._shards()):
                dest = self.roles.server_rank(k)
                comm.Send([numpy.array([LOAD, step, 0, 0], dtype=numpy.float64), MPI.BYTE], dest=dest, tag=TAG_CTRL)
                for buf in (params[lo:hi], *(state[n][lo:hi] for n in names)):
                    comm.Send([numpy.ascontiguousarray(buf), MPI.BYTE], dest=dest, tag=TAG_STATE)
                comm.Send([numpy.array([float(ckpt.optim_t)]), MPI.BYTE], dest=dest, tag=TAG_STATE)
        if self.group is not None:
            self.group.Barrier()
        self.clock = int(ckpt.optim_t) if self.mode == "ssp" else step   # ssp: the servers' clock (ran ahead: > step)
        shapes = {name: (a.shape, a.dtype) for name, a in self.local_state().items()}
        world = 1 if self.group is None else self.group.Get_size()
        self.load_local_state(rows_for_rank(ckpt.extra, shapes, self.rank, world, "resume"))
        self._exchange(PULL)

    def local_state(self):
        """The error-feedback residuals of this worker's shard codecs (they differ between workers)."""
        out = {}
        for k, codec in enumerate(self.codecs or ()):
            flatten_state(f"ps.shard{k}", codec.state_dict(), out)
        return out

    def load_local_state(self, flat):
        for k, codec in enumerate(self.codecs or ()):
            codec.load_state_dict(unflatten_state(f"ps.shard{k}", flat))

    def check_replicas(self, step):
        if self.mode != "async" and self.bound == 0:        # sync, ssp 0: every worker holds the same parameters
            check_identical(self.group, self.model.flat, step)

    def memory(self):
        m = self.model
        return {"params": nbytes(m.flat), "grads": nbytes(m.grad_flat), "optimizer": 0,
                "activations": int(getattr(m, "activation_bytes_peak", 0))}

    def close(self):
        self.roles.release()


def build_ps(cfg, group, model, roles, timer=None):
    """The worker's strategy of parallel.sync = ps."""
    if roles is None:
        raise UserError("parallel.sync=ps needs the world split into servers and workers (hpclm train does it)")
    return PSWorker(model, roles, group, cfg, timer)
