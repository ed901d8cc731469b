"""Gossip SGD (parallel.sync = gossip): every dp rank keeps its own model x_i and averages it with
its neighbours on a topology (hpclm.parallel.topology) instead of all-reducing gradients.

    gossip.algorithm = dpsgd       combine then adapt (Lian et al. 2017): x_i <- sum_j W_ij x_j - lr g_i(x_i)
                       dpsgd_atc   adapt then combine: x_i <- sum_j W_ij (x_j - lr g_j(x_j))
                       adpsgd      asynchronous pairwise averaging (Lian et al. 2018), below

The neighbour all-reduce (`NeighbourAllreduce`) is our own buffer point-to-point: Irecv of every
in-neighbour's flat model, Isend of ours to every out-neighbour, Waitall, then the weighted sum;
the bytes are counted by hpclm.comm's Wire under the dp group ("gossip": degree x G sent per step).

AD-PSGD. After its local step a rank averages with one neighbour (the topology's out-neighbours in
turn): x_i, x_j <- (x_i + x_j) / 2, applied as x_i += (x_j' - x_i') / 2 from the two snapshots x_i',
x_j' exchanged, so an update made meanwhile is kept and the pair's sum (hence the mean of all
models) is conserved exactly. Two requests that cross (i asks j while j asks i) average once, from
the two requests' snapshots, on both ends (else each end would apply both and the pair would swap).
The exchange runs on a per-rank *communication thread* over a private
duplicate of the dp communicator: the training thread hands it a request and carries on, and the
thread also answers every peer's request at once, so a fast rank never waits for a slow rank's
computation (only for its thread, which holds the parameter lock for one vector update). MPI
point-to-point from a thread (MPI_THREAD_MULTIPLE, as hpclm.comm.nonblocking uses) was chosen over
one-sided windows: BlueFog found passive-target RMA fragile across MPI stacks (progress, locking
and memory-model differences), while Isend/Irecv/Test behave the same on every MPI. Shutdown and
checkpoints are agreed points: every rank drains its own request, then keeps answering until an
Ibarrier over all ranks completes (no request can be in flight then). AD-PSGD is `asynchronous`:
train.py's loop agrees in non-blocking rounds, and a rank that finished its step of a round keeps
training (train.run_ahead) instead of waiting for a slow rank.

Replicas differ: check_replicas is a no-op, a checkpoint's params are the average x̄ (so sample and
resume at another world size work), each rank's own model and optimizer state go to /extra rows
and come back when the world matches (a D-PSGD resume continues the run to round-off; AD-PSGD's
pairings depend on timing, so its runs are not bitwise repeatable). Every gossip.consensus_every
calls (one per step of train.py's loop; for AD-PSGD one per round, as its ranks' own step counts
differ) `step_metrics()` measures this rank's ||x_i - x̄||^2 (the record's mean over ranks is the
consensus distance); evaluation reports the loss of x̄ and the min/max of the ranks' own losses.
The measuring all-reduces use mpi4py directly and are not counted as training traffic.
"""
import queue
import threading
import time

import numpy as np
from mpi4py import MPI

from hpclm.comm.wire import Wire
from hpclm.optim import build_optimizer, clip_by_global_norm
from hpclm.parallel.optimizer import _UNTIMED, CheckpointState, DistributedOptimizer
from hpclm.parallel.replicas import mean_over
from hpclm.parallel.state import gather_states, rows_for_rank
from hpclm.parallel.topology import build_topology

KEY = "gossip"
TAG_REQUEST, TAG_REPLY = 0x6701, 0x6702
CROSSED = 1             # header of a reply to a request that crossed the replier's own
POLL_S = 2e-4            # the communication thread's sleep when nothing arrived


