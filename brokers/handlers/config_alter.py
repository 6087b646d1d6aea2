"""What AlterConfigs (33) and IncrementalAlterConfigs (44) share: altering one config resource.

Why one place: both APIs compute a resource's new set of configs (AlterConfigs replaces it whole,
IncrementalAlterConfigs applies SET/DELETE/APPEND/SUBTRACT to the current one) and then check and store it the
same way — a topic's configs in its TopicRecord (checked as CreateTopics checks them), a broker's or the
cluster-wide default's in their dynamic config key (brokers/dynamic_config.py). Either is one
compare-and-swap, followed by every broker's watch, so the change applies without a restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import TOPIC_CONFIG_TYPES, ConfigError, TopicConfigType, validate_topic_configs
from brokers.dynamic_config import DYNAMIC_BROKER_CONFIGS, ResourceError, broker_resource_id
from brokers.handlers.base import RequestContext
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.topics import TopicError, check_name
from metadata.api import MetadataError

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3

Change = Callable[[dict[str, str], dict[str, TopicConfigType], bool], dict[str, str]]
"""(the resource's current configs, the types of its alterable names, whether an unknown name is refused at
once) -> its new configs; raises ResourceError. (A broker resource checks names after, as Kafka does.)"""


def replaced(configs: Iterable[Any]) -> Change:
    """AlterConfigs: the given configs become the resource's whole set (a null value leaves a config out)."""
    items = list(configs)
    repeated = sorted(name for name, n in Counter(c.name for c in items).items() if n > 1)

    def change(_current: dict[str, str], _types: dict[str, TopicConfigType], _strict: bool) -> dict[str, str]:
        if repeated:
            raise ResourceError(ErrorCode.invalid_request, f"Error due to duplicate config keys: {','.join(repeated)}")
        return {c.name: c.value for c in items if c.value is not None}

    return change


def incremental(ops: Iterable[Any]) -> Change:
    """IncrementalAlterConfigs: SET, DELETE, and APPEND/SUBTRACT on list configs (Kafka's messages and codes)."""
    items = list(ops)
    repeated = sorted(name for name, n in Counter(op.name for op in items).items() if n > 1)

    def change(current: dict[str, str], types: dict[str, TopicConfigType], strict: bool) -> dict[str, str]:
        if repeated:
            raise ResourceError(ErrorCode.invalid_request, f"Error due to duplicate config keys: {','.join(repeated)}")
        out = dict(current)
        for op in items:
            kind = types.get(op.name)
            if kind is None and strict:
                raise ResourceError(ErrorCode.invalid_config, f"Unknown topic config name: {op.name}")
            if op.config_operation == DELETE:
                out.pop(op.name, None)
                continue
            if op.value is None:
                raise ResourceError(ErrorCode.invalid_request, f"Null value not supported for : {op.name}")
            if op.config_operation == SET:
                out[op.name] = op.value
            elif op.config_operation in (APPEND, SUBTRACT):
                if kind is None or kind.kind != "list":
                    raise ResourceError(
                        ErrorCode.invalid_config, f"Config value append is not allowed for config key: {op.name}"
                    )
                present = [v for v in out.get(op.name, "").split(",") if v]
                given = [v.strip() for v in op.value.split(",") if v.strip()]
                if op.config_operation == APPEND:
                    present += [v for v in given if v not in present]
                else:
                    present = [v for v in present if v not in given]
                if present:
                    out[op.name] = ",".join(present)
                else:
                    out.pop(op.name, None)  # nothing left: back to the default, not an invalid empty list
            else:
                raise ResourceError(ErrorCode.invalid_request, f"Unknown config operation {op.config_operation}")
        return out

    return change


async def alter_resource(
    ctx: RequestContext, resource_type: int, name: str, change: Change, validate_only: bool
) -> None:
    """Alter one resource's configs; raises TopicError/ResourceError with the Kafka error to report."""
    if resource_type == RESOURCE_TOPIC:
        check_name(name)
        topic = ctx.broker.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"Topic '{name}' does not exist.")
        new = change(dict(topic.configs), TOPIC_CONFIG_TYPES, True)
        try:
            configs = validate_topic_configs(dict(new))
        except ConfigError as e:
            raise ResourceError(ErrorCode.invalid_config, str(e)) from None
        await ctx.broker.topics.set_configs(name, configs, validate_only)
    elif resource_type == RESOURCE_BROKER:
        node_id = broker_resource_id(name)
        await ctx.broker.dynamic.alter(node_id, lambda now: change(now, DYNAMIC_BROKER_CONFIGS, False), validate_only)
    else:
        raise ResourceError(ErrorCode.invalid_request, f"Unsupported resource type: {resource_type}")


def check_config_access(ctx: RequestContext, resource_type: int, name: str, operation: AclOperation) -> None:
    """Raise ResourceError unless the principal may ``operation`` (DESCRIBE_CONFIGS / ALTER_CONFIGS) the resource:
    a topic by its name (TOPIC_AUTHORIZATION_FAILED), a broker as the cluster (CLUSTER_AUTHORIZATION_FAILED)."""
    if resource_type == RESOURCE_TOPIC and not ctx.allowed(operation, ResourceType.TOPIC, name):
        raise ResourceError(ErrorCode.topic_authorization_failed, f"Not authorized to access topic {name}.")
    if resource_type == RESOURCE_BROKER and not ctx.allowed(operation, ResourceType.CLUSTER, CLUSTER_NAME):
        raise ResourceError(ErrorCode.cluster_authorization_failed, "Cluster authorization failed.")


async def alter_all(
    ctx: RequestContext, resources: Iterable[Any], change_of: Callable[[Any], Change], validate_only: bool
) -> list[tuple[Any, ErrorCode, str | None]]:
    """Alter each resource: (resource, error code, message) per resource; a resource named twice is refused."""
    items = list(resources)
    seen = Counter((r.resource_type, r.resource_name) for r in items)
    out: list[tuple[Any, ErrorCode, str | None]] = []
    for resource in items:
        code, message = ErrorCode.none, None
        if seen[(resource.resource_type, resource.resource_name)] > 1:
            code, message = ErrorCode.invalid_request, "Error due to duplicate resources"
        else:
            try:
                check_config_access(ctx, resource.resource_type, resource.resource_name, AclOperation.ALTER_CONFIGS)
                await alter_resource(
                    ctx, resource.resource_type, resource.resource_name, change_of(resource), validate_only
                )
            except (TopicError, ResourceError) as e:
                code, message = e.code, str(e)
            except MetadataError as e:
                code, message = ErrorCode.unknown_server_error, f"metadata store: {e}"
        out.append((resource, code, message))
    return out
