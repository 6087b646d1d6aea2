"""Event-loop lag: how late a short sleep wakes up.

Why: every connection of a broker shares one event loop. A callback that runs long (a big decode, a
garbage collection, a blocking call) delays all of them at once, and a client only sees a slow answer.
A sampler task sleeps ``interval`` again and again; the time it wakes past its deadline is the lag. It is
exported as a histogram (``tidelog_event_loop_lag_seconds``), the largest lag of the last few seconds
(``tidelog_event_loop_lag_recent_max_seconds``) and the largest since start
(``tidelog_event_loop_lag_max_seconds``).

A lag has two causes: the loop was busy (a long callback), or the process did not get a CPU (a loaded
machine). The loop thread's CPU time over the same sleep tells them apart: the part of a lag the thread
spent running is the loop's own stall (``tidelog_event_loop_busy_recent_max_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from prometheus_client import Gauge, Histogram

LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INTERVAL_S = 0.01
"""How often the loop is sampled: short enough to see a 20 ms stall, cheap (100 wake-ups a second)."""
WINDOW_S = 5
"""The recent maximum covers this many whole seconds plus the current one."""

LAG = Histogram(
    "tidelog_event_loop_lag_seconds", "How late the event loop ran a timer (sampled every 10 ms).",
    buckets=LAG_BUCKETS,
)  # fmt: skip
LAG_MAX = Gauge("tidelog_event_loop_lag_max_seconds", "The largest event-loop lag since the process started.")
LAG_RECENT_MAX = Gauge(
    "tidelog_event_loop_lag_recent_max_seconds", "The largest event-loop lag over the last 5 to 6 seconds."
)
BUSY_RECENT_MAX = Gauge(
    "tidelog_event_loop_busy_recent_max_seconds",
    "The largest event-loop lag over the last 5 to 6 seconds during which the loop's thread was running "
    "(not waiting for a CPU).",
)


class LagWindow:
    """The largest lag per whole second, for the last ``seconds`` seconds (pure: the caller gives the time)."""

    def __init__(self, seconds: int = WINDOW_S) -> None:
        self._seconds = seconds
        self._maxima: deque[tuple[int, float]] = deque()  # (second, largest lag in it), oldest first
        self.overall = 0.0

    def add(self, now: float, lag: float) -> None:
        second = int(now)
        if self._maxima and self._maxima[-1][0] == second:
            if lag > self._maxima[-1][1]:
                self._maxima[-1] = (second, lag)
        else:
            self._maxima.append((second, lag))
        self.overall = max(self.overall, lag)
        self._expire(second)

    def recent_max(self, now: float) -> float:
        self._expire(int(now))
        return max((lag for _, lag in self._maxima), default=0.0)

    def _expire(self, second: int) -> None:
        while self._maxima and self._maxima[0][0] < second - self._seconds:
            self._maxima.popleft()


class LoopLagSampler:
    """A task on the running loop that measures its lag until stopped."""

    def __init__(self, interval: float = INTERVAL_S) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self.window = LagWindow()
        self.busy = LagWindow()  # the part of each lag the loop's thread was on a CPU
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def observe(self, lag: float, now: float, cpu: float | None = None) -> None:
        """Record one sample (also used by tests): ``lag`` past the deadline, and ``cpu`` seconds the loop's
        thread ran over the whole sleep (None: unknown, the whole lag counts as busy)."""
        lag = max(0.0, lag)
        busy = lag if cpu is None else min(lag, max(0.0, cpu - self.interval))
        self.samples += 1
        self.window.add(now, lag)
        self.busy.add(now, busy)
        LAG.observe(lag)
        LAG_MAX.set(self.window.overall)
        LAG_RECENT_MAX.set(self.window.recent_max(now))
        BUSY_RECENT_MAX.set(self.busy.recent_max(now))

    async def _run(self) -> None:
        while True:
            before, cpu_before = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.observe(now - before - self.interval, time.monotonic(), time.thread_time() - cpu_before)
