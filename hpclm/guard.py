"""Run-time checks of a training run: a non-finite loss or gradient norm stops it on every rank
(one line naming the step, before the update, so the last checkpoint written stays the last good
state), and more CPU threads than cores is reported."""
import math
import os

from hpclm.parallel.agree import collective_error


def check_finite(world, step, loss, grad_norm):
    """Collective: raise one UserError on every rank if `loss` (this rank's) or `grad_norm` is
    NaN or infinite on any rank. One small all-reduce per step; the details only on failure."""
    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if world.Get_size() == 1:
        if not bad:
            return
        reports = [(bad, loss, grad_norm)]
    else:
        if not world.allreduce(int(bad)):
            return
        reports = world.allgather((bad, loss, grad_norm))
    ranks = [r for r, (b, _, _) in enumerate(reports) if b]
    _, first_loss, first_norm = reports[ranks[0]]
    where = f" on rank {', '.join(map(str, ranks))}" if len(reports) > 1 else ""
    raise collective_error(f"step {step + 1}: the training loss is {first_loss} and the gradient norm {first_norm}"
                           f"{where}; stopped before the update, no checkpoint written for this step (the last one "
                           f"written is kept); lower optim.lr or check the data")


def oversubscription(threads, local_ranks):
    """A warning when this node's ranks x threads exceed its cores, else None."""
    cores = len(os.sched_getaffinity(0))
    if threads > 1 and threads * local_ranks > cores:
        return (f"{local_ranks} rank(s) x {threads} threads per rank on {cores} cores: threads beyond the cores "
                f"spin and slow every step; lower train.threads (0 = cores / ranks)")
    return None
