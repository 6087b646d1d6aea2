"""Where the broker's memory goes: per-partition and per-component gauges, taken at each scrape.

``tidelog_partition_memory_bytes{topic,partition}``: what one owned partition log holds (tail cache, entries
not yet durable, idempotent-producer state; brokers/log/types.py ``LogMemory``). It is bounded by
``tail.cache.bytes.per.partition`` plus the in-flight entries, and drops to 0 when the partition is deleted
or moves away.

``tidelog_broker_memory_bytes{component}``: the same summed over partitions (``tail_cache``, ``inflight``,
``producer_state``), the fetch responses held (``fetch_responses``, bounded by
``fetch.response.memory.bytes``), the tiered block cache (``tiered_block_cache``, bounded by
``tiered.block.cache.bytes``) and glibc's heap (``heap_in_use``, ``heap_free``: free chunks kept mapped, what
the idle trimmer gives back) as of the idle trimmer's last check (reading it walks the heap under its locks,
so a scrape never does; absent until the broker has been busy and gone idle once). Resident memory itself is
``process_resident_memory_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from brokers import memory as heap_memory
from brokers.log.types import LogMemory

if TYPE_CHECKING:
    from brokers.broker import Broker


@dataclass(frozen=True, slots=True)
class PartitionMemory:
    topic: str
    partition: int
    memory: LogMemory


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """One snapshot: per partition, and per component (bytes)."""

    partitions: tuple[PartitionMemory, ...]
    components: tuple[tuple[str, int], ...]


def collect_memory(
    broker: Broker,
    fetch_responses: Callable[[], int] = lambda: 0,
    heap: Callable[[], heap_memory.HeapFigures | None] = lambda: None,
) -> MemoryFigures:
    """The broker's memory figures now (no I/O, no heap walk: ``heap`` gives the last figures taken)."""
    parts: list[PartitionMemory] = []
    for plog in broker.logs.all():
        topic = broker.topics.by_id(plog.topic_id)
        parts.append(PartitionMemory(plog.topic_id if topic is None else topic.name, plog.partition, plog.memory()))
    parts.sort(key=lambda p: (p.topic, p.partition))
    components = [
        ("tail_cache", sum(p.memory.tail_cache for p in parts)),
        ("inflight", sum(p.memory.inflight for p in parts)),
        ("producer_state", sum(p.memory.producer_state for p in parts)),
        ("fetch_responses", fetch_responses()),
        ("tiered_block_cache", 0 if broker.tiering is None else broker.tiering.cache.size),
    ]
    figures = heap()
    if figures is not None:
        components += [("heap_in_use", figures.in_use), ("heap_free", figures.free)]
    return MemoryFigures(tuple(parts), tuple(components))


def memory_families(figures: MemoryFigures) -> list[Metric]:
    partition = GaugeMetricFamily(
        "tidelog_partition_memory_bytes",
        "Bytes an owned partition log holds in memory: tail cache, entries not yet durable, producer state.",
        labels=["topic", "partition"],
    )  # fmt: skip
    for p in figures.partitions:
        partition.add_metric([p.topic, str(p.partition)], p.memory.total)
    broker = GaugeMetricFamily(
        "tidelog_broker_memory_bytes",
        "Bytes of the broker's memory by component (partition logs summed, fetch responses, tiered block cache, "
        "glibc heap in use and free).",
        labels=["component"],
    )  # fmt: skip
    for name, value in figures.components:
        broker.add_metric([name], value)
    return [partition, broker]


class MemoryCollector(Collector):
    """The memory gauges as a prometheus_client Collector (a fresh snapshot per scrape)."""

    def __init__(self, figures: Callable[[], MemoryFigures]) -> None:
        self._figures = figures

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        return memory_families(self._figures())
