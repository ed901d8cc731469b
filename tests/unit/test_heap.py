"""hpclm.heap: with freed blocks kept, a second 64 MiB temporary reuses the first one's pages (no
page faults), where malloc's defaults map fresh pages every time (16384 faults of 4 KiB pages, or
a few hundred where transparent huge pages serve part of it); HPCLM_HEAP=system opts out."""
import os
import subprocess
import sys

PROBE = """
import resource, numpy as np
from hpclm import heap
print(heap.keep_freed_blocks())
np.empty(1 << 24, np.float32).fill(1)                       # first use of the block: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.empty(1 << 24, np.float32).fill(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_blocks_do_not_fault_again():
    took, faults = probe()
    assert took
    assert faults < 20


def test_system_heap_maps_fresh_pages():
    took, faults = probe(HPCLM_HEAP="system")
    assert not took
    assert faults > 200
