"""Summing sparse payloads (topk / threshold, as (values, indices) pairs: the compressor's
as_sparse(payload)) received from several ranks: scatter-add.
NumPy: numpy.add.at (repeated indices accumulate); GPU: kernels/topk.cu scatter_add_v1."""
from hpclm import xp as X
from hpclm.compress.bits import on_gpu


def scatter_add(out, indices, values):
    """out[indices] += values, in place; returns out."""
    if on_gpu(out):
        from hpclm.compress import cuda
        return cuda.scatter_add(out, indices, values)
    X.array_module(out).add.at(out, indices, values)
    return out


def sum_sparse(payloads, n, dtype):
    """Dense (n,) sum of every rank's (values, indices) pair."""
    out = X.np.zeros(n, dtype=dtype)
    for values, indices in payloads:  # loop over ranks
        scatter_add(out, indices, values)
    return out
