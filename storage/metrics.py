"""The storage tier's Prometheus series: ledger adds, bookie journal fsyncs, object-store requests.

Why here and not in brokers/: storage must not import brokers (tests/unit/test_dependency_rule.py), yet these
figures are measured inside storage code (the ledger client, the bookie's journal thread, the object-store
wrapper). They live on prometheus_client's default registry, the one registry of the process: a broker's
``/metrics`` (brokers/admin_http.py) and a bookie's (``tidelog bookie --admin HOST:PORT``, ``serve_metrics``)
both expose it whole. Label values are bounded: operations are a fixed set, errors are exception class names
of the ObjectStore seam.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics, start_http_server

# No ``*_created`` twin of every counter and histogram: half the series, the same charts.
disable_created_metrics()  # type: ignore[no-untyped-call]
P = ParamSpec("P")
R = TypeVar("R")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: from a local fsync (sub-millisecond) to an object-store request retried for tens of seconds."""

LEDGER_ADD_SECONDS = Histogram(
    "tidelog_ledger_add_seconds",
    "Time from sending a ledger entry to its write set until an ack quorum of bookies has it (BookKeeper's "
    "client ADD_ENTRY latency).",
    buckets=LATENCY_BUCKETS,
)
LEDGER_ADD_BYTES = Counter("tidelog_ledger_add_bytes", "Bytes of ledger entries sent to the bookies (once per entry).")
JOURNAL_FSYNC_SECONDS = Histogram(
    "tidelog_bookie_journal_fsync_seconds",
    "Duration of one bookie journal write batch's fdatasync (BookKeeper's journal sync latency).",
    buckets=LATENCY_BUCKETS,
)
OBJECT_STORE_SECONDS = Histogram(
    "tidelog_object_store_request_seconds",
    "Duration of object-store requests by operation (put, get, get_range, head, list, delete), failures included.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
OBJECT_STORE_BYTES = Counter(
    "tidelog_object_store_bytes",
    "Object bytes moved by successful requests: written by put, read by get and get_range.",
    ["operation"],
)
OBJECT_STORE_ERRORS = Counter(
    "tidelog_object_store_errors",
    "Object-store requests that failed, by operation and error (ObjectStoreUnavailable: retriable; "
    "ObjectExists and ObjectNotFound are counted too, as outcomes the caller handles).",
    ["operation", "error"],
)
_KNOWN_ERRORS = frozenset(
    {"ObjectStoreError", "ObjectStoreUnavailable", "ObjectNotFound", "ObjectExists", "ValueError", "TypeError"}
)


Method = Callable[P, Coroutine[Any, Any, R]]


def object_store_request(operation: str) -> Callable[[Method[P, R]], Method[P, R]]:
    """Decorate an ObjectStore method: time it, count its bytes (the ``data`` argument of put, the bytes
    returned by get/get_range) and its errors, under ``operation``."""
    seconds = OBJECT_STORE_SECONDS.labels(operation)
    moved = OBJECT_STORE_BYTES.labels(operation)

    def decorate(method: Method[P, R]) -> Method[P, R]:
        @functools.wraps(method)
        async def metered(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                result = await method(*args, **kwargs)
            except Exception as exc:
                name = type(exc).__name__
                OBJECT_STORE_ERRORS.labels(operation, name if name in _KNOWN_ERRORS else "other").inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
            if operation == "put_stream":
                size = result if isinstance(result, int) else 0
            else:
                size = _size(result) if operation != "put" else _size(args[2] if len(args) > 2 else kwargs.get("data"))
            if size:
                moved.inc(size)
            return result

        return metered

    return decorate


def _size(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    return 0


def serve_metrics(host: str, port: int) -> int:
    """Serve the process's registry at ``http://HOST:PORT/metrics`` from a daemon thread (the bookie's
    ``--admin``; a bookie has no admin HTTP server of its own). Returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound: int = server.server_port
    return bound
