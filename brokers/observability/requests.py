"""Per-API request figures, as Kafka's RequestMetrics split them (kafka.network:type=RequestMetrics).

Why: a slow produce is either waiting its turn on the connection (queue), being handled on the event loop
(local), waiting for the bookies or a long poll (remote), or waiting to be written back; each has a different
cure. brokers/connection.py stamps a ``RequestTiming`` at arrival, start and end of handling and when the
answer is written; handlers add the time they wait on bookies or for new data with ``waited()`` (the timing
of the running request is found through a context variable set by brokers/server.py).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from kio.schema.errors import ErrorCode
from kio.schema.index import api_key_map
from prometheus_client import Counter, Histogram

from storage.metrics import LATENCY_BUCKETS

UNKNOWN_API = "Unknown"
"""The label of API keys Tidelog does not know (bounded: one bucket for all of them)."""

REQUESTS = Counter("tidelog_requests", "Requests whose handling started, by API (Kafka's RequestsPerSec).", ["request"])
ERRORS = Counter(
    "tidelog_request_errors",
    "Error codes in responses, by API and error name, one per top-level or per-partition error other than "
    "NONE (Kafka's ErrorsPerSec).",
    ["request", "error"],
)
TOTAL_TIME = Histogram(
    "tidelog_request_total_time_seconds",
    "From a request frame's arrival to its response written to the socket (Kafka's TotalTimeMs).",
    ["request"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
QUEUE_TIME = Histogram(
    "tidelog_request_queue_time_seconds",
    "From arrival to the start of handling: waiting for earlier requests on the connection or for room "
    "(Kafka's RequestQueueTimeMs).",
    ["request"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
LOCAL_TIME = Histogram(
    "tidelog_request_local_time_seconds",
    "Time in the handler minus its remote waits (Kafka's LocalTimeMs).",
    ["request"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
REMOTE_TIME = Histogram(
    "tidelog_request_remote_time_seconds",
    "Time the handler waited on others: the bookie quorum for produce, new data for a fetch long poll "
    "(Kafka's RemoteTimeMs).",
    ["request"], buckets=LATENCY_BUCKETS,
)  # fmt: skip


@cache
def api_name(api_key: int) -> str:
    """Kafka's name of an API ("ListOffsets"), or UNKNOWN_API."""
    snake = api_key_map.get(api_key)
    if snake is None:
        return UNKNOWN_API
    return "".join(word.capitalize() for word in snake.split("_"))


class RequestTiming:
    """The instants of one request, monotonic seconds (time.perf_counter)."""

    __slots__ = ("arrived", "began", "ended", "remote")

    def __init__(self) -> None:
        self.arrived = time.perf_counter()
        self.began = 0.0
        self.ended = 0.0
        self.remote = 0.0

    def start(self, api_key: int) -> None:
        """Handling starts (the handler is about to be called)."""
        self.began = time.perf_counter()
        _series(api_key)[0].inc()

    def end(self) -> None:
        self.ended = time.perf_counter()

    def written(self, api_key: int) -> None:
        """The answer was written (or the request needed none): observe the split. Requests whose handling
        never started or ended (the connection closed first) are not observed."""
        if not self.began or not self.ended:
            return
        now = time.perf_counter()
        _count, total, queue, local, remote = _series(api_key)
        total.observe(now - self.arrived)
        queue.observe(self.began - self.arrived)
        remote.observe(self.remote)
        local.observe(max(0.0, self.ended - self.began - self.remote))


@cache
def _series(api_key: int) -> tuple[Any, Any, Any, Any, Any]:
    """The children of one API (labels() costs a lock and a dict lookup per call; a request takes five)."""
    name = api_name(api_key)
    return (REQUESTS.labels(name), TOTAL_TIME.labels(name), QUEUE_TIME.labels(name), LOCAL_TIME.labels(name),
            REMOTE_TIME.labels(name))  # fmt: skip


current: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar("request_timing", default=None)
"""The timing of the request the running task handles (set by brokers/server.py in the request's task)."""


def waited(seconds: float) -> None:
    """The running request waited ``seconds`` on others (bookies, a long poll): counted as remote time."""
    timing = current.get()
    if timing is not None:
        timing.remote += seconds


def count_errors(api_key: int, response: Any) -> None:
    """Count every error code other than NONE in a kio response (top-level and nested per topic/partition)."""
    found: list[int] = []
    _collect_errors(response, found)
    if found:
        name = api_name(api_key)
        for code in found:
            ERRORS.labels(name, _error_name(code)).inc()


def _collect_errors(entity: Any, found: list[int]) -> None:
    cls = type(entity)
    codes, nested = _layout(cls)  # type: ignore[arg-type]  # classes are hashable
    for name in codes:
        code = getattr(entity, name)
        if code:
            found.append(int(code))
    for name in nested:
        value = getattr(entity, name)
        if isinstance(value, tuple):
            for item in value:
                if is_dataclass(item):
                    _collect_errors(item, found)
        elif is_dataclass(value):
            _collect_errors(value, found)


@cache
def _layout(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(error code fields, fields holding nested response entities) of a kio response class. Entities are the
    classes of kio's ``...response`` modules; records, strings and numbers are never walked."""
    if not is_dataclass(cls):
        return (), ()
    codes: list[str] = []
    nested: list[str] = []
    for f in fields(cls):
        if f.name == "error_code":
            codes.append(f.name)
        elif ".response." in str(f.type):
            nested.append(f.name)
    return tuple(codes), tuple(nested)


@cache
def _error_name(code: int) -> str:
    try:
        return ErrorCode(code).name.upper()
    except ValueError:
        return "UNKNOWN"
