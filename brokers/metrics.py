"""The broker's figures: a snapshot of its partition logs, offloader and groups, for Prometheus and as JSON.

``collect(broker)`` takes the snapshot (no I/O: every figure is already in memory); ``snapshot_families`` (the
prometheus_client Collector ``SnapshotCollector``), ``render_prometheus`` and ``offload_status`` are pure
functions of it. The exposition itself is prometheus_client's; the series names predate it and are kept.
Per-partition series carry ``topic`` and ``partition`` labels, broker-wide totals have their own
``tidelog_broker_*`` names (so ``sum()`` over a family never counts anything twice), counters end in ``_total``.
The offload figures are Tidelog's counterparts of Kafka's tiered-storage metrics (KIP-963: RemoteCopyLagBytes,
RemoteCopyLagSegments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from brokers.observability.groups import GroupLag, GroupOffsetFigures
from metadata.disk_reserve import refusing
from storage.offload.offloader import OffloadStats

if TYPE_CHECKING:
    from brokers.broker import Broker

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of the Prometheus text exposition format."""


@dataclass(frozen=True, slots=True)
class PartitionFigures:
    """One owned partition: its offsets, its tiers and what of it waits for offload."""

    topic: str
    partition: int
    log_start_offset: int = 0
    high_watermark: int = 0
    ledgers: int = 0
    """Ledgers still read from the bookies (the open one included)."""
    segments: int = 0
    tiered_bytes: int = 0
    """Bytes of the partition's segment objects."""
    backlog_ledgers: int = 0
    """Closed ledgers not yet offloaded."""
    backlog_bytes: int = 0
    lag_seconds: float = 0.0
    """How long the oldest closed ledger has waited for offload."""
    last_error: str | None = None
    """The partition's latest offload failure; None once an offload succeeds."""
    owner_bytes: int = 0
    """Confirmed entries of the partition kept in memory for offload (``offload.owner.bytes.max``)."""


@dataclass(frozen=True, slots=True)
class BrokerFigures:
    """A snapshot of one broker's figures."""

    node_id: int
    tiering: bool = False
    """Whether the broker has an object store."""
    offload_enabled: bool = False
    partitions: tuple[PartitionFigures, ...] = ()
    held_bytes: int = 0
    """Bytes of closed ledgers waiting for offload, broker-wide: what backpressure compares with the mark."""
    high_water_bytes: int = -1
    """``offload.bookie.high.water.bytes`` (-1: off; it is also off when offload is)."""
    stats: OffloadStats = field(default_factory=OffloadStats)
    owner_bytes: int = 0
    """Confirmed entries kept in memory for offload, broker-wide."""
    disk_refusing: tuple[str, ...] = ()
    """Data directories of this process refusing writes for a full or failing disk (journal, metadata)."""
    tiered_read_failures: int = 0
    """Segment reads that ended in KAFKA_STORAGE_ERROR for the client (object store down or damaged data)."""
    groups: tuple[GroupOffsetFigures, ...] = ()
    """Committed offsets of the consumer groups this broker coordinates."""

    @property
    def backlog_ledgers(self) -> int:
        return sum(p.backlog_ledgers for p in self.partitions)

    @property
    def lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.partitions), default=0.0)

    @property
    def failing_partitions(self) -> int:
        return sum(1 for p in self.partitions if p.last_error is not None)


def collect(broker: Broker, lag: GroupLag | None = None) -> BrokerFigures:
    """The broker's figures now (owned partitions sorted by topic name and partition); with ``lag``, the
    committed offsets of the groups this broker coordinates too."""
    tiering = broker.tiering
    offloading = tiering is not None and tiering.offload  # with offload off, nothing waits: no lag
    parts: list[PartitionFigures] = []
    for plog in broker.logs.all():
        topic = broker.topics.by_id(plog.topic_id)
        segments = plog.segments
        backlog = None if tiering is None else tiering.offloader.backlog(plog.topic_id, plog.partition)
        key = (plog.topic_id, plog.partition)
        parts.append(
            PartitionFigures(
                topic=plog.topic_id if topic is None else topic.name,
                partition=plog.partition,
                log_start_offset=plog.log_start_offset,
                high_watermark=plog.high_watermark,
                ledgers=sum(1 for ref in plog.ledgers if not ref.offloaded),
                segments=len(segments),
                tiered_bytes=sum(s.size for s in segments),
                backlog_ledgers=0 if backlog is None else backlog.ledgers,
                backlog_bytes=0 if backlog is None else backlog.bytes,
                lag_seconds=backlog.oldest_age_s if backlog is not None and offloading else 0.0,
                last_error=None if backlog is None else backlog.last_error,
                owner_bytes=0 if tiering is None else tiering.offloader.owner_bytes.bytes_of(*key),
            )
        )
    parts.sort(key=lambda p: (p.topic, p.partition))
    disk = tuple(sorted(refusing()))
    groups = () if lag is None else lag.figures()
    if tiering is None:
        return BrokerFigures(broker.config.node_id, partitions=tuple(parts), disk_refusing=disk, groups=groups)
    return BrokerFigures(
        broker.config.node_id,
        disk_refusing=disk,
        tiered_read_failures=tiering.read_failures.count,
        tiering=True,
        offload_enabled=tiering.offload,
        partitions=tuple(parts),
        held_bytes=tiering.held.bytes,
        high_water_bytes=tiering.high_water_bytes,
        stats=tiering.offloader.stats(),
        owner_bytes=tiering.offloader.owner_bytes.held,
        groups=groups,
    )


