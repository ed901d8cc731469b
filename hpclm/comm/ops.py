"""Reduction operators and supported dtypes; the local reduction is done with array ufuncs."""
import numpy

from hpclm import xp
from hpclm.errors import UserError

OPS = ("sum", "average", "max")
DTYPES = tuple(numpy.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64"))


def check(buf, op):
    """Raise UserError unless `buf`'s dtype and `op` are supported together."""
    if op not in OPS:
        raise UserError(f"comm: unknown op {op!r}; choose one of {', '.join(OPS)}")
    if buf.dtype not in DTYPES:
        raise UserError(f"comm: dtype {buf.dtype} not supported; use one of {', '.join(map(str, DTYPES))}")
    if op == "average" and buf.dtype.kind != "f":
        raise UserError(f"comm: op 'average' needs a floating-point buffer, got {buf.dtype}")


def combine(acc, other, op):
    """acc <- acc (op) other, elementwise, in place. `average` combines as `sum` (see finish)."""
    mod = xp.array_module(acc)
    if op == "max":
        mod.maximum(acc, other, out=acc)
    else:
        mod.add(acc, other, out=acc)
    if mod is not numpy:
        xp.synchronize()  # device result must be complete before MPI may send it


def finish(buf, op, nranks):
    """The last step of an all-reduce: `average` divides the sum by the number of ranks."""
    if op == "average" and nranks > 1:
        xp.array_module(buf).divide(buf, nranks, out=buf)