class NeighbourAllreduce:
    """x <- sum_j W[i, j] x_j over the dp `group` (point-to-point with in/out neighbours)."""

    def __init__(self, group, topology):
        self.group, self.topology = group, topology
        self.rank = group.Get_rank()
        self._bufs, self._send = [], None                 # (G,) receive buffers per in-neighbour, send copy

    def __call__(self, x, step):
        """Mix the host array `x` (G,) in place with the neighbours of `step`."""
        self_w, inbound, outbound = self.topology.peers(self.rank, step)
        if not inbound and not outbound:
            return x
        while len(self._bufs) < len(inbound):
            self._bufs.append(np.empty_like(x))
        if self._send is None:
            self._send = np.empty_like(x)
        wire = Wire(self.group, KEY)
        np.copyto(self._send, x)                          # x is overwritten below while sends may still read
        reqs = [wire.irecv(self._bufs[k], j) for k, (j, _) in enumerate(inbound)]
        reqs += [wire.isend(self._send, k) for k in outbound]
        MPI.Request.Waitall(reqs)
        x *= x.dtype.type(self_w)
        for k, (_, w) in enumerate(inbound):
            buf = self._bufs[k]                           # (G,) received: scaled in place, then added
            buf *= x.dtype.type(w)
            x += buf
        wire.commit()
        return x


