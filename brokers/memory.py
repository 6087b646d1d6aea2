"""Give freed heap memory back to the operating system after a connection that held much of it closes.

Why: a client that pipelines big fetches makes the broker hold up to ``fetch.response.memory.bytes`` of
responses; when it goes, that memory is freed, but glibc keeps freed heap pages mapped unless they sit at the
top of the heap (and after freeing mmapped chunks it raises its mmap threshold dynamically up to 32 MiB, so
later big buffers come from the heap too). ``malloc_trim(0)`` returns every free page in the heap, not just the
top. It walks the heap (milliseconds for a large one), so the server calls it only when a connection that held
at least ``TRIM_AFTER_BYTES`` closes, at most once per ``TRIM_INTERVAL_S``.

Measured alternative, not used: fixing the mmap threshold with ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` at start
makes every buffer from 128 KiB up its own mapping, returned when freed, but costs the produce path about
3 ms of broker CPU per MB (each ~1 MB request frame and ledger entry is mapped, faulted in and unmapped):
110.6 MB/s against 129.2 MB/s without it (docs/benchmarks.md).

On a libc without malloc_trim (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache

TRIM_AFTER_BYTES = 16 * 1024 * 1024
"""A closing connection that held at least this much response memory at once triggers a trim."""
TRIM_INTERVAL_S = 1.0


@cache
def _malloc_trim() -> Callable[[ctypes.c_size_t], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    fn: Callable[[ctypes.c_size_t], int] | None = getattr(libc, "malloc_trim", None)
    return fn


def trim() -> bool:
    """Return free heap memory to the system now (glibc ``malloc_trim(0)``); False when not available or
    nothing was returned."""
    fn = _malloc_trim()
    if fn is None:
        return False
    return bool(fn(ctypes.c_size_t(0)))


class Trimmer:
    """Rate-limited ``trim`` for the server (one event loop)."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self._interval = interval_s
        self._last = float("-inf")

    def after_release(self, held_bytes: int, now: float) -> bool:
        """A connection that held ``held_bytes`` at its peak closed; trim if that was much and not too often."""
        if held_bytes < TRIM_AFTER_BYTES or now - self._last < self._interval:
            return False
        self._last = now
        trim()
        return True
