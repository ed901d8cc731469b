"""Run-time checks of a training run: a non-finite loss or gradient norm stops it on every rank
(one line naming the step, before anything of that step is saved, so the last checkpoint written
stays the last good state), and more CPU threads than cores is reported."""
import math
import os

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
        reports = world.allgather((bad, loss, grad_norm))
    elif not bad:
        return bool(stop_requested)
    else:
        reports = [(bad, loss, grad_norm)]
    ranks = [r for r, (b, _, _) in enumerate(reports) if b]
    _, first_loss, first_norm = reports[ranks[0]]
    where = f" on rank {', '.join(map(str, ranks))}" if len(reports) > 1 else ""
    raise collective_error(f"step {step + 1}: the training loss is {first_loss} and the gradient norm {first_norm}"
                           f"{where}; the run stops without writing a checkpoint (the last one written is kept); "
                           f"lower optim.lr or check the data")


def oversubscription(threads, local_ranks):
    """A warning when this node's ranks x threads exceed its cores, else None."""
    cores = len(os.sched_getaffinity(0))
    if threads > 1 and threads * local_ranks > cores:
        return (f"{local_ranks} rank(s) x {threads} threads per rank on {cores} cores: threads beyond the cores "
                f"spin and slow every step; lower train.threads (0 = cores / ranks)")
    return None
