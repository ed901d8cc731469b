"""Run-time checks of a training run: a non-finite loss or gradient norm stops it on every rank
(one line naming the step, before anything of that step is saved, so the last checkpoint written
stays the last good state), and more CPU threads than cores is reported.

Synchronous strategies agree with `agree_to_stop`, one blocking all-reduce per step. Asynchronous
ones (parameter servers in async/ssp mode, AD-PSGD) must not meet every step, or a fast rank could
never run ahead of a slow one: they use `RoundAgreement`, one non-blocking Iallreduce per round
(train.py's step counter), which a rank tests while it keeps training (train.run_ahead)."""
import math
import os

import numpy

from hpclm.parallel.agree import collective_error


def agree_to_stop(world, step, loss, grad_norm, stop_requested):
    """Collective, once per step before anything is saved: whether any rank asked to stop (a
    signal), in the same one all-reduce that finds a NaN or infinite `loss` (this rank's) or
    `grad_norm` on any rank; then every rank raises one UserError naming the step and ranks."""
    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if world.Get_size() > 1:
        from mpi4py import MPI
        agreed = world.allreduce(2 * bad + bool(stop_requested), op=MPI.BOR)
        if not agreed & 2:
            return bool(agreed & 1)
        reports = world.allgather((bad, step, loss, grad_norm))
    elif not bad:
        return bool(stop_requested)
    else:
        reports = [(bad, step, loss, grad_norm)]
    raise non_finite_error(reports)


def non_finite_error(reports):
    """The UserError of a non-finite loss: `reports` [(bad, step, loss, grad_norm)] of every rank."""
    ranks = [r for r, (b, _, _, _) in enumerate(reports) if b]
    first = min(ranks, key=lambda r: reports[r][1])             # the rank that went bad first
    _, step, first_loss, first_norm = reports[first]
    where = f" on rank {', '.join(map(str, ranks))}" if len(reports) > 1 else ""
    return collective_error(f"step {step + 1}: the training loss is {first_loss} and the gradient norm {first_norm}"
                            f"{where}; the run stops without writing a checkpoint (the last one written is kept); "
                            f"lower optim.lr or check the data")


class RoundAgreement:
    """The non-blocking stop agreement of an asynchronous strategy over `world` (size > 1).

    Each round a rank `post`s [non-finite seen, signal seen, loss] (one float64 Iallreduce, summed)
    and `done()` tests it; every rank posts once per round, so rounds match however far apart the
    ranks are in wall time. `note` records each step's loss and gradient norm: the first non-finite
    one is kept (a step taken while a round was open is reported in the next round). `outcome()`
    after completion: (stop requested anywhere, mean loss of the round) or, if any rank saw a
    non-finite value, one UserError on every rank naming the step and ranks (an allgather: all
    ranks get there in the same round)."""

    def __init__(self, world):
        from mpi4py import MPI
        self.world, self.MPI = world, MPI
        self.size = world.Get_size()
        self.mine, self.agreed = numpy.zeros(3), numpy.zeros(3)
        self.request = None
        self.bad = None                                            # (step, loss, grad_norm) first non-finite

    def note(self, step, loss, grad_norm):
        if self.bad is None and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.bad = (step, loss, grad_norm)

    def post(self, loss, stop_requested):
        self.mine[:] = (self.bad is not None, bool(stop_requested), loss if self.bad is None else 0.0)
        self.request = self.world.Iallreduce(self.mine, self.agreed, op=self.MPI.SUM)

    def done(self):
        return self.request.Test()

    def wait(self):
        self.request.Wait()

    def outcome(self):
        self.request = None
        bad, stop, loss_sum = self.agreed
        if bad:
            self.raise_if_non_finite()
        return bool(stop), float(loss_sum) / self.size

    def raise_if_non_finite(self):
        """Collective: raise the non-finite error if any rank saw one (else return)."""
        mine = (True, *self.bad) if self.bad is not None else (False, -1, 0.0, 0.0)
        reports = self.world.allgather(mine)
        if any(r[0] for r in reports):
            raise non_finite_error(reports)


def oversubscription(threads, local_ranks):
    """A warning when this node's ranks x threads exceed its cores, else None."""
    cores = len(os.sched_getaffinity(0))
    if threads > 1 and threads * local_ranks > cores:
        return (f"{local_ranks} rank(s) x {threads} threads per rank on {cores} cores: threads beyond the cores "
                f"spin and slow every step; lower train.threads (0 = cores / ranks)")
    return None
