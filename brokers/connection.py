"""One Kafka connection's bounds and bookkeeping: requests not yet answered, response bytes waiting to be
written, and when the connection last showed signs of life.

Why: a client that pipelines requests and never reads the answers must not make the broker hold more
than a bounded amount for it (``connection.max.inflight.requests``, ``connection.max.queued.response.bytes``),
and a connection that sends nothing (``connections.max.idle.ms``) or stops half-way through a frame
(``socket.request.timeout.ms``) must not stay open forever. brokers/server.py drives it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from brokers.observability.requests import RequestTiming
from brokers.response_memory import RequestMemory, ResponseMemory

if TYPE_CHECKING:
    from brokers.config import BrokerConfig

MAX_TIMEOUT_S = 1e7
"""Longer timeouts are treated as this (about 115 days: never, in practice) to keep event loop timers sane."""
RECHECK_S = 1.0
"""While a request is being handled the idle clock does not run; the state is looked at again this often."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_inflight: int
    """Requests read but not yet answered; no further frame is read while this many are."""
    max_queued_bytes: int
    """Bytes of finished responses not yet written; above it no frame is read and no request starts."""
    idle_s: float
    """A connection with no request being handled and no bytes moving for this long is closed."""
    frame_timeout_s: float
    """A frame must arrive whole within this long of its first bytes being read."""

    @classmethod
    def of(cls, config: BrokerConfig) -> ConnectionLimits:
        return cls(
            max_inflight=config.connection_max_inflight_requests,
            max_queued_bytes=config.connection_max_queued_response_bytes,
            idle_s=min(config.connections_max_idle_ms / 1000, MAX_TIMEOUT_S),
            frame_timeout_s=min(config.socket_request_timeout_ms / 1000, MAX_TIMEOUT_S),
        )


class Request:
    """A request read from the connection, until its response is written (or the connection closes)."""

    __slots__ = ("api_key", "memory", "response", "size", "started", "task", "timing")

    def __init__(self, api_key: int, memory: RequestMemory) -> None:
        self.api_key = api_key
        self.memory = memory
        self.task: asyncio.Task[None] | None = None
        self.started = False  # its handler was called (it may have had effects)
        self.response: list[bytes | bytearray | memoryview] | None = None
        """The answer once finished, until written. Kept here, not as the task's result, so that dropping it
        frees it at once: cancelled tasks sit in reference cycles until the garbage collector runs."""
        self.size = 0  # response bytes once finished
        self.timing = RequestTiming()  # arrival now; the latency split observed once written


class Connection:
    """The state shared by a connection's reader loop, its request tasks and its writer (one event loop)."""

    def __init__(self, limits: ConnectionLimits, memory: ResponseMemory, now: float) -> None:
        self.limits = limits
        self.memory = memory
        self.unanswered: deque[Request] = deque()  # in request order; the head is written next
        self.backlog = 0  # bytes of finished responses not yet written
        self.working = 0  # requests inside their handler now
        self.last_activity = now  # last bytes read, response written, or handler finished
        self.partial_since: float | None = None  # when reading of an incomplete frame started
        self._write_buffer = 0  # transport write buffer size when last looked at
        self.closed = False  # answers of requests still finishing are dropped
        self.refused = False  # a request was refused (CloseConnection): the ones after it do not run
        self.peak_backlog = 0  # the most response bytes held at once (brokers/memory.py trims after big ones)
        self._progress = asyncio.Event()

    # --- bounds ----------------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        """Whether to stop reading frames (too many requests unanswered, or too many bytes unwritten)."""
        return len(self.unanswered) >= self.limits.max_inflight or self.backlog > self.limits.max_queued_bytes

    @property
    def answers_waiting(self) -> bool:
        """Whether a request should wait before starting: earlier answers are piling up unwritten."""
        return self.backlog > self.limits.max_queued_bytes

    async def progress(self) -> None:
        """Wait until a response is written or a request finishes."""
        await self._progress.wait()

    def wake(self) -> None:
        """Wake whatever waits for progress (the writer ended: the connection is closing)."""
        self._signal()

    def _signal(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # --- bookkeeping -----------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.unanswered.append(request)

    def started(self, request: Request) -> None:
        request.started = True
        request.timing.start(request.api_key)
        self.working += 1

    def finished(self, request: Request, response: list[bytes | bytearray | memoryview] | None, now: float) -> None:
        """The handler returned ``response`` (None: no answer), which now waits to be written."""
        self.working -= 1
        request.timing.end()
        if self.closed:
            return
        request.response = response
        request.size = sum(len(b) for b in response) if response is not None else 0
        self.backlog += request.size
        self.peak_backlog = max(self.peak_backlog, self.backlog)
        self.last_activity = now
        self._signal()

    def written(self, request: Request, now: float) -> None:
        """The head request's response was written (or it had none): release what it held."""
        if self.unanswered and self.unanswered[0] is request:
            self.unanswered.popleft()
        self.backlog -= request.size
        request.size = 0
        request.response = None
        request.memory.release()
        request.timing.written(request.api_key)
        self.last_activity = now
        self._signal()

    def read(self, now: float, partial: bool) -> None:
        """Bytes arrived; ``partial``: a frame is incomplete after them."""
        self.last_activity = now
        if not partial:
            self.partial_since = None
        elif self.partial_since is None:
            self.partial_since = now

    def resumed(self, now: float) -> None:
        """Reading resumes after a pause the broker chose: the frame clock restarts."""
        if self.partial_since is not None:
            self.partial_since = now

    # --- timeouts --------------------------------------------------------------------------------
    def read_deadline(self, now: float) -> tuple[float, str]:
        """When to stop waiting for bytes, and why: "frame" (an incomplete frame is overdue), "idle"
        (nothing is happening), or "recheck" (a request is being handled: look again then)."""
        if self.partial_since is not None:
            return self.partial_since + self.limits.frame_timeout_s, "frame"
        if self.working:
            return now + min(self.limits.idle_s, RECHECK_S), "recheck"
        return self.last_activity + self.limits.idle_s, "idle"

    def wait_deadline(self, now: float) -> float:
        """While reading is paused: when to look whether the client still takes the answers."""
        if self.working:
            return now + min(self.limits.idle_s, RECHECK_S)
        return self.last_activity + self.limits.idle_s

    def idle(self, now: float, write_buffer: int) -> bool:
        """Whether the connection has been idle too long: no request handled, and neither reads nor writes
        (a change in the transport's write buffer counts as a write) for ``idle_s``."""
        if write_buffer != self._write_buffer:
            self._write_buffer = write_buffer
            self.last_activity = now
        return not self.working and now - self.last_activity >= self.limits.idle_s

    # --- closing ---------------------------------------------------------------------------------
    def close(self, cancel_started: frozenset[int]) -> list[asyncio.Task[None]]:
        """Drop every unwritten answer and release what it held; cancel the requests that did not start and
        those that started but only read (``cancel_started``: their API keys). Returns the tasks left
        running (their effects must complete, as Kafka completes every request it has read)."""
        left = []
        for request in self.unanswered:
            task = request.task
            if task is not None and not task.done():
                if not request.started or request.api_key in cancel_started:
                    task.cancel()
                else:
                    left.append(task)
            request.response = None
            request.memory.release()
        self.unanswered.clear()
        self.backlog = 0
        self.closed = True
        self._signal()
        return left
