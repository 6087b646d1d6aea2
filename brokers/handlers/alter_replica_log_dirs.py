"""AlterReplicaLogDirs (API 34): a move between log dirs that Tidelog cannot make, answered as Kafka would.

This broker's "log dirs" are its storage tiers (brokers/handlers/describe_log_dirs.py): every partition spans
both, and bytes move from the bookies to the object store by offload, never on request. So no move is
started, and each partition gets Kafka's answer (``ReplicaManager.alterReplicaLogDirs``) for its case:

* a path that is not one of this broker's log dirs: LOG_DIR_NOT_FOUND (Kafka checks the directory first);
* an unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION;
* a partition this broker does not host (does not own): REPLICA_NOT_AVAILABLE, as Kafka answers there;
* a partition it hosts, to either tier: KAFKA_STORAGE_ERROR, Kafka's error for a directory that cannot take
  the replica. ``kafka-reassign-partitions`` then reports the move as failed instead of waiting for a
  future replica that never appears.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.describe_log_dirs import log_dirs
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType

API_KEY = 34
MIN_VERSION = 1  # v0 was removed by Kafka 4 (KIP-896)
MAX_VERSION = 2


def _answer(ctx: RequestContext, path: str, name: str, partition: int) -> ErrorCode:
    broker = ctx.broker
    if path not in log_dirs(broker):
        return ErrorCode.log_dir_not_found
    record = broker.topics.get(name)
    if record is None or not 0 <= partition < record.partitions:
        return ErrorCode.unknown_topic_or_partition
    if not broker.routing.serving(record.topic_id, partition):
        return ErrorCode.replica_not_available
    return ErrorCode.kafka_storage_error


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    by_topic: dict[str, list[Any]] = {}
    allowed = ctx.allowed(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME)
    for d in request.dirs:
        for t in d.topics:
            results = by_topic.setdefault(t.name, [])
            for p in t.partitions:
                code = _answer(ctx, d.path, t.name, int(p)) if allowed else ErrorCode.cluster_authorization_failed
                results.append(make(mod.AlterReplicaLogDirPartitionResult, partition_index=p, error_code=code))
    topics = tuple(
        make(mod.AlterReplicaLogDirTopicResult, topic_name=name, partitions=tuple(parts))
        for name, parts in by_topic.items()
    )
    return make(mod.AlterReplicaLogDirsResponse, throttle_time=NO_THROTTLE, results=topics)
