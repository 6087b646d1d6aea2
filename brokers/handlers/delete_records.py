"""DeleteRecords (21): move partitions' log start offsets up; whole ledgers and segments below go.

As in Kafka: offset -1 means the high watermark; an offset past it (or another negative one) is
OFFSET_OUT_OF_RANGE; internal topics answer INVALID_TOPIC_EXCEPTION and topics whose cleanup.policy lacks
``delete`` answer POLICY_VIOLATION. ``low_watermark`` is the log start offset afterwards.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.log.partition import LogError
from brokers.security.acl import AclOperation, ResourceType
from brokers.topics import INTERNAL_TOPICS

API_KEY = 21
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    for t in request.topics:
        topic = broker.topics.get(t.name)
        denied = not ctx.allowed(AclOperation.DELETE, ResourceType.TOPIC, t.name)
        parts = []
        for p in t.partitions:
            code, low = ErrorCode.none, -1
            policy = broker.dynamic.topic_configs(topic.configs if topic else {})["cleanup.policy"]  # or the broker's
            if denied:
                code = ErrorCode.topic_authorization_failed
            elif topic is None or not 0 <= p.partition_index < topic.partitions:
                code = ErrorCode.unknown_topic_or_partition
            elif t.name in INTERNAL_TOPICS:
                code = ErrorCode.invalid_topic_exception
            elif "delete" not in policy:
                code = ErrorCode.policy_violation
            else:
                try:
                    plog = await broker.serving_log(topic.topic_id, p.partition_index)
                    low = await plog.delete_records(int(p.offset))
                except LogError as e:
                    code = e.code
            parts.append(
                make(mod.DeleteRecordsPartitionResult, partition_index=p.partition_index, low_watermark=low,
                     error_code=code)
            )  # fmt: skip
        topics.append(make(mod.DeleteRecordsTopicResult, name=t.name, partitions=tuple(parts)))
    return make(mod.DeleteRecordsResponse, throttle_time=NO_THROTTLE, topics=tuple(topics))
