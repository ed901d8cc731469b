"""Shared helpers for the kernel twin tests: run a function under both CPU kernel paths."""
import pytest

from hpclm import kernels


@pytest.fixture
def restore_kernels():
    """Put the kernel choice back as it was after the test (tests switch it with kernels.use)."""
    before = kernels.active()
    yield
    kernels.use(before)


def both(fn):
    """(fn() under the NumPy twins, fn() under the compiled kernels)."""
    out = {}
    for path in ("numpy", "numba"):
        kernels.use(path)
        out[path] = fn()
    return out["numpy"], out["numba"]
