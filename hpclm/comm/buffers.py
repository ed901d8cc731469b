"""User buffers -> one flat work array the algorithms run on in place, and back.

NumPy arrays are used as they are. CuPy arrays: the stream is synchronised before MPI sees
memory; with a CUDA-aware MPI (`set_cuda_aware("on")`, or "auto" and the library says so) the
device array is handed to MPI directly, otherwise it is staged through a host copy.
The CuPy path is UNTESTED ON HARDWARE (no GPU where it was written); it is kept small on purpose.
"""
import ctypes

import numpy

from hpclm import xp
from hpclm.errors import UserError

_cuda_aware = {"mode": "auto", "resolved": None}


def set_cuda_aware(mode):
    """"on" | "off" | "auto" (ask the MPI library through MPIX_Query_cuda_support)."""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"comm: cuda_aware must be auto, on or off; got {mode!r}")
    _cuda_aware.update(mode=mode, resolved=None)


def cuda_aware():
    """Whether device buffers go to MPI directly (resolved once per mode)."""
    if _cuda_aware["resolved"] is None:
        mode = _cuda_aware["mode"]
        _cuda_aware["resolved"] = mode == "on" or (mode == "auto" and _library_has_cuda())
    return _cuda_aware["resolved"]


def _library_has_cuda():
    from mpi4py import MPI
    try:
        return bool(ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support())
    except (OSError, AttributeError):
        return False


def _flat(a, what):
    if not a.flags.c_contiguous:
        raise UserError(f"comm: {what} must be C-contiguous")
    return a.reshape(-1)


def prepare(sendbuf, recvbuf=None):
    """(work, deliver): `work` is a flat array holding sendbuf's data where the result is built
    in place; `deliver()` puts it into recvbuf (or sendbuf, when recvbuf is None) and returns that."""
    if recvbuf is None and type(sendbuf) is numpy.ndarray and sendbuf.ndim == 1 and sendbuf.flags.c_contiguous:
        return sendbuf, lambda: sendbuf            # the common case, kept cheap for small messages
    target = sendbuf if recvbuf is None else recvbuf
    flat_send = _flat(sendbuf, "sendbuf")
    flat = _flat(target, "recvbuf")
    if recvbuf is not None:
        if recvbuf.size != sendbuf.size or recvbuf.dtype != sendbuf.dtype:
            raise UserError(f"comm: recvbuf {recvbuf.dtype}[{recvbuf.size}] must match "
                            f"sendbuf {sendbuf.dtype}[{sendbuf.size}]")
        xp.array_module(flat).copyto(flat, flat_send)
    if isinstance(flat, numpy.ndarray):
        return flat, lambda: target
    xp.synchronize()  # CuPy: kernels that wrote the buffer must finish before MPI reads it
    if cuda_aware():
        return flat, lambda: target
    host = xp.to_host(flat)          # staged copy, (n,) on the host

    def deliver():
        flat.set(host)
        return target
    return host, deliver
