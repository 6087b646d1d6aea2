"""WriteTxnMarkers (27): a transaction coordinator on another broker ends a transaction on partitions this broker
leads — a thin shell over ``brokers.txn_markers.write_markers`` (each marker answered once durable)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.txn_markers import write_markers

API_KEY = 27
MIN_VERSION = 1
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    results = []
    for marker in request.markers:
        partitions = [(t.name, int(p)) for t in marker.topics for p in t.partition_indexes]
        if not ctx.allowed(AclOperation.CLUSTER_ACTION, ResourceType.CLUSTER, CLUSTER_NAME):  # brokers only
            errors = dict.fromkeys(partitions, ErrorCode.cluster_authorization_failed)
        else:
            errors = await write_markers(
                ctx.broker, marker.producer_id, marker.producer_epoch, marker.transaction_result,
                marker.coordinator_epoch, partitions,
            )  # fmt: skip
        topics = [
            make(
                mod.WritableTxnMarkerTopicResult,
                name=t.name,
                partitions=tuple(
                    make(mod.WritableTxnMarkerPartitionResult, partition_index=p, error_code=errors[(t.name, int(p))])
                    for p in t.partition_indexes
                ),
            )
            for t in marker.topics
        ]
        results.append(make(mod.WritableTxnMarkerResult, producer_id=marker.producer_id, topics=tuple(topics)))
    return make(mod.WriteTxnMarkersResponse, markers=tuple(results))
