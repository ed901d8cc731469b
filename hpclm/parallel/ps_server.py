"""The serve loop of one parameter server (parallel.sync = ps; the worker side is parallel/ps.py).

Server k holds the shard [lo, hi) of the flat parameter buffer and that shard's optimizer state.
It posts one persistent receive of a control message per worker and answers them as they come
(`Waitany` over the workers). Every message is a buffer moved as raw bytes (no pickles):

    control   float64 (4,) [op, step, lr, norm]           worker -> server  TAG_CTRL
    gradient  (hi - lo,) model dtype                        worker -> server  TAG_GRAD   (op PUSH)
      or, with compress.name set: a header int64 (1 + 4 MAX_PAYLOAD_ARRAYS,) [count, (dtype, ndim,
      d0, d1) per array] then each payload array as raw bytes (TAG_GRAD); the server decompresses
      with the registry compressor (error feedback stays at the worker, parallel/ps.py)
    params    (hi - lo,) model dtype, or float16 (ps.pull_dtype) server -> worker  TAG_PARAMS
    reply     float64 (3,) [version, staleness, norm]      server -> worker  TAG_REPLY

`version` counts the updates applied to the shard (= the optimizer's t). Modes:

    sync   a clock (step) c is applied when all W pushes of c have arrived: their average, clipped
           by the global norm of the averaged gradient (norm^2 summed over the servers'
           communicator), one optimizer step; each worker is answered after its clock is applied.
    ssp s  the same updates, but a worker that pushed clock c is answered as soon as clocks
           < c + 1 - s are applied (it then runs at most s clocks ahead of the slowest);
           s = 0 is sync. Staleness of a push = c - (version the worker had read).
    async  each push is applied on arrival (clipped by the norm of that worker's own gradient)
           and answered with the current parameters; staleness = updates applied between the
           worker's read and this update.

Checkpoints (op SAVE at step c) wait until clocks < c are applied and send the shard's
parameters and optimizer state; LOAD receives them; PULL sends the parameters; STOP from every
worker ends the loop. The time split (wait / apply / send), bytes and the staleness of every
applied push go to RUN_DIR/ps-server-<k>.json at the end.
"""
import json
import os
import time
from collections import Counter

import numpy
from mpi4py import MPI

from hpclm import comm as collectives
from hpclm.compress.base import Context
from hpclm.optim import clip_by_global_norm

PUSH, PULL, SAVE, LOAD, STOP = 1, 2, 3, 4, 5
TAG_CTRL, TAG_GRAD, TAG_PARAMS, TAG_REPLY, TAG_STATE = 71, 72, 73, 74, 75
PAYLOAD_DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                  "int64", "uint64", "bool")
MAX_PAYLOAD_ARRAYS = 4
GROUP = "ps"                          # bytes of the parameter-server traffic are counted under this group


def payload_header(payload):
    """The int64 header that lets the server receive a compressed push: [count, (dtype, ndim, d0, d1)...]."""
    header = numpy.zeros(1 + 4 * MAX_PAYLOAD_ARRAYS, numpy.int64)
    header[0] = len(payload)
    for i, a in enumerate(payload):
        shape = tuple(a.shape) + (1,) * (2 - a.ndim)
        header[1 + 4 * i:5 + 4 * i] = (PAYLOAD_DTYPES.index(numpy.dtype(a.dtype).name), a.ndim, *shape[:2])
    return header


def payload_buffers(header):
    """Empty arrays of the payload that `header` describes."""
    out = []
    for i in range(int(header[0])):
        code, ndim, d0, d1 = (int(v) for v in header[1 + 4 * i:5 + 4 * i])
        out.append(numpy.empty((d0, d1)[:ndim], dtype=PAYLOAD_DTYPES[code]))
    return out


def pull_dtype(ps_cfg, model_dtype):
    """The dtype parameters travel back in: float16 if ps.pull_dtype says so, else the model's own."""
    return numpy.dtype(numpy.float16 if ps_cfg.pull_dtype == "float16" else model_dtype)


