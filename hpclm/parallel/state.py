"""Checkpoint state of the gradient-sync strategies: nested per-rank state flattened to named
arrays, every rank's stacked on rank 0 as (P, ...) under a checkpoint's /extra, and this rank's row
taken back out on resume."""
import numpy

from hpclm import xp as X
from hpclm.errors import UserError


def _size(comm):
    return 1 if comm is None else comm.Get_size()


def flatten_state(prefix, state, out):
    """Nested {name: array | dict} -> out["prefix.name. ..."] = host array (flat names: a
    checkpoint's /extra holds datasets only, no groups)."""
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flatten_state(name, value, out)
        else:
            out[name] = numpy.asarray(X.to_host(value) if not numpy.isscalar(value) else value)
    return out


def unflatten_state(prefix, flat):
    """Inverse of flatten_state for the keys under prefix."""
    state = {}
    head = prefix + "."
    for name, value in flat.items():
        if not name.startswith(head):
            continue
        parts = name[len(head):].split(".")
        node = state
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return state


def gather_states(comm, local):
    """Collective: {name: this rank's array} -> on rank 0 {name: (P, *shape) stacked}, else None.
    Every rank holds the same names and shapes (buffer Gather of one concatenated float64/byte row)."""
    P = _size(comm)
    names = sorted(local)
    if P == 1:
        return {name: numpy.asarray(local[name])[None] for name in names}
    row = numpy.concatenate([numpy.ascontiguousarray(local[n]).reshape(-1).view(numpy.uint8) for n in names]) \
        if names else numpy.zeros(0, numpy.uint8)
    rank = comm.Get_rank()
    recv = numpy.empty((P, row.size), dtype=numpy.uint8) if rank == 0 else None
    comm.Gather(row, recv, root=0)
    if rank != 0:
        return None
    out, at = {}, 0
    for n in names:
        a = numpy.asarray(local[n])
        out[n] = numpy.ascontiguousarray(recv[:, at:at + a.nbytes]).view(a.dtype).reshape((P,) + a.shape)
        at += a.nbytes
    return out


def rows_for_rank(extra, names_shapes, rank, world, where):
    """{name: array} of this rank from checkpoint extras stacked (P, ...); UserError on a mismatch."""
    out = {}
    for name, (shape, dtype) in names_shapes.items():
        if name not in extra:
            raise UserError(f"{where}: checkpoint has no /extra/{name} (was it written without this compressor?)")
        a = extra[name]
        if a.shape != (world,) + tuple(shape):
            raise UserError(f"{where}: checkpoint /extra/{name} has shape {a.shape}, expected {(world,) + tuple(shape)} "
                            f"(compression state is per rank and per gradient bucket: resume with the same dp size, "
                            f"compressor and comm.bucket_mb as the run that wrote it)")
        out[name] = a[rank].astype(dtype, copy=False)
    return out


def codecs_state(codecs):
    """{compress.bucket<i>.<name>: array} of every bucket codec's state_dict (one per bucket)."""
    out = {}
    for i, codec in enumerate(codecs):
        flatten_state(f"compress.bucket{i}", codec.state_dict(), out)
    return out


def load_codecs_state(codecs, flat):
    """Inverse of codecs_state."""
    for i, codec in enumerate(codecs):
        codec.load_state_dict(unflatten_state(f"compress.bucket{i}", flat))
