"""DescribeConfigs (API 32): a topic's effective configs, or this broker's static configs.

Also home of ``topic_config_entries``, the effective topic config list CreateTopics v5+ returns too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import INT32_CONFIGS, TOPIC_CONFIG_DEFAULTS, TOPIC_CONFIG_TYPES
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.topics import TopicError, check_name

API_KEY = 32
MIN_VERSION = 1
MAX_VERSION = 4

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4


class ConfigSource(IntEnum):
    """Kafka's DescribeConfigsResponse config sources (the ones we report)."""

    DYNAMIC_TOPIC_CONFIG = 1
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


class ConfigType(IntEnum):
    """Kafka's ConfigEntry.ConfigType codes (DescribeConfigs v3+)."""

    UNKNOWN = 0
    BOOLEAN = 1
    STRING = 2
    INT = 3
    LONG = 5
    DOUBLE = 6
    LIST = 7


# The broker config each topic config takes its default from in Kafka (LogConfig's synonyms).
BROKER_SYNONYMS: dict[str, str] = {
    "cleanup.policy": "log.cleanup.policy",
    "compression.type": "compression.type",
    "delete.retention.ms": "log.cleaner.delete.retention.ms",
    "file.delete.delay.ms": "log.segment.delete.delay.ms",
    "flush.messages": "log.flush.interval.messages",
    "flush.ms": "log.flush.interval.ms",
    "index.interval.bytes": "log.index.interval.bytes",
    "local.retention.bytes": "log.local.retention.bytes",
    "local.retention.ms": "log.local.retention.ms",
    "max.compaction.lag.ms": "log.cleaner.max.compaction.lag.ms",
    "max.message.bytes": "message.max.bytes",
    "message.timestamp.after.max.ms": "log.message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms": "log.message.timestamp.before.max.ms",
    "message.timestamp.type": "log.message.timestamp.type",
    "min.cleanable.dirty.ratio": "log.cleaner.min.cleanable.ratio",
    "min.compaction.lag.ms": "log.cleaner.min.compaction.lag.ms",
    "min.insync.replicas": "min.insync.replicas",
    "preallocate": "log.preallocate",
    "retention.bytes": "log.retention.bytes",
    "retention.ms": "log.retention.ms",
    "segment.bytes": "log.segment.bytes",
    "segment.index.bytes": "log.index.size.max.bytes",
    "segment.jitter.ms": "log.roll.jitter.ms",
    "segment.ms": "log.roll.ms",
    "unclean.leader.election.enable": "unclean.leader.election.enable",
}
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


def _broker_config_type(key: str, value: str) -> ConfigType:
    if value in ("true", "false"):
        return ConfigType.BOOLEAN
    try:
        int(value)
    except ValueError:
        return ConfigType.STRING
    return ConfigType.INT if key in INT32_CONFIGS or key in ("broker.id", "node.id") else ConfigType.LONG


def topic_config_entries(overrides: dict[str, str], broker_configs: dict[str, str]) -> list[ConfigEntry]:
    """Every topic config: the topic's override, else the broker's setting of its synonym, else the default.

    A broker setting counts (as STATIC_BROKER_CONFIG) only where it differs from the topic default, since
    the broker's settings always carry a value and we cannot tell a set one from a defaulted one.
    """
    entries: list[ConfigEntry] = []
    for key, default in sorted(TOPIC_CONFIG_DEFAULTS.items()):
        chain: list[tuple[str, str | None, ConfigSource]] = []
        if key in overrides:
            chain.append((key, overrides[key], ConfigSource.DYNAMIC_TOPIC_CONFIG))
        broker_key = BROKER_SYNONYMS.get(key)
        if broker_key is not None and broker_configs.get(broker_key, default) != default:
            chain.append((broker_key, broker_configs[broker_key], ConfigSource.STATIC_BROKER_CONFIG))
        chain.append((broker_key or key, default, ConfigSource.DEFAULT_CONFIG))
        _, value, source = chain[0]
        entries.append(ConfigEntry(key, value, source, False, _topic_config_type(key), tuple(chain)))
    return entries


def broker_config_entries(broker_configs: dict[str, str]) -> list[ConfigEntry]:
    """This broker's configs: all static (set at start), so all read-only."""
    return [
        ConfigEntry(
            key, value, ConfigSource.STATIC_BROKER_CONFIG, True, _broker_config_type(key, value),
            ((key, value, ConfigSource.STATIC_BROKER_CONFIG),),
        )
        for key, value in sorted(broker_configs.items())
    ]


def _resource_entries(ctx: RequestContext, resource_type: int, name: str) -> list[ConfigEntry]:
    """The config entries of one resource; raises TopicError with the Kafka error to report."""
    config = ctx.broker.config
    if resource_type == RESOURCE_TOPIC:
        check_name(name)
        topic = ctx.broker.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"Topic '{name}' does not exist.")
        return topic_config_entries(topic.configs, config.broker_configs())
    if resource_type == RESOURCE_BROKER:
        if name == "":
            return []  # cluster-wide dynamic defaults: Tidelog has none
        try:
            node_id = int(name)
        except ValueError:
            raise TopicError(ErrorCode.invalid_request, f"Broker id must be an integer, but it is: {name}") from None
        if node_id != ctx.broker.routing.node_id:
            # Kafka's ConfigHelper: a broker describes only its own static configs; clients (the Admin client)
            # send a broker resource to that broker, which every live broker of the Metadata answer is.
            raise TopicError(
                ErrorCode.invalid_request,
                f"Unexpected broker id, expected {config.node_id} or empty string, but received {name}",
            )
        return broker_config_entries(config.broker_configs())
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
        except TopicError as e:
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