class ServerShard:
    """One server's shard: parameters, optimizer, the clocks waiting for pushes, its statistics."""

    def __init__(self, roles, params, optimizer, optim_cfg, ps_cfg, codec=None):
        self.roles, self.comm = roles, roles.comm
        self.codec = codec                                       # registry compressor of the pushes, or None
        self.params, self.optimizer = params, optimizer          # (n,) shard; optimizer over (n,)
        self.clip, self.mode = optim_cfg.grad_clip, ps_cfg.mode
        self.staleness_bound = 0 if ps_cfg.mode == "sync" else ps_cfg.staleness
        self.pull_dtype = pull_dtype(ps_cfg, params.dtype)
        W = roles.workers
        self.pending = {}                                        # clock -> {worker: (gradient, lr)}
        self.waiting = []                                        # (worker, clock it needs applied) to answer
        self.deferred = []                                       # (worker, step) SAVE requests waiting for clocks
        self.read = [0] * W                                      # version each worker last received
        self.clock_staleness = {}                                # clock -> {worker: staleness}
        self.last = [(0.0, 0.0)] * W                             # (staleness, norm) of each worker's last push
        self.applied = []                                        # (step, worker, staleness) of every applied push
        self.seconds = {"wait": 0.0, "apply": 0.0, "send": 0.0}
        self.pushes = 0

    @property
    def version(self):
        return self.optimizer.t

    # ---------------------------------------------------------------- byte-counted point-to-point
    def _send(self, buf, worker, tag):
        self.comm.Send([buf, MPI.BYTE], dest=self.roles.worker_rank(worker), tag=tag)
        collectives.counters.add("ps", bytes_sent=buf.nbytes, calls=1, group=GROUP)

    def _recv(self, buf, worker, tag):
        self.comm.Recv([buf, MPI.BYTE], source=self.roles.worker_rank(worker), tag=tag)
        collectives.counters.add("ps", bytes_recv=buf.nbytes, calls=1, group=GROUP)

    def _answer(self, worker, staleness, norm):
        t0 = time.perf_counter()
        self._send(self.params.astype(self.pull_dtype, copy=False), worker, TAG_PARAMS)
        self._send(numpy.array([self.version, staleness, norm]), worker, TAG_REPLY)
        self.read[worker] = self.version
        self.seconds["send"] += time.perf_counter() - t0

    # ---------------------------------------------------------------- updates
    def _apply(self, grad, lr, norm):
        """One optimizer step with `grad` (scaled in place) clipped by the global `norm`."""
        clip_by_global_norm(grad, self.clip, norm)
        self.optimizer.step(self.params, grad, lr)

    def _receive_gradient(self, worker):
        """(n,) the worker's pushed gradient shard (decompressed if pushes are compressed)."""
        if self.codec is None:
            grad = numpy.empty_like(self.params)
            self._recv(grad, worker, TAG_GRAD)
            return grad
        header = numpy.empty(1 + 4 * MAX_PAYLOAD_ARRAYS, numpy.int64)
        self._recv(header, worker, TAG_GRAD)
        payload = payload_buffers(header)
        for a in payload:
            self._recv(a, worker, TAG_GRAD)
        grad = self.codec.decompress(tuple(payload), Context(self.params.size, self.params.dtype))
        return numpy.array(grad, dtype=self.params.dtype)

    def _push(self, worker, step, lr, norm):
        grad = self._receive_gradient(worker)
        t0 = time.perf_counter()
        if self.mode == "async":
            staleness = self.version - self.read[worker]
            self._apply(grad, lr, norm)
            self.pushes += 1
            self.applied.append((step, worker, staleness))
            self.seconds["apply"] += time.perf_counter() - t0
            self._answer(worker, staleness, norm)
            return
        self.pending.setdefault(step, {})[worker] = (grad, lr)
        self.clock_staleness.setdefault(step, {})[worker] = step - self.read[worker]
        self.waiting.append((worker, step + 1 - self.staleness_bound))
        self.seconds["apply"] += time.perf_counter() - t0
        self._apply_complete_clocks()
        self._answer_ready()

    def _apply_complete_clocks(self):
        """Apply clock `version` while all W of its pushes are here (in clock order)."""
        W = self.roles.workers
        while len(self.pending.get(self.version, ())) == W:
            t0 = time.perf_counter()
            clock = self.version
            pushes = self.pending.pop(clock)
            grad = sum(pushes[w][0] for w in range(W)) / W                  # (n,) average in worker order
            norm = float(numpy.sqrt(self.roles.servers_sum(float(numpy.dot(grad, grad)))))
            self._apply(grad, pushes[0][1], norm)
            staleness = self.clock_staleness.pop(clock)
            for w in range(W):
                self.applied.append((clock, w, staleness[w]))
                self.last[w] = (staleness[w], norm)
            self.pushes += W
            self.seconds["apply"] += time.perf_counter() - t0

    def _answer_ready(self):
        still = []
        for worker, needed in self.waiting:
            if self.version >= needed:
                self._answer(worker, *self.last_of(worker))
            else:
                still.append((worker, needed))
        self.waiting = still
        ready = [(w, s) for w, s in self.deferred if self.mode == "async" or self.version >= s]
        self.deferred = [(w, s) for w, s in self.deferred if (w, s) not in ready]
        for worker, _ in ready:
            self._save(worker)

    def last_of(self, worker):
        """(staleness, norm) of the worker's newest push: applied, or (ssp) still pending."""
        for clock in sorted(self.clock_staleness, reverse=True):
            if worker in self.clock_staleness[clock]:
                return self.clock_staleness[clock][worker], float("nan")
        return self.last[worker]

    # ---------------------------------------------------------------- checkpoints
    def _save(self, worker):
        self._send(numpy.ascontiguousarray(self.params), worker, TAG_STATE)
        for name in sorted(self.optimizer.state):
            self._send(self.optimizer.state[name], worker, TAG_STATE)
        self._send(numpy.array([float(self.optimizer.t)]), worker, TAG_STATE)

    def _load(self, worker):
        self._recv(self.params, worker, TAG_STATE)
        for name in sorted(self.optimizer.state):
            self._recv(self.optimizer.state[name], worker, TAG_STATE)
        t = numpy.empty(1)
        self._recv(t, worker, TAG_STATE)
        self.optimizer.t = int(t[0])
        self.read = [self.version] * self.roles.workers

    # ---------------------------------------------------------------- the loop
    def serve(self):
        """Answer the workers until every one of them has sent STOP."""
        W = self.roles.workers
        self._counted_before = self._counted()
        ctrl = numpy.zeros((W, 4))
        requests = [self.comm.Recv_init([ctrl[w], MPI.BYTE], source=self.roles.worker_rank(w), tag=TAG_CTRL) for w in range(W)]
        MPI.Prequest.Startall(requests)
        active = W
        while active:
            t0 = time.perf_counter()
            w = MPI.Request.Waitany(requests)
            self.seconds["wait"] += time.perf_counter() - t0
            collectives.counters.add("ps", bytes_recv=ctrl[w].nbytes, calls=1, group=GROUP)
            op, step, lr, norm = ctrl[w]
            op, step = int(op), int(step)
            if op == STOP:
                active -= 1
                continue
            if op == PUSH:
                self._push(w, step, lr, norm)
            elif op == PULL:
                self._answer(w, 0, float("nan"))
            elif op == SAVE:
                self.deferred.append((w, step))
                self._answer_ready()
            elif op == LOAD:
                self._load(w)
            requests[w].Start()
        for r in requests:
            r.Free()

    @staticmethod
    def _counted():
        return collectives.counters.by_group().get(GROUP, {"bytes_sent": 0, "bytes_recv": 0, "calls": 0})

    def report(self, lo, hi):
        """The statistics of this server's run (a JSON-ready dict)."""
        now, before = self._counted(), self._counted_before
        moved = {k: now[k] - before[k] for k in now}
        return {"server": self.roles.server_index, "shard": [lo, hi], "mode": self.mode,
                "staleness_bound": self.staleness_bound, "workers": self.roles.workers,
                "pushes_applied": self.pushes, "updates": self.version,
                "staleness_histogram": {str(k): v for k, v in sorted(Counter(s for _, _, s in self.applied).items())},
                "applied": [list(a) for a in self.applied], "seconds": self.seconds,
                "bytes_sent": moved["bytes_sent"], "bytes_recv": moved["bytes_recv"]}


def write_report(out_dir, report):
    path = os.path.join(out_dir, f"ps-server-{report['server']}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path