# --- Prometheus exposition ----------------------------------------------------------------------------


_PARTITION_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("tidelog_offload_backlog_ledgers", "backlog_ledgers", "Closed ledgers of the partition waiting for offload."),
    ("tidelog_offload_backlog_bytes", "backlog_bytes", "Bytes of the partition's ledgers waiting for offload."),
    ("tidelog_offload_lag_seconds", "lag_seconds", "Seconds the partition's oldest closed ledger has waited."),
    ("tidelog_partition_log_start_offset", "log_start_offset", "The partition's log start offset."),
    ("tidelog_partition_high_watermark", "high_watermark", "The partition's high watermark."),
    ("tidelog_partition_ledgers", "ledgers", "Ledgers of the partition read from the bookies (open one included)."),
    ("tidelog_partition_segments", "segments", "Segments of the partition in the object store."),
    ("tidelog_partition_tiered_bytes", "tiered_bytes", "Bytes of the partition's segment objects."),
)
_PARTITION = ["topic", "partition"]
_GROUP = ["group", "topic", "partition"]


class SnapshotCollector(Collector):
    """The snapshot series of one broker (offload, partitions, consumer-group lag) as a prometheus_client
    Collector: each scrape takes a fresh ``figures()`` (brokers/admin_http.py registers one per broker, on a
    registry of its own, beside the process-wide default registry)."""

    def __init__(self, figures: Callable[[], BrokerFigures]) -> None:
        self._figures = figures

    def describe(self) -> Iterable[Metric]:
        return ()  # names are not checked against other collectors: this one lives on a registry of its own

    def collect(self) -> Iterable[Metric]:
        return snapshot_families(self._figures())


def snapshot_families(figures: BrokerFigures) -> list[Metric]:
    """The metric families of one snapshot."""
    parts = figures.partitions
    stats = figures.stats
    out: list[Metric] = [
        GaugeMetricFamily("tidelog_offload_enabled", "1 when closed ledgers are offloaded to the object store.",
                          value=int(figures.offload_enabled)),
    ]  # fmt: skip
    for name, attr, help_text in _PARTITION_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=_PARTITION)
        for p in parts:
            family.add_metric([p.topic, str(p.partition)], getattr(p, attr))
        out.append(family)
    failing = GaugeMetricFamily(
        "tidelog_offload_failing", "1 while the partition's latest offload attempt failed.", labels=_PARTITION
    )
    for p in parts:
        failing.add_metric([p.topic, str(p.partition)], int(p.last_error is not None))
    out.append(failing)
    high_water = figures.high_water_bytes if figures.offload_enabled else -1
    for name, gauge, help_text in (
        ("tidelog_broker_offload_backlog_ledgers", figures.backlog_ledgers,
         "Closed ledgers waiting for offload, all partitions."),
        ("tidelog_broker_offload_backlog_bytes", figures.held_bytes,
         "Bytes of closed ledgers waiting for offload, all partitions (what backpressure counts)."),
        ("tidelog_broker_offload_lag_seconds", figures.lag_seconds,
         "Seconds the oldest closed ledger of any partition has waited for offload."),
        ("tidelog_broker_offload_failing_partitions", figures.failing_partitions,
         "Partitions whose latest offload attempt failed."),
        ("tidelog_offload_owner_bytes", figures.owner_bytes,
         "Confirmed entries kept in memory so offload need not read them back from the bookies."),
        ("tidelog_offload_bookie_high_water_bytes", high_water,
         "Backlog bytes above which produce is refused with NOT_ENOUGH_REPLICAS (-1: off)."),
    ):  # fmt: skip
        out.append(GaugeMetricFamily(name, help_text, value=gauge))
    for name, count, help_text in (
        ("tidelog_offload_segments", stats.segments, "Segments offloaded by this broker process."),
        ("tidelog_offload_bytes", stats.bytes, "Bytes of segment objects offloaded by this broker process."),
        ("tidelog_offload_retries", stats.retries, "Offload steps retried after a retriable failure."),
        ("tidelog_offload_reuploads", stats.reuploads, "Segment objects written again (damaged or foreign)."),
        ("tidelog_offload_orphans_deleted", stats.orphans_deleted, "Orphan segment objects deleted by GC."),
        ("tidelog_offload_segments_from_owner", stats.from_owner,
         "Segments built from the entries this broker wrote (no bookie read)."),
        ("tidelog_offload_segments_from_bookies", stats.from_bookies,
         "Segments built from entries read back from the bookies (after a takeover or restart, or over budget)."),
        ("tidelog_tiered_read_failures", figures.tiered_read_failures,
         "Reads of offloaded data that failed for the client with KAFKA_STORAGE_ERROR (object store down)."),
    ):  # fmt: skip
        out.append(CounterMetricFamily(name, help_text, value=count))
    out.append(GaugeMetricFamily(
        "tidelog_storage_disk_full",
        "1 while a data directory of this process refuses writes for a full or failing disk (produce gets "
        "KAFKA_STORAGE_ERROR; deletes still work).",
        value=int(bool(figures.disk_refusing)),
    ))  # fmt: skip
    out += group_families(figures.groups)
    return out


