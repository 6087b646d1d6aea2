"""CreateTopics (API 19): create topics in metadata, one result per topic, as Kafka reports them.

Replication factor is accepted and reported but places nothing: durability comes from the write-ahead
tier. Manual assignments fix the partition count; their broker ids are checked for shape only.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import ConfigError, validate_topic_configs
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.describe_configs import topic_config_entries
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.topics import TopicError, check_name
from metadata.api import MetadataError
from metadata.models import TopicRecord

API_KEY = 19
MIN_VERSION = 2
MAX_VERSION = 7


def _assignment_shape(assignments: Any) -> tuple[int, int]:
    """(partitions, replication factor) of a manual assignment; raises INVALID_REPLICA_ASSIGNMENT."""
    indexes = sorted(a.partition_index for a in assignments)
    if indexes != list(range(len(indexes))):
        raise TopicError(
            ErrorCode.invalid_replica_assignment,
            f"Partitions should be a consecutive 0-based integer sequence, but got {indexes}.",
        )
    sizes = {len(a.broker_ids) for a in assignments}
    if len(sizes) != 1 or 0 in sizes:
        raise TopicError(
            ErrorCode.invalid_replica_assignment,
            "All partitions should have the same, non-zero number of replicas.",
        )
    for a in assignments:
        if len(set(a.broker_ids)) != len(a.broker_ids):
            raise TopicError(
                ErrorCode.invalid_replica_assignment,
                f"Duplicate brokers not allowed in replica assignment of partition {a.partition_index}.",
            )
    return len(indexes), sizes.pop()


def _topic_configs(entries: Any) -> dict[str, str]:
    """The request's configs, validated; raises INVALID_CONFIG. A repeated key: the last one wins."""
    raw: dict[str, str | None] = {c.name: c.value for c in entries}
    nulls = sorted(k for k, v in raw.items() if v is None)
    if nulls:
        raise TopicError(ErrorCode.invalid_config, f"Null value not supported for topic configs: {','.join(nulls)}")
    try:
        return validate_topic_configs(raw)
    except ConfigError as e:
        raise TopicError(ErrorCode.invalid_config, str(e)) from None


async def _create(ctx: RequestContext, topic: Any, validate_only: bool) -> TopicRecord:
    """Create (or validate) one topic; raises TopicError."""
    if not (
        ctx.allowed(AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME)
        or ctx.allowed(AclOperation.CREATE, ResourceType.TOPIC, topic.name)
    ):
        raise TopicError(ErrorCode.topic_authorization_failed, "Authorization failed.")
    check_name(topic.name)
    config = ctx.broker.config
    partitions, replication = int(topic.num_partitions), int(topic.replication_factor)
    if topic.assignments:
        if partitions != -1 or replication != -1:
            raise TopicError(
                ErrorCode.invalid_request,
                "Both numPartitions or replicationFactor and replicasAssignments were set. "
                "Both cannot be used at the same time.",
            )
        partitions, replication = _assignment_shape(topic.assignments)
    else:
        if partitions == -1:
            partitions = config.num_partitions
        if replication == -1:
            replication = config.default_replication_factor
    if ctx.broker.topics.get(topic.name) is not None:
        raise TopicError(ErrorCode.topic_already_exists, f"Topic '{topic.name}' already exists.")
    configs = _topic_configs(topic.configs)
    return await ctx.broker.topics.create(topic.name, partitions, replication, configs, validate_only)


def _failed(mod: Any, name: str, code: ErrorCode, message: str) -> Any:
    return make(
        mod.CreatableTopicResult,
        name=name,
        topic_id=None,
        error_code=code,
        error_message=message,
        num_partitions=-1,
        replication_factor=-1,
        configs=(),
    )


def _created(mod: Any, topic: TopicRecord, broker_configs: dict[str, str]) -> Any:
    configs = ()
    if hasattr(mod, "CreatableTopicConfigs"):  # v5+ report the effective configs
        configs = tuple(
            make(
                mod.CreatableTopicConfigs,
                name=e.name,
                value=e.value,
                read_only=e.read_only,
                config_source=e.source.value,
                is_sensitive=False,
            )
            for e in topic_config_entries(topic.configs, broker_configs)
        )
    return make(
        mod.CreatableTopicResult,
        name=topic.name,
        topic_id=uuid.UUID(topic.topic_id),
        error_code=ErrorCode.none,
        error_message=None,
        num_partitions=topic.partitions,
        replication_factor=topic.replication_factor,
        configs=configs,
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Create each requested topic; a name given twice is refused (once) with INVALID_REQUEST."""
    mod = response_module(API_KEY, ctx.api_version)
    counts = Counter(t.name for t in request.topics)
    broker_configs = ctx.broker.config.broker_configs()
    seen: set[str] = set()
    results = []
    for topic in request.topics:
        if topic.name in seen:
            continue
        seen.add(topic.name)
        if counts[topic.name] > 1:
            results.append(_failed(mod, topic.name, ErrorCode.invalid_request, "Duplicate topic name."))
            continue
        try:
            created = await _create(ctx, topic, bool(request.validate_only))
        except TopicError as e:
            results.append(_failed(mod, topic.name, e.code, str(e)))
        except MetadataError as e:
            results.append(_failed(mod, topic.name, ErrorCode.unknown_server_error, f"metadata store: {e}"))
        else:
            results.append(_created(mod, created, broker_configs))
    return make(mod.CreateTopicsResponse, throttle_time=NO_THROTTLE, topics=tuple(results))
