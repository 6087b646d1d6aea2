"""ListPartitionReassignments (API 46): the requested moves that are not done yet.

A move is a pin (``keys.reassignment``) until the controller sees the target own the partition. Each is
answered as Kafka lists a reassignment in progress: replicas = current owner and target, adding = the
target, removing = the current owner. Pins of topics that no longer exist are left out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from metadata.api import MetadataError
from metadata.models import Reassignment

API_KEY = 46
MIN_VERSION = 0
MAX_VERSION = 0


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    broker = ctx.broker
    wanted: dict[str, set[int]] | None = None
    if request.topics is not None:
        wanted = {t.name: {int(p) for p in t.partition_indexes} for t in request.topics}
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(
            mod.ListPartitionReassignmentsResponse, throttle_time=NO_THROTTLE,
            error_code=ErrorCode.cluster_authorization_failed, error_message="Cluster authorization failed.", topics=(),
        )
    try:
        found = await broker.store.list(broker.keys.reassignments_prefix())
    except MetadataError as e:
        return make(
            mod.ListPartitionReassignmentsResponse, throttle_time=NO_THROTTLE,
            error_code=ErrorCode.unknown_server_error, error_message=f"metadata store: {e}", topics=(),
        )  # fmt: skip
    ongoing: dict[str, list[Any]] = defaultdict(list)
    for item in found:
        try:
            pin = Reassignment.decode(item.value)
        except (ValueError, KeyError, TypeError):
            continue
        record = broker.topics.by_id(pin.topic_id)
        if record is None or pin.partition >= record.partitions:
            continue
        if wanted is not None and pin.partition not in wanted.get(record.name, set()):
            continue
        leader = broker.routing.leader(pin.topic_id, pin.partition)
        owner = None if leader is None or leader.node_id < 0 else leader.node_id
        if owner == pin.target:
            continue  # done; the controller clears the pin
        current = () if owner is None else (owner,)
        entry = make(
            mod.OngoingPartitionReassignment, partition_index=pin.partition, replicas=(*current, pin.target),
            adding_replicas=(pin.target,), removing_replicas=current,
        )  # fmt: skip
        ongoing[record.name].append(entry)
    topics = tuple(
        make(mod.OngoingTopicReassignment, name=name, partitions=tuple(sorted(parts, key=lambda p: p.partition_index)))
        for name, parts in sorted(ongoing.items())
    )
    return make(
        mod.ListPartitionReassignmentsResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
        error_message=None, topics=topics,
    )  # fmt: skip
