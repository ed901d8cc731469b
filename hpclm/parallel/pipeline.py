"""The pipeline executor: one pipeline rank's part of a step's schedule (hpclm.parallel.schedule),
run over its model chunks (hpclm.model.stage.StageModel), with activations going forward and their
gradients backward between neighbouring virtual stages by buffer Isend/Irecv on the pp communicator.

    engine = PipelineEngine(stage_model, pp_comm, "1f1b", micro_batches=4)
    loss = engine.run(batches, B, T, timer)    # batches[j] = (idx, targets) of micro-batch j;
                                               # the loss (mean over micro-batches) on the last stage
    engine.tie_gradients()                     # first + last stage: sum the two wte copies' gradients

Rank s of p holds v chunks (v = 1 but for the interleaved schedule): chunk c is virtual stage
k = c p + s of the p v. Chunk c's activation goes to rank s + 1, chunk c (from rank p - 1 to
rank 0, chunk c + 1), its gradient the reverse way; v = 1 is the plain pipeline. Shapes are
static (B x T rows of C floats), so no handshake: every receive of the step is posted before the
first op (its buffer kept for its micro-batch and chunk, the tag encoding (kind, micro-batch,
receiving chunk)), sends go out non-blocking as soon as an op ends, and all sends are completed
at the end of the step. Gradients accumulate over the micro-batches (the sum; the gradient sync's
grad_scale 1/m makes it the mean). Bytes sent and received are counted under the pp communicator's
group ("p2p" key); waiting for a neighbour is the `pp_wait` region (the bubble), the ops' compute
`forward` / `backward`; the live caches (one per micro-batch and chunk) are the stage's
activation bytes.
"""
import math

from mpi4py import MPI

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.model import units as U
from hpclm.parallel.schedule import schedule
from hpclm.timing.timer import Timer

UNTIMED = Timer(enabled=False)
P2P_KEY = "p2p"


