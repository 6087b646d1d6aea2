"""Per-topic traffic, purgatory waits and connections (Kafka's BrokerTopicMetrics, DelayedOperationPurgatory
and the socket server's connection-count).

Why: bytes in/out per topic is the first chart anyone draws for a Kafka cluster, and the purgatory figures say
how many requests sit waiting on others right now (produce waiting for the bookie quorum — Kafka's acks=all
wait — and fetches long-polling for data). Called from the produce and fetch handlers and the Kafka listener.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from brokers.observability import requests
from storage.metrics import LATENCY_BUCKETS

BYTES_IN = Counter(
    "tidelog_topic_bytes_in", "Record batch bytes appended by produce requests, by topic (Kafka's BytesInPerSec).",
    ["topic"],
)  # fmt: skip
MESSAGES_IN = Counter(
    "tidelog_topic_messages_in", "Records appended by produce requests, by topic (Kafka's MessagesInPerSec).",
    ["topic"],
)  # fmt: skip
BYTES_OUT = Counter(
    "tidelog_topic_bytes_out", "Record batch bytes returned to fetch requests, by topic (Kafka's BytesOutPerSec).",
    ["topic"],
)  # fmt: skip
PURGATORY_SIZE = Gauge(
    "tidelog_purgatory_size",
    "Requests waiting on others now: produce for the bookie quorum, fetch for new data (Kafka's PurgatorySize).",
    ["operation"],
)
PURGATORY_WAIT = Histogram(
    "tidelog_purgatory_wait_seconds",
    "How long a request waited in purgatory: produce for its entries to be quorum-durable (acks=all), "
    "fetch long-polling for min.bytes until max.wait.ms.",
    ["operation"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
CONNECTIONS = Gauge("tidelog_connections", "Open Kafka client connections (Kafka's connection-count).")
CONNECTIONS_ACCEPTED = Counter(
    "tidelog_connections_accepted", "Kafka client connections accepted (Kafka's connection-creation-total)."
)


_TopicSeries = tuple[Any, Any, Any]
_by_topic: dict[str, _TopicSeries] = {}
"""The children of each topic (labels() costs a lock and a dict lookup per call); as many as there are topics
with traffic, like prometheus_client's own children."""


def _topic(topic: str) -> _TopicSeries:
    series = _by_topic.get(topic)
    if series is None:
        series = _by_topic[topic] = (BYTES_IN.labels(topic), MESSAGES_IN.labels(topic), BYTES_OUT.labels(topic))
    return series


def produced(topic: str, size: int, records: int) -> None:
    """``records`` records in ``size`` bytes of batches were appended to a partition of ``topic``."""
    bytes_in, messages_in, _out = _topic(topic)
    bytes_in.inc(size)
    messages_in.inc(records)


def fetched(topic: str, size: int) -> None:
    """``size`` bytes of batches of ``topic`` go back in a fetch response."""
    _topic(topic)[2].inc(size)


@contextlib.contextmanager
def purgatory(operation: str) -> Iterator[None]:
    """The running request waits on others ("produce" or "fetch"): counted in purgatory while inside, then
    observed as a purgatory wait and as the request's remote time."""
    size, wait = _PURGATORY[operation]
    size.inc()
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        size.dec()
        wait.observe(seconds)
        requests.waited(seconds)


_PURGATORY = {op: (PURGATORY_SIZE.labels(op), PURGATORY_WAIT.labels(op)) for op in ("produce", "fetch")}


def opened() -> None:
    """A Kafka connection was accepted."""
    CONNECTIONS_ACCEPTED.inc()
    CONNECTIONS.inc()


def closed() -> None:
    """A Kafka connection ended (called once per ``opened``)."""
    CONNECTIONS.dec()
