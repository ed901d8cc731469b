"""Reduction operators and supported dtypes; the local reduction is done with array ufuncs.

Besides the named ops, `op` may be a callable `(acc, other) -> None` that adds `other` into `acc`
in place: a reduction MPI has no type for (bf16 bits held as uint16, hpclm.compress.bf16.bf16_sum)
or would do slowly (float16 with float32 arithmetic). Any dtype goes; only our own algorithms can
apply it, so `comm.allreduce` runs algorithm "mpi" as "ring" for a callable op."""
import numpy

from hpclm import xp
from hpclm.errors import UserError

OPS = ("sum", "average", "max")
DTYPES = tuple(numpy.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64"))


def check(buf, op):
    """Raise UserError unless `buf`'s dtype and `op` are supported together."""
    if callable(op):
        return
    if op not in OPS:
        raise UserError(f"comm: unknown op {op!r}; choose one of {', '.join(OPS)}")
    if buf.dtype not in DTYPES:
        raise UserError(f"comm: dtype {buf.dtype} not supported; use one of {', '.join(map(str, DTYPES))}")
    if op == "average" and buf.dtype.kind != "f":
        raise UserError(f"comm: op 'average' needs a floating-point buffer, got {buf.dtype}")


def algorithm_for(op, algorithm, ours):
    """`ours` where `algorithm` is "mpi" but `op` is a callable (MPI cannot apply it), else `algorithm`."""
    return ours if callable(op) and algorithm == "mpi" else algorithm


def combine(acc, other, op):
    """acc <- acc (op) other, elementwise, in place. `average` combines as `sum` (see finish)."""
    mod = xp.array_module(acc)
    if callable(op):
        op(acc, other)
    elif op == "max":
        mod.maximum(acc, other, out=acc)
    else:
        mod.add(acc, other, out=acc)
    if mod is not numpy:
        xp.synchronize()  # device result must be complete before MPI may send it


def finish(buf, op, nranks):
    """The last step of an all-reduce: `average` divides the sum by the number of ranks."""
    if op == "average" and nranks > 1:
        xp.array_module(buf).divide(buf, nranks, out=buf)
