"""DescribeProducers (API 61, KIP-664): the active idempotent producers of each partition.

Answered by the partition's leader from its producer state, as Kafka's ``Partition.activeProducerState``: the
producers the log remembers (the last five batches' sequences each; ``brokers/log/producers.py``), with their
epoch, last sequence and the last batch's max timestamp, the first offset of the transaction each has open on
the partition (-1: none) and the coordinator epoch of the last marker written for it (-1: none). A partition
this broker does not lead answers NOT_LEADER_OR_FOLLOWER (``kafka-transactions describe-producers`` and the
admin clients ask the leader); an unknown topic or partition UNKNOWN_TOPIC_OR_PARTITION. The embedded broker
loads a partition on first use here as ListOffsets does, so a partition written before a restart reports the
producers replayed from its snapshot and its last ledger (their last timestamp is -1 until they write
again: snapshots carry sequences, not timestamps).
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.log.types import LogError
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 61
MIN_VERSION = 0
MAX_VERSION = 0
NO_TRANSACTION = -1


async def _partition(ctx: RequestContext, mod: Any, topic_id: str | None, count: int, index: int) -> Any:
    if topic_id is None or not 0 <= index < count:
        return make(
            mod.PartitionResponse,
            partition_index=index,
            error_code=ErrorCode.unknown_topic_or_partition,
            error_message="This server does not host this topic-partition.",
            active_producers=(),
        )
    try:
        plog = await ctx.broker.serving_log(topic_id, index)
    except LogError as e:
        return make(
            mod.PartitionResponse, partition_index=index, error_code=e.code, error_message=str(e), active_producers=()
        )
    ongoing = plog.ongoing_transactions()
    producers = tuple(
        make(
            mod.ProducerState,
            producer_id=p.producer_id,
            producer_epoch=p.epoch,
            last_sequence=p.last_sequence,
            last_timestamp=p.last_timestamp,
            coordinator_epoch=plog.coordinator_epoch(p.producer_id),
            current_txn_start_offset=ongoing.get(p.producer_id, NO_TRANSACTION),
        )
        for p in plog.active_producers()
    )
    return make(
        mod.PartitionResponse,
        partition_index=index,
        error_code=ErrorCode.none,
        error_message=None,
        active_producers=producers,
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    for t in request.topics:
        record = ctx.broker.topics.get(t.name)
        topic_id, count = (None, 0) if record is None else (record.topic_id, record.partitions)
        if not ctx.allowed(AclOperation.READ, ResourceType.TOPIC, t.name):
            parts = [
                make(mod.PartitionResponse, partition_index=int(i), error_code=ErrorCode.topic_authorization_failed,
                     error_message=f"Not authorized to read topic {t.name}.", active_producers=())
                for i in t.partition_indexes
            ]
            topics.append(make(mod.TopicResponse, name=t.name, partitions=tuple(parts)))
            continue
        parts = [await _partition(ctx, mod, topic_id, count, int(i)) for i in t.partition_indexes]
        topics.append(make(mod.TopicResponse, name=t.name, partitions=tuple(parts)))
    return make(mod.DescribeProducersResponse, throttle_time=NO_THROTTLE, topics=tuple(topics))
