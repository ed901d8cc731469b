"""The all-reduce entry point and one public function per algorithm, all with one signature:

    fn(comm, sendbuf, recvbuf=None, op="sum") -> the array holding the result

recvbuf None means in place (the result replaces sendbuf). A group of one, or an empty buffer,
returns at once. `auto` asks the cost model (hpclm.comm.costmodel) which algorithm is fastest
for this size and group, using the calibration from `set_cost_params`, else the file named by
$HPCLM_CALIBRATION, else results/calibration.json if present, else the model's defaults.
"""
import os
from pathlib import Path

from mpi4py import MPI

from hpclm.comm import buffers, costmodel, ops
from hpclm.comm.algorithms import BODIES
from hpclm.comm.wire import Wire
from hpclm.errors import UserError

_MPI_OPS = {"sum": MPI.SUM, "average": MPI.SUM, "max": MPI.MAX}
_cost = {"params": None}


def _run(name, body, comm, sendbuf, recvbuf, op):
    ops.check(sendbuf, op)
    work, deliver = buffers.prepare(sendbuf, recvbuf)                   # (n,) flat
    wire = Wire(comm, name)
    if wire.size > 1 and work.size > 0:
        body(wire, work, op)
        ops.finish(work, op, wire.size)
    wire.commit()
    return deliver()


def _mpi_body(wire, buf, op):
    """MPI's own Allreduce (the baseline). Its traffic is opaque: charged 2(P-1)/P n each way."""
    wire.comm.Allreduce(MPI.IN_PLACE, buf, op=_MPI_OPS[op])
    moved = 2 * (wire.size - 1) * buf.nbytes // wire.size
    wire.charge(moved, moved)


def _public(name, body):
    def algorithm(comm, sendbuf, recvbuf=None, op="sum"):
        return _run(name, body, comm, sendbuf, recvbuf, op)
    algorithm.__name__ = algorithm.__qualname__ = name
    algorithm.__doc__ = f"All-reduce with the {name} algorithm (see hpclm.comm.algorithms)."
    return algorithm


# One registry: MPI's own, then every body of hpclm.comm.algorithms (adding an algorithm there adds it
# here, to comm.ALGORITHMS and to the data-parallel configs), then `auto`.
ALLREDUCE = {"mpi": _public("mpi", _mpi_body)}
ALLREDUCE.update({name: _public(name, body) for name, body in BODIES.items()})
mpi, ring, recursive_doubling, rabenseifner, tree, hierarchical = (
    ALLREDUCE[n] for n in ("mpi", "ring", "recursive_doubling", "rabenseifner", "tree", "hierarchical"))


def set_cost_params(params):
    """Use these costmodel.CostParams for `auto` (None: look for a calibration file again)."""
    _cost["params"] = params


def cost_params():
    if _cost["params"] is None:
        path = os.environ.get("HPCLM_CALIBRATION") or "results/calibration.json"
        found = Path(path).is_file()
        if os.environ.get("HPCLM_CALIBRATION") and not found:
            raise UserError(f"HPCLM_CALIBRATION names a missing file: {path}")
        _cost["params"] = costmodel.load_params(path) if found else costmodel.CostParams()
    return _cost["params"]


def choose(comm, nbytes):
    """The algorithm `auto` uses for `nbytes` on `comm` (the same on every rank)."""
    return costmodel.choose(nbytes, comm.Get_size(), cost_params())


def auto(comm, sendbuf, recvbuf=None, op="sum"):
    """All-reduce with the algorithm the cost model predicts fastest (counted under that name)."""
    return ALLREDUCE[choose(comm, sendbuf.nbytes)](comm, sendbuf, recvbuf, op)


ALLREDUCE["auto"] = auto
ALGORITHMS = tuple(ALLREDUCE)


def lookup(table, algorithm, what):
    try:
        return table[algorithm]
    except KeyError:
        raise UserError(f"comm: unknown {what} algorithm {algorithm!r}; choose one of {', '.join(table)}") from None


def allreduce(comm, sendbuf, recvbuf=None, op="sum", algorithm="ring"):
    """Reduce `sendbuf` over every rank of `comm` with `op` ("sum" | "average" | "max", or a
    callable in-place reduction (acc, other), see hpclm.comm.ops; "mpi" then runs as "ring").

    sendbuf: contiguous NumPy/CuPy array, same size and dtype on every rank (float16/32/64,
    int32/64). recvbuf: None (in place) or an array like sendbuf. Returns the result array.
    """
    algorithm = ops.algorithm_for(op, algorithm, "ring")
    return lookup(ALLREDUCE, algorithm, "all-reduce")(comm, sendbuf, recvbuf, op)
