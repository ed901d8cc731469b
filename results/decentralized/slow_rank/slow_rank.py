"""`hpclm train` with one worker slowed 3x: world rank SLOW_RANK sleeps twice the time its
train_step took, after every step. Used by run.sh.

    mpiexec -n P python results/decentralized/slow_rank/slow_rank.py SLOW_RANK train ...
"""
import sys
import time

from mpi4py import MPI

import hpclm.train as train

SLOW_RANK = int(sys.argv[1])
original = train.train_step


def slowed_step(s, step, **kw):
    t0 = time.perf_counter()
    out = original(s, step, **kw)
    if MPI.COMM_WORLD.Get_rank() == SLOW_RANK:
        time.sleep(2 * (time.perf_counter() - t0))
    return out


train.train_step = slowed_step
from hpclm.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
