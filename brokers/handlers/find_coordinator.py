"""FindCoordinator (10): the owner of the group's ``__consumer_offsets`` partition (v4+: batched keys), as
``broker.routing`` knows it: any broker answers for every group, with the leader's advertised endpoint.

librdkafka also reads this API's presence as "the broker supports LZ4", so it is advertised from v0.
Key type 1 (a transactional id): the owner of the id's ``__transaction_state`` partition, the same way; the
first such lookup creates the topic, as Kafka does.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.coordinator import OFFSETS_TOPIC
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType
from brokers.transactions.coordinator import TXN_TOPIC

API_KEY = 10
MIN_VERSION = 0
MAX_VERSION = 6
GROUP = 0
TRANSACTION = 1


def _answer(ctx: RequestContext, key_type: int, key: str) -> tuple[ErrorCode, str | None, int, str, int]:
    if key_type == GROUP and not ctx.allowed(AclOperation.DESCRIBE, ResourceType.GROUP, key):
        return ErrorCode.group_authorization_failed, "Group authorization failed.", -1, "", -1
    if key_type == TRANSACTION and key and not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, key):
        return ErrorCode.transactional_id_authorization_failed, "Transactional Id authorization failed.", -1, "", -1
    if key_type == GROUP:
        broker = ctx.broker
        topic = broker.topics.get(OFFSETS_TOPIC)
        if topic is None or broker.groups.partitions == 0:
            return ErrorCode.coordinator_not_available, "the group coordinator is not available yet", -1, "", -1
        partition = broker.groups.partition_for(key)
        leader = broker.routing.leader(topic.topic_id, partition)
        endpoint = None if leader is None else broker.routing.endpoint(leader.node_id)
        if endpoint is None:
            return (ErrorCode.coordinator_not_available, f"{OFFSETS_TOPIC} partition {partition} has no live leader",
                    -1, "", -1)
        return ErrorCode.none, None, endpoint.node_id, *ctx.address(endpoint)
    if key_type == TRANSACTION:
        txns = ctx.broker.transactions
        if not key:
            return ErrorCode.invalid_request, "a transactional id must not be empty", -1, "", -1
        endpoint = txns.coordinator_for(key)
        if endpoint is None:
            where = f"{TXN_TOPIC} partition {txns.partition_for(key)}" if txns.partitions else TXN_TOPIC
            return ErrorCode.coordinator_not_available, f"{where} has no live leader yet", -1, "", -1
        return ErrorCode.none, None, endpoint.node_id, *ctx.address(endpoint)
    return ErrorCode.invalid_request, f"unknown coordinator key type {key_type}", -1, "", -1


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    key_type = getattr(request, "key_type", GROUP)
    if key_type == TRANSACTION:
        await ctx.broker.transactions.ensure_topic()  # created on first use, as Kafka does
    if ctx.api_version < 4:
        code, message, node, host, port = _answer(ctx, key_type, request.key)
        return make(
            mod.FindCoordinatorResponse, throttle_time=NO_THROTTLE, error_code=code, error_message=message,
            node_id=node, host=host, port=port,
        )
    coordinators = []
    for key in request.coordinator_keys:
        code, message, node, host, port = _answer(ctx, key_type, key)
        coordinators.append(
            make(mod.Coordinator, key=key, node_id=node, host=host, port=port, error_code=code, error_message=message)
        )
    return make(mod.FindCoordinatorResponse, throttle_time=NO_THROTTLE, coordinators=tuple(coordinators))
