"""AlterPartitionReassignments (API 45): request planned partition moves.

A partition has one owner here (the log is replicated by the bookies, not by brokers), so the first broker of
a requested replica list is the target; the rest are ignored. A move is a pin in metadata
(``keys.reassignment``, a Reassignment) that the controller honours while the target is live and clears once
the target owns the partition; a null replica list cancels a pending move (NO_REASSIGNMENT_IN_PROGRESS if
there is none, as Kafka answers). A target that is not a live broker is INVALID_REPLICA_ASSIGNMENT, as Kafka
answers for brokers that are not alive. Asking for the current owner is a success that writes nothing (and
drops a pending move elsewhere); on the embedded broker that is the only possible target.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from metadata.api import MetadataError
from metadata.models import Reassignment

API_KEY = 45
MIN_VERSION = 0
MAX_VERSION = 1


async def _alter(ctx: RequestContext, topic_id: str, partition: int, replicas: Any) -> tuple[ErrorCode, str | None]:
    broker = ctx.broker
    key = broker.keys.reassignment(topic_id, partition)
    if replicas is None:
        if not await broker.store.delete(key):
            return ErrorCode.no_reassignment_in_progress, "No reassignment in progress for this partition."
        return ErrorCode.none, None
    targets = [int(r) for r in replicas]
    if not targets:
        return ErrorCode.invalid_replica_assignment, "Empty replica list specified in partition reassignment."
    if len(set(targets)) != len(targets):
        return ErrorCode.invalid_replica_assignment, "Duplicate replica ids in partition reassignment."
    target = targets[0]
    routing = broker.routing
    if routing.endpoint(target) is None:
        message = f"The manual partition assignment includes broker {target}, which is not alive."
        return ErrorCode.invalid_replica_assignment, message
    leader = routing.leader(topic_id, partition)
    if leader is not None and leader.node_id == target:
        if await broker.store.get(key) is not None:
            await broker.store.delete(key)  # already there: a pending move elsewhere is cancelled
        return ErrorCode.none, None
    await broker.store.put(key, Reassignment(topic_id, partition, target).encode())
    return ErrorCode.none, None


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if not ctx.allowed(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(
            mod.AlterPartitionReassignmentsResponse, throttle_time=NO_THROTTLE, allow_replication_factor_change=True,
            error_code=ErrorCode.cluster_authorization_failed, error_message="Cluster authorization failed.",
            responses=(),
        )
    topics = []
    for topic in request.topics:
        record = ctx.broker.topics.get(topic.name)
        results = []
        for part in topic.partitions:
            index = int(part.partition_index)
            code: ErrorCode
            message: str | None
            if record is None or not 0 <= index < record.partitions:
                code, message = ErrorCode.unknown_topic_or_partition, "This server does not host this topic-partition."
            else:
                try:
                    code, message = await _alter(ctx, record.topic_id, index, part.replicas)
                except MetadataError as e:
                    code, message = ErrorCode.unknown_server_error, f"metadata store: {e}"
            results.append(
                make(mod.ReassignablePartitionResponse, partition_index=index, error_code=code, error_message=message)
            )
        topics.append(make(mod.ReassignableTopicResponse, name=topic.name, partitions=tuple(results)))
    return make(
        mod.AlterPartitionReassignmentsResponse, throttle_time=NO_THROTTLE, allow_replication_factor_change=True,
        error_code=ErrorCode.none, error_message=None, responses=tuple(topics),
    )  # fmt: skip
