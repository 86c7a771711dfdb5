"""The C library's allocator while predicting: freed batches kept for the next ones, handed back to the
system every few dozen batches.

Every batch allocates the same large arrays again (a 4-window batch: 16 MB normalized, 16 MB of logits,
16 MB of probabilities, the units decoded). With glibc's default, dynamic thresholds each was taken
from the system anew and handed back when freed (``mmap``/``munmap``, or a shrinking thread heap), so
every batch paid for its pages again: ~100,000 page faults per 4096 px raster, a quarter of the
prediction's CPU time spent in the kernel mapping and zeroing pages (measured on 2 cores, 1x1
convolution: 0.28 of 1.13 core-s). Kept in the
allocator instead (:func:`keep_freed_memory`), the next batch reuses them: 4,000-6,000 faults, 0.10
core-s of system time. glibc's own ``malloc_trim`` (:func:`trimmer`) still hands the free memory
back every :data:`ilots.inference.runner.TRIM_BATCHES` batches, so peak memory does not grow with the
length of a run.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Free memory at the top of a heap is handed back only past this (glibc's default: 128 kB, raised
# with the largest block freed, up to 64 MB): the trimmer does it instead.
KEEP_BYTES = 2**30
# Blocks below this size come from the heaps (the largest value malloc(3) documents on 64-bit systems; a
# batch of 4 windows of 512 x 512 px in 4 bands is 16 MB of float32); larger ones are still mapped
# and unmapped each time.
HEAP_BLOCK_BYTES = 32 * 2**20

_kept = False


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc has both; macOS and musl do not)
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    return libc


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to :data:`HEAP_BLOCK_BYTES` for reuse (once per process;
    a process-wide setting, as ``OMP_WAIT_POLICY``); False where the C library is not glibc."""
    global _kept
    if _kept:
        return True
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: where it is refused, the trim threshold is left as it was
    _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    return _kept


def trimmer() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)`` (hands every free page back to the system), or nothing where the C
    library has none."""
    libc = _libc()
    if libc is None:
        return lambda: None
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)
