"""Counter-based randomness shared by the NumPy twins and the CUDA kernels (kernels/common.cuh).

A stream is a 64-bit key made from (seed, step, salt) on the host; element i of the stream is
SplitMix64's output for state key + (i + 1) * GOLDEN, and its uniform float32 in [0, 1) is the top
24 bits times 2^-24 (exact in float32). Both sides do the same integer arithmetic, so a CPU and a
GPU draw are bit-identical and any element can be drawn without drawing the ones before it.
Ranks that must agree (randomk indices) use salt 0; ranks that must be independent (stochastic
rounding) pass their rank as the salt.
"""
import numpy

from hpclm import xp as X

GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def mix64(z):
    """SplitMix64's finaliser on a Python int (host side, for keys)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def stream_key(seed, step=0, salt=0):
    """The 64-bit key of the stream for (seed, step, salt)."""
    return mix64(mix64(mix64(int(seed) + GOLDEN) ^ int(step)) + int(salt) * GOLDEN)


def hash64(key, n, offset=0, xp=None):
    """(n,) uint64: SplitMix64 outputs for counters offset .. offset + n - 1 of stream `key`."""
    xp = xp or X.np
    u = xp.uint64
    z = (xp.arange(offset + 1, offset + n + 1, dtype=u) * u(GOLDEN)) + u(key)
    z ^= z >> u(30)
    z *= u(_M1)
    z ^= z >> u(27)
    z *= u(_M2)
    z ^= z >> u(31)
    return z


def uniform(key, n, offset=0, xp=None):
    """(n,) float32 in [0, 1): the top 24 bits of each hash times 2^-24."""
    xp = xp or X.np
    h = hash64(key, n, offset, xp)
    return (h >> xp.uint64(40)).astype(xp.float32) * xp.float32(2.0 ** -24)


def as_numpy(a):
    return a if isinstance(a, numpy.ndarray) else X.to_host(a)
