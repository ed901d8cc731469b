"""Run by test_netns.py inside the emulated cluster: our all-reduces against MPI's over real nodes.

Prints one JSON line from rank 0: host names, node sizes seen by COMM_TYPE_SHARED, and for each
algorithm the largest difference from MPI_Allreduce on the same data (0.0 = identical).
"""
import json
import socket

import numpy as np
from mpi4py import MPI

from hpclm import comm as hcomm

world = MPI.COMM_WORLD
rank = world.Get_rank()
node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
rng = np.random.default_rng(rank)
data = rng.integers(-1000, 1000, size=300_001).astype(np.float64)   # integers: sums exact in any order
expected = np.empty_like(data)
world.Allreduce(data, expected, op=MPI.SUM)
errors = {}
for algorithm in ("ring", "recursive_doubling", "rabenseifner", "tree", "hierarchical"):
    out = hcomm.allreduce(world, data.copy(), algorithm=algorithm)
    errors[algorithm] = float(np.max(np.abs(out - expected)))
hosts = world.gather(socket.gethostname())
sizes = world.gather(node.Get_size())
if rank == 0:
    print(json.dumps({"hosts": hosts, "node_sizes": sizes, "errors": errors}))