class PipelineEngine:
    def __init__(self, model, pp_comm, schedule_name, micro_batches):
        self.model, self.comm = model, pp_comm
        self.P, self.rank = pp_comm.Get_size(), pp_comm.Get_rank()
        self.m, self.v = micro_batches, len(model.chunks)
        self.ops = schedule(schedule_name, self.P, micro_batches, self.v)[self.rank]
        self.first, self.last = self.rank == 0, self.rank == self.P - 1      # hold the Embedding / the Head
        self.group = collectives.group_name(pp_comm)
        ends = [0, self.P - 1] if self.P > 1 else [0]
        color = 0 if self.rank in ends and model.cfg.tie_weights and self.P > 1 else MPI.UNDEFINED
        self.embedding_group = pp_comm.Split(color, self.rank)     # first and last stage (tied wte)

    # -------------------------------------------------------------------- virtual stages
    def virtual(self, chunk):
        """The virtual stage of this rank's chunk."""
        return chunk * self.P + self.rank

    def receives_input(self, chunk):
        return self.virtual(chunk) > 0

    def sends_output(self, chunk):
        return self.virtual(chunk) < self.P * self.v - 1

    def upstream(self, chunk):
        """(rank, chunk) of the virtual stage before this chunk's."""
        return (self.rank - 1, chunk) if self.rank else (self.P - 1, chunk - 1)

    def downstream(self, chunk):
        """(rank, chunk) of the virtual stage after this chunk's."""
        return (self.rank + 1, chunk) if self.rank < self.P - 1 else (0, chunk + 1)

    def tag(self, kind, micro, chunk):
        """The tag of a message to `chunk` of its receiver: forward activation or backward gradient."""
        return 2 * (chunk * self.m + micro) + (0 if kind == "F" else 1)

    def _buffer(self, B, T):
        rows = self.model.boundary_rows(B * T)              # N, or a sequence-parallel block of it
        return X.np.empty((rows, self.model.cfg.n_embd), dtype=self.model.dtype)   # (N, C)

    # -------------------------------------------------------------------- the step
    def run(self, batches, B, T, timer=None):
        """Run this rank's ops for the step; returns the mean loss on the last stage, NaN elsewhere."""
        t = timer or UNTIMED
        model, comm, m = self.model, self.comm, self.m
        model.grad_flat.fill(0)
        received, recvs = {}, {}                            # (kind, micro, chunk) -> buffer, request
        for c in range(self.v):                             # every receive of the step, posted now
            for j in range(m):
                for kind, wanted, (peer, _) in (("F", self.receives_input(c), self.upstream(c)),
                                                ("B", self.sends_output(c), self.downstream(c))):
                    if wanted:
                        key = (kind, j, c)
                        received[key] = self._buffer(B, T)
                        recvs[key] = comm.Irecv([received[key], MPI.BYTE], peer, self.tag(kind, j, c))
        sends, caches, outputs, loss, live = [], {}, {}, 0.0, 0
        sent = recv = 0
        for op in self.ops:
            key, j, c = tuple(op), op.micro, op.chunk
            units = model.chunks[c]
            if key in recvs:
                with t.region("pp_wait"):
                    recvs.pop(key).Wait()
                recv += received[key].nbytes
            if op.kind == "F":
                head = not self.sends_output(c)
                with t.region("forward"):
                    x, y = batches[j] if batches[j] is not None else (None, None)
                    inp = received.pop(key) if self.receives_input(c) else x
                    out, caches[(j, c)] = U.forward_units(units, model.resident, inp, B, T,
                                                          targets=y if head else None, recompute=model.recompute)
                live += U.activation_bytes(caches[(j, c)])
                model.activation_bytes_peak = max(model.activation_bytes_peak, live)
                if head:
                    loss += float(out) / m
                else:
                    peer, theirs = self.downstream(c)
                    outputs[key] = out                      # kept until its send completes
                    sends.append(comm.Isend([out, MPI.BYTE], peer, self.tag("F", j, theirs)))
                    sent += out.nbytes
            else:
                live -= U.activation_bytes(caches[(j, c)])
                with t.region("backward"):
                    dout = received.pop(key) if self.sends_output(c) else None
                    din = U.backward_units(units, model.resident, dout, caches.pop((j, c)))
                if self.receives_input(c):
                    peer, theirs = self.upstream(c)
                    outputs[key] = din
                    sends.append(comm.Isend([din, MPI.BYTE], peer, self.tag("B", j, theirs)))
                    sent += din.nbytes
        with t.region("pp_wait"):
            MPI.Request.Waitall(sends)
        collectives.counters.add(P2P_KEY, sent, recv, calls=len(sends), group=self.group)
        return loss if self.last else math.nan

    def forward_only(self, idx, targets, tag):
        """The evaluation: the chunks in virtual-stage order, forward only, blocking Send/Recv of the
        activation with `tag`; the loss on the last stage, None elsewhere."""
        model, (B, T) = self.model, idx.shape
        out = None
        for c, units in enumerate(model.chunks):
            x = idx
            if self.receives_input(c):
                x = self._buffer(B, T)
                self.comm.Recv([x, MPI.BYTE], self.upstream(c)[0], tag)
            head = not self.sends_output(c)
            out, _ = U.forward_units(units, model.resident, x, B, T, targets=targets if head else None, keep=False)
            if not head:
                self.comm.Send([X.np.ascontiguousarray(out), MPI.BYTE], self.downstream(c)[0], tag)
        return float(out) if self.last else None

    def tie_gradients(self):
        """First and last stage: add the other's wte gradient (both copies then update alike)."""
        if self.embedding_group == MPI.COMM_NULL:
            return
        collectives.allreduce(self.embedding_group, self.model.grads["wte"].reshape(-1), algorithm="mpi")

    def loss_everywhere(self, loss):
        """The last stage's loss on every stage of the pipeline."""
        return float(self.comm.bcast(loss if self.last else None, root=self.P - 1))

    def free(self):
        if self.embedding_group != MPI.COMM_NULL:
            self.embedding_group.Free()


class PipelineNorm:
    """The global gradient norm of a ZeRO-1 sharded stage (hpclm.parallel.zero's `tensor_norm` seam):
    a rank's shard of its stage's gradient counts, the last stage's tied wte copy does not (the
    first stage counts wte), summed over the pipeline."""

    def __init__(self, pp_comm, model):
        self.comm = pp_comm
        w = model.layout.by_name["wte"] if model.tied_copy else None
        self.skip = [] if w is None else [(w.offset, w.offset + w.size)]     # flat spans left out

    def local_squares(self, grad, lo=0):
        """Squares of `grad`, the flat span [lo, lo + grad.size) of the stage, the tied copy left out."""
        xp = X.array_module(grad)
        sq = float(xp.dot(grad, grad))
        for a, b in self.skip:
            a, b = max(a, lo), min(b, lo + grad.size)
            if a < b:
                seg = grad[a - lo:b - lo]
                sq -= float(xp.dot(seg, seg))
        return sq

    def total(self, sq):
        """Sum over the pipeline's stages (each already summed over its dp shards)."""
        return self.comm.allreduce(sq)


def stage_norm_squared(model):
    """The squared norm of this stage's gradient, the tied wte copy left out (the first stage counts
    it), so the sum over the pp group is the whole model's."""
    xp = X.array_module(model.grad_flat)
    sq = float(xp.dot(model.grad_flat, model.grad_flat))
    if model.tied_copy:
        w = model.grads["wte"].reshape(-1)
        sq -= float(xp.dot(w, w))
    return sq