class PairwiseGossip:
    """AD-PSGD's communication thread: averages `flat` with one peer per `request(peer)`, answers peers."""

    def __init__(self, group, flat, lock):
        self.comm = group.Dup()
        self.comm.Set_name(group.Get_name())             # bytes still count under the dp group
        self.flat, self.lock = flat, lock
        self.jobs = queue.Queue()
        self.error = None
        self.exchanges = 0
        self._thread = None

    def start(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="hpclm-adpsgd")
        self._thread.start()

    def request(self, peer):
        self.jobs.put(peer)

    def stop(self):
        """Agreed point (every rank calls it): finish this rank's requests, answer peers until all have."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.error is not None:
            raise self.error

    def _snapshot(self, header=0):
        """[x_i, header] (G + 1,): the model and one counter for the peer."""
        with self.lock:
            return np.append(self.flat, self.flat.dtype.type(header))

    def _apply_half_difference(self, theirs, mine):
        with self.lock:
            self.flat += 0.5 * (theirs[:-1] - mine[:-1])          # (G,)

    def _serve(self):
        try:
            self._loop()
        except BaseException as exc:                    # handed to the training thread at stop()
            self.error = exc

    def _loop(self):
        """Requests carry how many of the peer's requests this rank has answered, so a request
        from the peer this rank is waiting on tells apart a crossing (the peer has not answered
        ours) from a new request sent after answering (its reply is then on the way: finish first).
        A reply marked CROSSED says the peer averaged from our request and its own: this rank then
        does the same when the peer's request arrives, and ignores the reply's content."""
        comm, wire = self.comm, Wire(self.comm, KEY)
        G = self.flat.size
        incoming, reply = np.empty(G + 1, self.flat.dtype), np.empty(G + 1, self.flat.dtype)
        answered, asked = {}, {}                        # peer -> requests of theirs answered / of ours sent
        status = MPI.Status()
        listen = comm.Irecv([incoming, MPI.BYTE], MPI.ANY_SOURCE, TAG_REQUEST)
        active = None        # [reply request, my snapshot, send request, peer, crossed, reply arrived]
        barrier = None

        def finish(active):
            active[2].Wait()
            if not active[4]:
                self._apply_half_difference(reply, active[1])
            self.exchanges += 1

        while True:
            busy = False
            if active is None and barrier is None:
                try:
                    peer = self.jobs.get_nowait()
                except queue.Empty:
                    peer = None
                if peer is not None:
                    mine = self._snapshot(answered.get(peer, 0))
                    got = comm.Irecv([reply, MPI.BYTE], peer, TAG_REPLY)    # posted before the request
                    sent = comm.Isend([mine, MPI.BYTE], peer, TAG_REQUEST)
                    asked[peer] = asked.get(peer, 0) + 1
                    wire.charge(mine.nbytes, mine.nbytes)
                    active, busy = [got, mine, sent, peer, False, False], True
                elif self._stop.is_set():
                    barrier = comm.Ibarrier()
            if active is not None and not active[5] and active[0].Test():
                active[5], busy = True, True
                if active[4] or reply[-1] != CROSSED:   # else the peer crossed: its request is on the way
                    finish(active)
                    active = None
            if listen.Test(status):                     # a peer's model: answer with ours, average
                source = status.Get_source()
                crossing = active is not None and active[3] == source
                if crossing and int(incoming[-1]) == asked[source]:   # it answered ours before asking
                    if not active[5]:
                        active[0].Wait()
                    finish(active)
                    active, crossing = None, False
                mine = self._snapshot(CROSSED if crossing else 0)
                comm.Send([mine, MPI.BYTE], source, TAG_REPLY)  # its reply receive is already posted
                answered[source] = answered.get(source, 0) + 1
                wire.charge(mine.nbytes, mine.nbytes)
                if crossing:                            # both asked at once: average once, on both ends,
                    active[4] = True                    # from the two requests' snapshots
                    self._apply_half_difference(incoming, active[1])
                    if active[5]:
                        finish(active)
                        active = None
                else:
                    self._apply_half_difference(incoming, mine)
                listen = comm.Irecv([incoming, MPI.BYTE], MPI.ANY_SOURCE, TAG_REQUEST)
                busy = True
            if barrier is not None and barrier.Test():
                break
            if not busy:
                time.sleep(POLL_S)
        listen.Cancel()
        listen.Wait()
        wire.commit()


class GossipOptimizer(DistributedOptimizer):
    """Decentralized SGD over the dp group: local gradient steps plus neighbour averaging of models."""

    metric_names = ("consensus",)
    eval_metric_names = ("val_loss_min", "val_loss_max")

    def __init__(self, model, optimizer, group, gossip_cfg, optim_cfg, n_micro, timer=None):
        self.model, self.optimizer, self.cfg = model, optimizer, optim_cfg
        self.sync = None
        self.timer = timer or _UNTIMED
        self.group, self.gossip = group, gossip_cfg
        self.world = 1 if group is None else group.Get_size()
        self.topology = build_topology(gossip_cfg.topology, self.world)
        self.grad_scale = 1.0 / n_micro
        self.step_count = 0
        self.rounds = 0                                   # step_metrics() calls: the loop's steps
        self.asynchronous = gossip_cfg.algorithm == "adpsgd" and self.world > 1
        self.mixer = NeighbourAllreduce(group, self.topology) if self.world > 1 else None
        self.pairwise = None
        if gossip_cfg.algorithm == "adpsgd" and self.world > 1:
            self.lock = threading.Lock()
            self.pairwise = PairwiseGossip(group, model.flat, self.lock)
            self.pairwise.start()

    def backward_hook(self, micro, n_micro):
        return None

    # ------------------------------------------------------------------------ the step
    def step(self, lr):
        """Local gradient (clipped by its own norm) and update, with the neighbour averaging."""
        flat, grad, algo = self.model.flat, self.model.grad_flat, self.gossip.algorithm
        if self.grad_scale != 1.0:
            grad *= grad.dtype.type(self.grad_scale)
        with self.timer.region("optimizer"):
            norm = clip_by_global_norm(grad, self.cfg.grad_clip)
        if algo == "dpsgd" and self.mixer is not None:
            self._mix(flat)
        with self.timer.region("optimizer"):
            if self.pairwise is not None:
                with self.lock:
                    self.optimizer.step(flat, grad, lr)
            else:
                self.optimizer.step(flat, grad, lr)
        if algo == "dpsgd_atc" and self.mixer is not None:
            self._mix(flat)
        if self.pairwise is not None:
            _, _, outbound = self.topology.peers(self.rank, self.step_count)
            if outbound:
                self.pairwise.request(outbound[self.step_count % len(outbound)])
        self.step_count += 1
        return norm

    def _mix(self, flat):
        with self.timer.region("comm"):
            self.mixer(flat, self.step_count)

    def step_metrics(self):
        """Collective every gossip.consensus_every calls: {"consensus": ||x_i - x̄||^2}, else {}."""
        self.rounds += 1
        every = self.gossip.consensus_every
        return {"consensus": self.consensus_distance()} if every and self.rounds % every == 0 else {}

    def uncompressed_bytes(self):
        if self.world == 1:
            return 0
        if self.pairwise is not None:
            return 2 * self.model.flat.nbytes
        return len(self.topology.peers(self.rank, self.step_count)[2]) * self.model.flat.nbytes

    # ------------------------------------------------------------------------ agreement
    def mean_params(self):
        """x̄ (G,) over the dp group (collective)."""
        return mean_over(self.group, self.model.flat)

    def consensus_distance(self):
        """This rank's ||x_i - x̄||^2 (collective)."""
        self._pause()
        d = self.model.flat - self.mean_params()
        self._resume()
        return float(d @ d)

    def _pause(self):
        if self.pairwise is not None:
            self.pairwise.stop()

    def _resume(self):
        if self.pairwise is not None:
            self.pairwise.start()

    def check_replicas(self, step):
        """Gossip replicas differ by design: nothing to check."""

    def evaluate(self, run, group):
        """(loss of x̄ over `group`, {"val_loss_min", "val_loss_max"} of the ranks' own models)."""
        self._pause()
        own = run(None)                                 # this rank's model on every evaluation row
        losses = [own] if self.world == 1 else self.group.allgather(own)
        flat = self.model.flat
        saved = flat.copy()
        flat[...] = self.mean_params()
        mean_loss = run(group)
        flat[...] = saved
        self._resume()
        return mean_loss, {"val_loss_min": float(min(losses)), "val_loss_max": float(max(losses))}

    def close(self):
        self._pause()
        self.pairwise = None

    # ------------------------------------------------------------------------ checkpoints
    def local_state(self):
        state = {"gossip.params": np.asarray(self.model.flat),
                 "gossip.step": np.array([self.step_count], dtype=np.int64)}
        for name, value in self.optimizer.state_dict().items():
            if name != "t":
                state[f"gossip.optim.{name}"] = np.asarray(value)
        return state

    def load_local_state(self, flat):
        self.model.flat[...] = flat["gossip.params"]
        self.step_count = int(flat["gossip.step"][0])
        saved = dict(self.optimizer.state_dict())
        for name in saved:
            if name != "t":
                saved[name] = flat[f"gossip.optim.{name}"]
        self.optimizer.load_state_dict(saved)

    def checkpoint(self):
        """Collective: params = x̄, optimizer state = its rank-mean, every rank's own in extra rows."""
        self._pause()
        extra = gather_states(self.group, self.local_state())
        mean = self.mean_params()
        state = self.optimizer.state_dict()
        optim = {"t": state["t"]}
        for name, value in state.items():
            if name != "t":
                optim[name] = extra[f"gossip.optim.{name}"].mean(axis=0) if extra is not None else None
        self._resume()
        if self.rank != 0:
            return None
        return CheckpointState(mean, optim, extra, self.model.layout)

    def restore(self, ckpt, step):
        """x̄ and the mean optimizer state; each rank's own row when the checkpoint's world matches."""
        self._pause()
        ckpt.restore(self.model, self.optimizer)
        self.step_count = self.rounds = step
        rows = ckpt.extra.get("gossip.params")
        if rows is not None and rows.shape[0] == self.world:
            shapes = {name: (a.shape, a.dtype) for name, a in self.local_state().items()}
            self.load_local_state(rows_for_rank(ckpt.extra, shapes, self.rank, self.world, "resume"))
        self._resume()


def build_gossip(cfg, group, model, timer=None):
    """The GossipOptimizer of cfg.gossip over the dp `group`."""
    return GossipOptimizer(model, build_optimizer(cfg.optim, model), group, cfg.gossip, cfg.optim,
                           cfg.micro_batches(), timer)
