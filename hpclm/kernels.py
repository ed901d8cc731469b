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
"""
import importlib.util
import os

from hpclm.errors import UserError

CHOICES = ("auto", "numba", "numpy")
_state = {"choice": None, "threads": 0}


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
        use(os.environ.get("HPCLM_CPU_KERNELS", "auto"))
    return _state["choice"]


def enabled():
    return active() == "numba"
