"""DescribeConfigs (API 32): a topic's or a broker's effective configs, with sources and synonyms as Kafka
reports them (brokers/dynamic_config.py has the precedence chain).

A broker resource "N" is answered by broker N only (the Admin clients send it there, as Kafka requires: the
static configs are that process's); the cluster-wide default resource "" lists only the dynamic defaults set,
as Kafka does. Also home of ``topic_config_entries``, the effective topic config list CreateTopics v5+ returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import INT32_CONFIGS, TOPIC_CONFIG_DEFAULTS, TOPIC_CONFIG_TYPES
from brokers.dynamic_config import (
    BROKER_SYNONYMS,
    DYNAMIC_BROKER_CONFIGS,
    ConfigSource,
    DynamicConfigs,
    Layer,
    ResourceError,
    broker_resource_id,
)
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.config_alter import check_config_access
from brokers.security.acl import AclOperation
from brokers.topics import TopicError, check_name

API_KEY = 32
MIN_VERSION = 1
MAX_VERSION = 4

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4


class ConfigType(IntEnum):
    """Kafka's ConfigEntry.ConfigType codes (DescribeConfigs v3+)."""

    UNKNOWN = 0
    BOOLEAN = 1
    STRING = 2
    INT = 3
    LONG = 5
    DOUBLE = 6
    LIST = 7


