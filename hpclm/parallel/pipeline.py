"""The pipeline executor: one stage's part of a step's schedule (hpclm.parallel.schedule), run over
the stage's units (hpclm.model.stage.StageModel), with activations going forward and their
gradients backward between neighbouring stages by buffer Isend/Irecv on the pp communicator.

    engine = PipelineEngine(stage_model, pp_comm, "1f1b", micro_batches=4)
    loss = engine.run(batches, B, T, timer)    # batches[j] = (idx, targets) of micro-batch j;
                                               # the loss (mean over micro-batches) on the last stage
    engine.tie_gradients()                     # first + last stage: sum the two wte copies' gradients

Shapes are static (B x T rows of C floats), so no handshake: every receive of the step is posted
before the first op (its buffer kept for its micro-batch), sends go out non-blocking as soon as
an op ends, and all sends are completed at the end of the step. Gradients accumulate over the
micro-batches (the sum; the gradient sync's grad_scale 1/m makes it the mean). Bytes sent and
received are counted under the pp communicator's group ("p2p" key); waiting for a neighbour is
the `pp_wait` region (the bubble), the ops' compute `forward` / `backward`.
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


def _tag(kind, micro):
    return 2 * micro + (0 if kind == "F" else 1)


class PipelineEngine:
    def __init__(self, model, pp_comm, schedule_name, micro_batches):
        self.model, self.comm = model, pp_comm
        self.P, self.rank = pp_comm.Get_size(), pp_comm.Get_rank()
        self.m = micro_batches
        self.ops = schedule(schedule_name, self.P, micro_batches)[self.rank]
        self.first, self.last = self.rank == 0, self.rank == self.P - 1
        self.group = collectives.group_name(pp_comm)
        ends = [0, self.P - 1] if self.P > 1 else [0]
        color = 0 if self.rank in ends and model.cfg.tie_weights and self.P > 1 else MPI.UNDEFINED
        self.embedding_group = pp_comm.Split(color, self.rank)     # first and last stage (tied wte)

    def _buffer(self, B, T):
        rows = self.model.boundary_rows(B * T)              # N, or a sequence-parallel block of it
        return X.np.empty((rows, self.model.cfg.n_embd), dtype=self.model.dtype)   # (N, C)

    def run(self, batches, B, T, timer=None):
        """Run this stage's ops for the step; returns the mean loss on the last stage, NaN elsewhere."""
        t = timer or UNTIMED
        model, comm, m = self.model, self.comm, self.m
        model.grad_flat.fill(0)
        inputs, grads_in, recvs = {}, {}, {}
        for j in range(m):                                  # every receive of the step, posted now
            if not self.first:
                inputs[j] = self._buffer(B, T)
                recvs[("F", j)] = comm.Irecv([inputs[j], MPI.BYTE], self.rank - 1, _tag("F", j))
            if not self.last:
                grads_in[j] = self._buffer(B, T)
                recvs[("B", j)] = comm.Irecv([grads_in[j], MPI.BYTE], self.rank + 1, _tag("B", j))
        sends, caches, outputs, loss, live = [], {}, {}, 0.0, 0
        sent = recv = 0
        for op in self.ops:
            j = op.micro
            if (op.kind, j) in recvs:
                with t.region("pp_wait"):
                    recvs.pop((op.kind, j)).Wait()
                recv += (inputs if op.kind == "F" else grads_in)[j].nbytes
            if op.kind == "F":
                with t.region("forward"):
                    x, y = batches[j] if batches[j] is not None else (None, None)
                    inp = x if self.first else inputs.pop(j)
                    out, caches[j] = U.forward_units(model.units, model.resident, inp, B, T,
                                                     targets=y if self.last else None,
                                                     recompute=model.recompute)
                live += U.activation_bytes(caches[j])
                model.activation_bytes_peak = max(model.activation_bytes_peak, live)
                if self.last:
                    loss += float(out) / m
                else:
                    outputs[j] = out                        # kept until its send completes
                    sends.append(comm.Isend([out, MPI.BYTE], self.rank + 1, _tag("F", j)))
                    sent += out.nbytes
            else:
                live -= U.activation_bytes(caches[j])
                with t.region("backward"):
                    dout = None if self.last else grads_in.pop(j)
                    din = U.backward_units(model.units, model.resident, dout, caches.pop(j))
                if not self.first:
                    outputs[("B", j)] = din
                    sends.append(comm.Isend([din, MPI.BYTE], self.rank - 1, _tag("B", j)))
                    sent += din.nbytes
        with t.region("pp_wait"):
            MPI.Request.Waitall(sends)
        collectives.counters.add(P2P_KEY, sent, recv, calls=len(sends), group=self.group)
        return loss if self.last else math.nan

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
