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

``limit_arenas`` (called before a broker process starts its event loop) caps glibc's malloc arenas at
``ARENAS``. glibc gives threads their own arenas (up to 8 per core); the broker's threads (obstore's tokio
runtime, ``to_thread`` workers) allocate object-store reads and journal reads there, and each of those arenas
kept ~30 MiB resident that ``malloc_trim`` did not give back: after a full-load produce and a replay, RSS idled
at 776-834 MiB with the default against 536 MiB with two arenas (docs/benchmarks.md, "Broker memory"). The
GIL serializes Python anyway; the event loop keeps the main arena. ``MALLOC_ARENA_MAX`` in the environment
wins.

``IdleTrimmer`` does the same when the broker goes idle after a busy period (its process CPU falls below
``IDLE_CPU_FRACTION`` of a core for ``IDLE_AFTER_S``) while glibc holds at least ``TRIM_AFTER_BYTES`` of free
heap: the heap a full-load produce leaves behind (freed ledger entries, request frames, offload buffers) goes
back to the system. It runs ``malloc_trim`` in a worker thread (ctypes releases the GIL), so the event loop
is not held while the heap is walked. ``heap()`` reads glibc's ``mallinfo2`` (in use, free) for the
``tidelog_broker_memory_bytes`` gauges.

On a libc without malloc_trim (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

log = logging.getLogger(__name__)

TRIM_AFTER_BYTES = 16 * 1024 * 1024
"""A closing connection that held at least this much response memory at once triggers a trim."""
TRIM_INTERVAL_S = 1.0
ARENAS = 2
M_ARENA_MAX = -8
"""glibc's mallopt parameter number for the arena cap."""
IDLE_AFTER_S = 2.0
"""How long the process must stay idle before the idle trimmer trims."""
IDLE_CPU_FRACTION = 0.05
"""Idle: less process CPU than this fraction of one core over the last check interval."""
IDLE_CHECK_S = 1.0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


@dataclass(frozen=True, slots=True)
class HeapFigures:
    """glibc's view of the C heap (``mallinfo2``), bytes."""

    in_use: int
    """Allocated: heap chunks in use plus mmapped blocks (large buffers)."""
    free: int
    """Free chunks glibc keeps (mapped and resident until trimmed or reused): fragmentation and spare."""


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


@cache
def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).mallinfo2  # glibc 2.33+
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    fn.argtypes = []
    result: Callable[[], _Mallinfo2] = fn
    return result


def heap() -> HeapFigures | None:
    """The C heap now (glibc ``mallinfo2``); None where it is not available. It walks the free lists:
    call it from a scrape, not per request."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return HeapFigures(in_use=int(info.uordblks + info.hblkhd), free=int(info.fordblks))


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``) unless ``MALLOC_ARENA_MAX`` is set; call it before
    threads start. False where glibc's mallopt is not there (or the environment decides)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))


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


class IdleTrimmer:
    """Trims the heap once the process goes idle after being busy (see the module doc). ``run`` is the task;
    ``cpu`` (process CPU seconds) and ``heap_figures`` are seams for unit tests.

    ``heap`` is glibc's heap as of the last idle check (before its trim): ``mallinfo2`` walks every free chunk
    under the arena locks (21 ms for 100,000 free chunks), so it is read only while the broker is idle, in a
    worker thread, never by a scrape."""

    def __init__(
        self,
        *,
        cpu: Callable[[], float] = time.process_time,
        heap_figures: Callable[[], HeapFigures | None] = heap,
        check_s: float = IDLE_CHECK_S,
        idle_after_s: float = IDLE_AFTER_S,
    ) -> None:
        self._cpu = cpu
        self._heap = heap_figures
        self.heap: HeapFigures | None = None
        self._check = check_s
        self._idle_after = idle_after_s
        self._busy = False  # busy since the last trim
        self._idle_for = 0.0
        self.trims = 0
        self.returned = 0
        """Free heap bytes glibc reported before each trim, summed (what the trims could give back)."""

    def step(self, cpu_used: float, elapsed: float) -> bool:
        """One check: ``cpu_used`` CPU seconds over ``elapsed`` wall seconds. True when it is time to trim."""
        if cpu_used > IDLE_CPU_FRACTION * elapsed:
            self._busy = True
            self._idle_for = 0.0
            return False
        self._idle_for += elapsed
        if not self._busy or self._idle_for < self._idle_after:
            return False
        self._busy = False  # one trim per busy period
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_cpu, last_t = self._cpu(), loop.time()
        while True:
            await asyncio.sleep(self._check)
            cpu, now = self._cpu(), loop.time()
            due = self.step(cpu - last_cpu, now - last_t)
            if due:
                self.heap = await asyncio.to_thread(self._heap)
                free = None if self.heap is None else self.heap.free
                if free is None or free >= TRIM_AFTER_BYTES:
                    started = time.perf_counter()
                    await asyncio.to_thread(trim)
                    self.trims += 1
                    self.returned += free or 0
                    log.debug("idle: trimmed the heap (%s free bytes) in %.1f ms", free,
                              (time.perf_counter() - started) * 1000)  # fmt: skip
                cpu = self._cpu()  # the trim's own CPU is not activity
            last_cpu, last_t = cpu, loop.time()
