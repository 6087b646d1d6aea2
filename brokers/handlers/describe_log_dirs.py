"""DescribeLogDirs (API 35): where this broker's partitions keep their bytes, one "log dir" per storage tier.

A Tidelog broker has no log directories of its own: a partition's recent data is in ledgers on the bookies,
its older data in segments in the object store. Tools and UIs (``kafka-log-dirs``, AKHQ, Kafka UI,
Conduktor) sum ``partition_size`` over a broker's log dirs to show where the bytes are, so each tier is one
log dir (docs/operations.md, "DescribeLogDirs"):

* ``bookies`` (BOOKIE_DIR): the bytes of the partition still only on the bookies, its open ledger and the
  closed ledgers waiting for offload (``PartitionLog.unoffloaded_bytes``); ``offset_lag`` is the log end
  offset minus the high watermark (entries written but not yet confirmed by an ack quorum);
* the object store's URL (``s3://bucket/prefix``, ``file:///abs/dir``; any query string, which may hold
  endpoint options, left out): the bytes of the partition's segment objects; ``offset_lag`` 0.

Both list every partition this broker serves (in a cluster, the partitions it owns); a partition whose log
is not loaded (embedded broker: never written, or in the seconds after a start before the background load
reaches it) is listed with 0 bytes. A broker without an object store has only the ``bookies`` dir. From v4,
``total_bytes``/``usable_bytes`` are the volume of the embedded broker's data directory (where its bookie
journal lives) and of a local-directory object store; -1 (unknown, as Kafka's schema allows) for remote
bookies and S3. Nothing is ever a "future" log (AlterReplicaLogDirs moves nothing). The answer is
computed from memory plus, for the volumes, one statvfs each.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType

if TYPE_CHECKING:
    from brokers.broker import Broker
    from brokers.log.partition import PartitionLog
    from metadata.models import TopicRecord

API_KEY = 35
MIN_VERSION = 1  # v0 was removed by Kafka 4 (KIP-896)
MAX_VERSION = 5
BOOKIE_DIR = "bookies"
UNKNOWN = -1


def object_store_dir(broker: Broker) -> str | None:
    """The object store's log dir name, or None when the broker has none."""
    if broker.tiering is None:
        return None
    url = broker.config.object_store or str(Path(broker.config.data_dir) / "objects")
    if "://" not in url:
        return Path(os.path.abspath(url)).as_uri()
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # no credentials, should a URL carry any
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def log_dirs(broker: Broker) -> tuple[str, ...]:
    """This broker's log dirs, bookie tier first."""
    store = object_store_dir(broker)
    return (BOOKIE_DIR,) if store is None else (BOOKIE_DIR, store)


def _local_path(broker: Broker, log_dir: str) -> str | None:
    """The local directory whose volume a log dir lives on, if it is local to this process."""
    if log_dir == BOOKIE_DIR:
        return broker.config.data_dir if broker.logs.take_on_first_use else None  # embedded: bookies under DATA
    parts = urlsplit(log_dir)
    return parts.path if parts.scheme == "file" else None


async def _volume(path: str | None) -> tuple[int, int]:
    if path is None:
        return UNKNOWN, UNKNOWN
    try:
        usage = await asyncio.to_thread(shutil.disk_usage, path)
    except OSError:
        return UNKNOWN, UNKNOWN
    return usage.total, usage.free


async def _bookie_bytes(broker: Broker, plog: PartitionLog) -> int:
    size = plog.unoffloaded_bytes
    if broker.tiering is None:  # no offload backlog is kept: ask the ledgers' metadata for closed ones
        for ref in plog.ledgers:
            if ref.closed and not ref.offloaded:
                info = await broker.ledgers.ledger_info(ref.ledger_id)
                size += 0 if info is None else info.length
    return size


def _served(broker: Broker, request: Any) -> Iterator[tuple[str, str, int]]:
    """(topic name, topic id, partition) of every requested partition this broker serves, sorted."""
    routing = broker.routing
    if request.topics is None:
        wanted: list[tuple[TopicRecord, Sequence[int]]] = [
            (t, range(t.partitions)) for t in sorted(broker.topics.all(), key=lambda t: t.name)
        ]
    else:
        wanted = []
        for asked in request.topics:
            record = broker.topics.get(asked.topic)
            if record is not None:
                wanted.append((record, sorted({int(p) for p in asked.partitions if 0 <= p < record.partitions})))
    for record, partitions in wanted:
        for p in partitions:
            if routing.serving(record.topic_id, p):
                yield record.name, record.topic_id, p


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(mod.DescribeLogDirsResponse, throttle_time=NO_THROTTLE,
                    error_code=ErrorCode.cluster_authorization_failed, results=())
    broker = ctx.broker
    bookie: dict[str, list[Any]] = {}
    tiered: dict[str, list[Any]] = {}
    for name, topic_id, p in _served(broker, request):
        plog = broker.logs.loaded(topic_id, p)
        lag = 0 if plog is None else max(plog.log_end_offset - plog.high_watermark, 0)
        on_bookies = 0 if plog is None else await _bookie_bytes(broker, plog)
        in_store = 0 if plog is None else sum(s.size for s in plog.segments)
        bookie.setdefault(name, []).append(
            make(mod.DescribeLogDirsPartition, partition_index=p, partition_size=on_bookies, offset_lag=lag,
                 is_future_key=False)
        )  # fmt: skip
        tiered.setdefault(name, []).append(
            make(mod.DescribeLogDirsPartition, partition_index=p, partition_size=in_store, offset_lag=0,
                 is_future_key=False)
        )  # fmt: skip
    results = []
    for log_dir, by_topic in zip(log_dirs(broker), (bookie, tiered), strict=False):
        total, usable = await _volume(_local_path(broker, log_dir))
        topics = tuple(make(mod.DescribeLogDirsTopic, name=n, partitions=tuple(ps)) for n, ps in by_topic.items())
        results.append(
            make(mod.DescribeLogDirsResult, error_code=ErrorCode.none, log_dir=log_dir, topics=topics,
                 total_bytes=total, usable_bytes=usable, is_cordoned=False)
        )  # fmt: skip
    return make(
        mod.DescribeLogDirsResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none, results=tuple(results)
    )
