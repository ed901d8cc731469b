"""Keep freed large buffers in the process heap (glibc malloc), so that per-step temporaries do not
page-fault.

Each step of the model and of a compressor allocates NumPy temporaries of the same sizes and frees
them again. glibc serves a block above its mmap threshold (adaptive, at most 32 MiB on 64-bit) with a
fresh mmap and gives it back with munmap on free, so every step's large temporaries are new pages:
the first write to each 4 KiB page traps into the kernel, which costs about as much as writing the
data (results/compress/: a 64 MiB np.empty + fill against a copy into an existing buffer).
`keep_freed_blocks()` raises malloc's mmap and trim thresholds to LIMIT, so that blocks below it come
from the heap and stay mapped after free, to be reused by the next step (what PyTorch's caching
allocator does for its tensors). The price: the heap does not shrink below its peak.

`hpclm` calls it for every command (hpclm.cli.main) unless HPCLM_HEAP=system; it is a no-op where
the C library has no mallopt (not glibc).
"""
import ctypes
import ctypes.util
import os

LIMIT = 1 << 30              # bytes: blocks up to this size stay in the heap
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def keep_freed_blocks(limit=LIMIT):
    """Raise glibc's mmap and trim thresholds to `limit`; True if malloc took them."""
    if os.environ.get("HPCLM_HEAP") == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit))) and bool(mallopt(M_TRIM_THRESHOLD, int(limit)))
