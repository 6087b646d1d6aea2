"""Give freed memory back to the operating system (glibc malloc tuning), called once at broker start.

Why: fetch responses, ledger entries and produce frames are large buffers (up to tens of MiB). glibc serves
allocations from 128 KiB up with mmap at first, but after such a chunk is freed it raises its mmap threshold
dynamically (up to 32 MiB), so later buffers of that size come from the heap; freed heap memory at the top is
trimmed, but a heap fragmented by a few live small objects keeps the rest resident. A broker that served a
burst of big fetches then stays gigabytes large long after the connections closed. Setting M_MMAP_THRESHOLD
explicitly turns the dynamic raise off: every buffer from 128 KiB up is its own mapping, returned to the
system the moment it is freed. Figures in docs/benchmarks.md.

On a libc without mallopt (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial threshold; fixing it at this value is what disables the dynamic raise."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_malloc(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (big buffers go back to the system when freed); False if not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed; freed buffers may stay resident", threshold)
    return ok


def trim() -> bool:
    """Return free heap memory to the system now (glibc malloc_trim(0)); False if not available."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(ctypes.c_size_t(0)))
