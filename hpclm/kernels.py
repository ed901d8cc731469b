"""The CPU kernel switch (`train.kernels`): compiled Numba kernels, or their NumPy twins.

    from hpclm import kernels
    kernels.use("auto", threads=2)   # auto | numba | numpy; threads: Numba's thread count (0: keep)
    kernels.enabled()                # True when the Numba kernels run

`auto` (the default) picks Numba when it imports. The kernels live in hpclm/compress/cpu.py
(compressors) and hpclm/model/fused.py (model element-wise passes); hpclm.compress.* and
hpclm.model.layers call them through `enabled()` and fall back to the NumPy code, which stays
complete and is what the kernels are tested against. Both modules are imported, and numba with
them, only when enabled. The environment variable HPCLM_CPU_KERNELS sets the initial choice (the
test suite runs under both). The GPU path (CuPy arrays) never goes through here.

Threads: until use() says otherwise, parallel kernels use cores / ranks on this node when the MPI
launcher says how many there are (MPI_LOCALNRANKS, OMPI_COMM_WORLD_LOCAL_SIZE), else all cores;
idle OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless set), so they do
not steal the cores from BLAS and the other ranks between kernels.
"""
import importlib.util
import os

from hpclm.errors import UserError

CHOICES = ("auto", "numba", "numpy")
_state = {"choice": None, "threads": 0}
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _launcher_threads():
    """cores // ranks on this node when an MPI launcher says how many, else 0 (Numba's default)."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
    local = int(local) if local.isdigit() else 1
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else 0


def numba_available():
    return importlib.util.find_spec("numba") is not None


def use(choice="auto", threads=0):
    """Select the kernels; threads > 0 sets Numba's thread count (the rank's train.threads)."""
    if choice not in CHOICES:
        raise UserError(f"train.kernels must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "numba" and not numba_available():
        raise UserError("train.kernels = numba, but numba does not import (pip install numba)")
    _state["choice"] = "numba" if choice == "auto" and numba_available() else ("numpy" if choice == "auto" else choice)
    _state["threads"] = int(threads)
    if _state["choice"] == "numba" and threads > 0:
        import numba
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))


def threads():
    """Numba's thread count for parallel kernels (0: Numba's default, the cores)."""
    return _state["threads"]


def active():
    """'numba' or 'numpy'."""
    if _state["choice"] is None:
        use(os.environ.get("HPCLM_CPU_KERNELS", "auto"), _launcher_threads())
    return _state["choice"]


def enabled():
    return active() == "numba"
