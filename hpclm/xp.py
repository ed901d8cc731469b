"""The array backend, chosen once per process: NumPy on CPU, CuPy on GPU.

Model and compressor code does `from hpclm import xp as X; a = X.np.zeros(...)`, never imports
cupy itself. This module is the only place that does (besides the CUDA kernel loader).
"""
import time

import numpy

from hpclm.errors import UserError

np = numpy          # the active array module (numpy or cupy); replaced by use("gpu")
device = "cpu"


def use(name):
    """Select the backend for this process: "cpu" (NumPy) or "gpu" (CuPy). Returns the module."""
    global np, device
    if name == "cpu":
        np, device = numpy, "cpu"
    elif name == "gpu":
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # ImportError, or CUDA runtime errors without a device
            raise UserError(f"--device gpu needs CuPy and a CUDA device: {exc}") from None
        np, device = cupy, "gpu"
    else:
        raise UserError(f"unknown device {name!r}: choose cpu or gpu")
    return np


def array_module(a):
    """numpy or cupy, whichever owns array `a`."""
    return numpy if isinstance(a, numpy.ndarray) or numpy.isscalar(a) else np


def to_host(a):
    """A NumPy copy (or the array itself, if already on the host)."""
    if isinstance(a, numpy.ndarray):
        return a
    return a.get()


def to_device(a):
    """The array on the active backend (no copy on CPU)."""
    return np.asarray(a)


def synchronize():
    """Wait for queued device work (no-op on CPU); call before reading a clock or handing buffers to MPI."""
    if device == "gpu":
        np.cuda.get_current_stream().synchronize()


def now():
    """A clock reading that includes all device work queued so far."""
    synchronize()
    return time.perf_counter()
