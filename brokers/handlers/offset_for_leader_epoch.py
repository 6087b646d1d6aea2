"""OffsetForLeaderEpoch (23): where a leader epoch ends, from the partition's epoch history.

Consumers send it after a leader change to check that the records they consumed (stamped with the epoch
they were written in) are still in the log: the answer for epoch E is the start offset of the first later
epoch (the log end offset when E is the current one) and the largest known epoch not above E. A consumer
whose position is past that end offset has seen records that are gone (truncation). Tidelog never
truncates acknowledged records, so the answers only confirm; they must still be right, or a client resets.

The history is a partition's (epoch, first offset) pairs (metadata/models.py ``PartitionState.epochs``),
added at every load or takeover. Versions 2-4, as Kafka 4 (v0-1 were removed by KIP-896).
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.leadership import epoch_error
from brokers.log.partition import LogError
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 23
MIN_VERSION = 2
MAX_VERSION = 4


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    for t in request.topics:
        topic = broker.topics.get(t.topic)
        denied = not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, t.topic)
        parts = []
        for p in t.partitions:
            code, epoch, end = ErrorCode.none, -1, -1
            if denied:
                code = ErrorCode.topic_authorization_failed
            elif topic is None or not 0 <= p.partition < topic.partitions:
                code = ErrorCode.unknown_topic_or_partition
            else:
                try:
                    plog = await broker.serving_log(topic.topic_id, p.partition)
                    code = epoch_error(p.current_leader_epoch, plog.epoch)
                    if code == ErrorCode.none:
                        epoch, end = plog.end_offset_for_epoch(p.leader_epoch)
                except LogError as e:
                    code = e.code
            parts.append(make(mod.EpochEndOffset, error_code=code, partition=p.partition, leader_epoch=epoch,
                              end_offset=end))
        topics.append(make(mod.OffsetForLeaderTopicResult, topic=t.topic, partitions=tuple(parts)))
    return make(mod.OffsetForLeaderEpochResponse, throttle_time=NO_THROTTLE, topics=tuple(topics))