def group_families(groups: Sequence[GroupOffsetFigures]) -> list[Metric]:
    """Committed offsets and lag of the consumer groups this broker coordinates (what Burrow and
    kafka-lag-exporter chart). Lag is given where the partition's high watermark is known."""
    committed = GaugeMetricFamily(
        "tidelog_consumer_group_committed_offset",
        "The group's committed offset for the partition (groups coordinated by this broker).", labels=_GROUP,
    )  # fmt: skip
    lag = GaugeMetricFamily(
        "tidelog_consumer_group_lag",
        "High watermark minus committed offset (0 at least), for groups coordinated by this broker and partitions "
        "whose high watermark it knows (owned here, or read from the owner within the last minute).",
        labels=_GROUP,
    )  # fmt: skip
    for g in groups:
        labels = [g.group, g.topic, str(g.partition)]
        committed.add_metric(labels, g.committed)
        if g.high_watermark is not None:
            lag.add_metric(labels, max(0, g.high_watermark - g.committed))
    return [committed, lag]


def render_prometheus(figures: BrokerFigures) -> str:
    """The snapshot's series alone, in the Prometheus text format (0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: figures))
    return generate_latest(registry).decode()


def exposition(snapshot: CollectorRegistry) -> bytes:
    """What ``/metrics`` answers: the process-wide registry (requests, traffic, storage, cluster, process) then
    the broker's snapshot registry."""
    return generate_latest(REGISTRY) + generate_latest(snapshot)


# --- offload status (JSON) -------------------------------------------------------------------------


def offload_status(figures: BrokerFigures, topic: str | None = None) -> dict[str, Any]:
    """The offload figures as a JSON-ready dict: broker totals and one entry per partition (of ``topic``
    only, when given; the totals stay broker-wide)."""
    stats = figures.stats
    return {
        "node_id": figures.node_id,
        "object_store": figures.tiering,
        "offload_enabled": figures.offload_enabled,
        "totals": {
            "ledgers_waiting": figures.backlog_ledgers,
            "bytes_waiting": figures.held_bytes,
            "oldest_age_s": figures.lag_seconds,
            "failing_partitions": figures.failing_partitions,
            "high_water_bytes": figures.high_water_bytes if figures.offload_enabled else -1,
            "segments_offloaded": stats.segments,
            "bytes_offloaded": stats.bytes,
            "retries": stats.retries,
            "reuploads": stats.reuploads,
            "orphans_deleted": stats.orphans_deleted,
            "segments_from_owner": stats.from_owner,
            "segments_from_bookies": stats.from_bookies,
            "owner_bytes": figures.owner_bytes,
        },
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "ledgers_waiting": p.backlog_ledgers,
                "bytes_waiting": p.backlog_bytes,
                "oldest_age_s": p.lag_seconds,
                "last_error": p.last_error,
                "owner_bytes": p.owner_bytes,
                "segments": p.segments,
                "offloaded_bytes": p.tiered_bytes,
                "ledgers": p.ledgers,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
            }
            for p in figures.partitions
            if topic is None or p.topic == topic
        ],
    }