_TOPIC_TYPE_CODES = {
    "int": ConfigType.INT, "long": ConfigType.LONG, "double": ConfigType.DOUBLE, "boolean": ConfigType.BOOLEAN,
    "enum": ConfigType.STRING, "list": ConfigType.LIST,
}


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One config as DescribeConfigs/CreateTopics report it; synonyms are (name, value, source)."""

    name: str
    value: str | None
    source: ConfigSource
    read_only: bool
    config_type: ConfigType
    synonyms: tuple[tuple[str, str | None, ConfigSource], ...]


def _topic_config_type(key: str) -> ConfigType:
    kind = TOPIC_CONFIG_TYPES.get(key)
    return ConfigType.STRING if kind is None else _TOPIC_TYPE_CODES[kind.kind]


def _broker_config_type(key: str, value: str | None) -> ConfigType:
    kind = DYNAMIC_BROKER_CONFIGS.get(key)
    if kind is not None:
        return _TOPIC_TYPE_CODES[kind.kind]
    if value in ("true", "false"):
        return ConfigType.BOOLEAN
    try:
        int(value or "")
    except ValueError:
        return ConfigType.STRING
    return ConfigType.INT if key in INT32_CONFIGS or key in ("broker.id", "node.id") else ConfigType.LONG


def topic_config_entries(
    overrides: dict[str, str], broker_configs: dict[str, str], layers: Sequence[Layer] = ()
) -> list[ConfigEntry]:
    """Every topic config: the topic's override, else the broker's dynamic value of its synonym (``layers``,
    highest first), else the broker's static setting, else the default.

    A static broker setting counts (as STATIC_BROKER_CONFIG) only where it differs from the topic default,
    since the broker's settings always carry a value and we cannot tell a set one from a defaulted one.
    """
    entries: list[ConfigEntry] = []
    for key, default in sorted(TOPIC_CONFIG_DEFAULTS.items()):
        chain: list[tuple[str, str | None, ConfigSource]] = []
        if key in overrides:
            chain.append((key, overrides[key], ConfigSource.DYNAMIC_TOPIC_CONFIG))
        broker_key = BROKER_SYNONYMS.get(key)
        if broker_key is not None:
            chain.extend((broker_key, layer.configs[broker_key], layer.source)
                         for layer in layers if broker_key in layer.configs)
            if broker_configs.get(broker_key, default) != default:
                chain.append((broker_key, broker_configs[broker_key], ConfigSource.STATIC_BROKER_CONFIG))
        chain.append((broker_key or key, default, ConfigSource.DEFAULT_CONFIG))
        _, value, source = chain[0]
        entries.append(ConfigEntry(key, value, source, False, _topic_config_type(key), tuple(chain)))
    return entries


def broker_config_entries(dynamic: DynamicConfigs) -> list[ConfigEntry]:
    """Every config of this broker: the dynamic ones with their chain, the others fixed at start (read-only)."""
    entries = []
    for key in sorted(set(dynamic.static.broker_configs()) | set(DYNAMIC_BROKER_CONFIGS)):
        chain = tuple(dynamic.broker_chain(key))
        _, value, source = chain[0]
        entries.append(
            ConfigEntry(key, value, source, key not in DYNAMIC_BROKER_CONFIGS, _broker_config_type(key, value), chain)
        )
    return entries


def default_broker_entries(dynamic: DynamicConfigs) -> list[ConfigEntry]:
    """The cluster-wide default resource: only the dynamic defaults set (Kafka lists nothing else there)."""
    source = ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG
    return [
        ConfigEntry(key, value, source, False, _broker_config_type(key, value), ((key, value, source),))
        for key, value in sorted(dynamic.overrides(None).items())
    ]


def _resource_entries(ctx: RequestContext, resource_type: int, name: str) -> list[ConfigEntry]:
    """The config entries of one resource; raises TopicError/ResourceError with the Kafka error to report."""
    dynamic = ctx.broker.dynamic
    check_config_access(ctx, resource_type, name, AclOperation.DESCRIBE_CONFIGS)
    if resource_type == RESOURCE_TOPIC:
        check_name(name)
        topic = ctx.broker.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"Topic '{name}' does not exist.")
        return topic_config_entries(topic.configs, dynamic.static.broker_configs(), dynamic.layers())
    if resource_type == RESOURCE_BROKER:
        node_id = broker_resource_id(name)
        if node_id is None:
            return default_broker_entries(dynamic)
        if node_id != ctx.broker.routing.node_id:
            # Kafka's ConfigHelper: a broker describes only its own configs; clients (the Admin client) send a
            # broker resource to that broker, which every live broker of the Metadata answer is.
            raise TopicError(
                ErrorCode.invalid_request,
                f"Unexpected broker id, expected {ctx.broker.routing.node_id} or empty string, but received {name}",
            )
        return broker_config_entries(dynamic)
    raise TopicError(ErrorCode.invalid_request, f"Unsupported resource type: {resource_type}")


def _config_result(mod: Any, entry: ConfigEntry, synonyms: bool) -> Any:
    """One config in this version's shape; no documentation strings yet (the field is nullable)."""
    return make(
        mod.DescribeConfigsResourceResult,
        name=entry.name,
        value=entry.value,
        read_only=entry.read_only,
        config_source=entry.source.value,
        is_sensitive=False,
        synonyms=tuple(
            make(mod.DescribeConfigsSynonym, name=n, value=v, source=s.value) for n, v, s in entry.synonyms
        ) if synonyms else (),
        config_type=entry.config_type.value,
        documentation=None,
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Describe each requested resource; errors are per resource."""
    mod = response_module(API_KEY, ctx.api_version)
    synonyms = bool(request.include_synonyms)
    results = []
    for resource in request.resources:
        code, message = ErrorCode.none, None
        entries: list[ConfigEntry] = []
        try:
            entries = _resource_entries(ctx, resource.resource_type, resource.resource_name)
        except (TopicError, ResourceError) as e:
            code, message = e.code, str(e)
        if resource.configuration_keys:  # None or empty: all of them
            wanted = set(resource.configuration_keys)
            entries = [entry for entry in entries if entry.name in wanted]
        results.append(
            make(
                mod.DescribeConfigsResult,
                error_code=code,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                configs=tuple(_config_result(mod, entry, synonyms) for entry in entries),
            )
        )
    return make(mod.DescribeConfigsResponse, throttle_time=NO_THROTTLE, results=tuple(results))
