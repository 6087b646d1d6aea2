"""IncrementalAlterConfigs (API 44): set, delete, append to or subtract from a topic's configs.

What kafka-configs.sh --alter and ``tidelog topics alter --config`` send. The new set of configs is checked
as CreateTopics checks them (INVALID_CONFIG naming the config) and written to the topic record in one
compare-and-swap; brokers read topic configs from the record at use, so the change applies without a
restart. Broker configs are static in Tidelog (set at start), so a broker resource is refused.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import TOPIC_CONFIG_TYPES, ConfigError, validate_topic_configs
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.topics import TopicError, check_name
from metadata.api import MetadataError

API_KEY = 44
MIN_VERSION = 0
MAX_VERSION = 1

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


def _apply(current: dict[str, str], ops: Any) -> dict[str, str]:
    """The topic's configs after ``ops``; raises TopicError (INVALID_REQUEST / INVALID_CONFIG)."""
    names = Counter(op.name for op in ops)
    repeated = sorted(name for name, n in names.items() if n > 1)
    if repeated:
        raise TopicError(ErrorCode.invalid_request, f"Error due to duplicate config keys: {','.join(repeated)}")
    out = dict(current)
    for op in ops:
        kind = TOPIC_CONFIG_TYPES.get(op.name)
        if kind is None:
            raise TopicError(ErrorCode.invalid_config, f"Unknown topic config name: {op.name}")
        if op.config_operation == DELETE:
            out.pop(op.name, None)
            continue
        if op.value is None:
            raise TopicError(ErrorCode.invalid_request, f"Null value not supported for : {op.name}")
        if op.config_operation == SET:
            out[op.name] = op.value
        elif op.config_operation in (APPEND, SUBTRACT):
            if kind.kind != "list":
                raise TopicError(
                    ErrorCode.invalid_config, f"Config value append is not allowed for config key: {op.name}"
                )
            items = [v for v in out.get(op.name, "").split(",") if v]
            change = [v.strip() for v in op.value.split(",") if v.strip()]
            if op.config_operation == APPEND:
                items += [v for v in change if v not in items]
            else:
                items = [v for v in items if v not in change]
            out[op.name] = ",".join(items)
        else:
            raise TopicError(ErrorCode.invalid_request, f"Unknown config operation {op.config_operation}")
    try:
        return validate_topic_configs(dict(out))
    except ConfigError as e:
        raise TopicError(ErrorCode.invalid_config, str(e)) from None


async def _alter(ctx: RequestContext, resource: Any, validate_only: bool) -> None:
    if resource.resource_type == RESOURCE_BROKER:
        raise TopicError(
            ErrorCode.invalid_request, "Tidelog broker configs are static: set them at start (--config KEY=VALUE)"
        )
    if resource.resource_type != RESOURCE_TOPIC:
        raise TopicError(ErrorCode.invalid_request, f"Unsupported resource type: {resource.resource_type}")
    check_name(resource.resource_name)
    topic = ctx.broker.topics.get(resource.resource_name)
    if topic is None:
        raise TopicError(ErrorCode.unknown_topic_or_partition, f"Topic '{resource.resource_name}' does not exist.")
    configs = _apply(topic.configs, resource.configs)
    await ctx.broker.topics.set_configs(resource.resource_name, configs, validate_only)


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Alter each resource; errors are per resource, and a resource named twice is refused."""
    mod = response_module(API_KEY, ctx.api_version)
    seen = Counter((r.resource_type, r.resource_name) for r in request.resources)
    responses = []
    for resource in request.resources:
        code, message = ErrorCode.none, None
        if seen[(resource.resource_type, resource.resource_name)] > 1:
            code, message = ErrorCode.invalid_request, "Error due to duplicate resources"
        else:
            try:
                await _alter(ctx, resource, bool(request.validate_only))
            except TopicError as e:
                code, message = e.code, str(e)
            except MetadataError as e:
                code, message = ErrorCode.unknown_server_error, f"metadata store: {e}"
        responses.append(
            make(
                mod.AlterConfigsResourceResponse, error_code=code, error_message=message,
                resource_type=resource.resource_type, resource_name=resource.resource_name,
            )
        )
    return make(mod.IncrementalAlterConfigsResponse, throttle_time=NO_THROTTLE, responses=tuple(responses))
