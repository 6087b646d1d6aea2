"""Garbage collector pauses, timed with ``gc.callbacks``.

Why: a stop-the-world collection of a large heap stalls every connection of the event loop at once; the
latency histograms show the stall but not its cause. CPU time and resident memory come from
prometheus_client's ProcessCollector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``) and
collection counts from its GCCollector, both on the default registry already.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

GC_PAUSE = Histogram(
    "tidelog_gc_pause_seconds", "Duration of Python garbage collections, by generation (0, 1, 2).",
    ["generation"], buckets=GC_BUCKETS,
)  # fmt: skip
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    elif phase == "stop" and _started[0]:
        GC_PAUSE.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - _started[0])
        _started[0] = 0.0


def install() -> None:
    """Start timing collections (idempotent)."""
    if _on_gc not in gc.callbacks:
        for generation in range(3):  # every series from the start (count 0), not only after its first pause
            GC_PAUSE.labels(str(generation))
        gc.callbacks.append(_on_gc)
