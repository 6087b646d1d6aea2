"""Dynamic broker configs (Kafka's KIP-226): per-broker and cluster-default values in metadata, live everywhere.

Why: tools change a running cluster's defaults (``kafka-configs --alter --entity-type brokers``) and expect
every broker to act on them at once, without a restart. The values live in two kinds of metadata key
(``config/broker`` for the cluster-wide default, ``config/broker/{id}`` for one broker); every broker follows
the ``config/`` prefix with a watch (a PrefixCache), in the embedded broker as in a cluster, so the writer
and every other broker take a change the same way.

What a value is (Kafka's precedence, highest first): the topic's own config (DYNAMIC_TOPIC_CONFIG), this
broker's dynamic value (DYNAMIC_BROKER_CONFIG), the cluster-wide dynamic default
(DYNAMIC_DEFAULT_BROKER_CONFIG), the value the process was started with (STATIC_BROKER_CONFIG), Kafka's
default (DEFAULT_CONFIG).

Which broker configs are dynamic: the broker-level defaults of topic configs (Kafka's DynamicLogConfig:
``log.retention.ms``, ``message.max.bytes``, ``log.cleanup.policy``...), typed as their topic config.
Readers take them at use — ``Broker.config`` is replaced by the effective config on every change (for the
ones BrokerConfig holds) and ``topic_configs`` resolves a topic's configs through the chain — so nothing is
cached past a change. Every other broker config is fixed at start: altering one is refused as Kafka refuses it
(INVALID_REQUEST, "Cannot update these configs dynamically: [...]").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from enum import IntEnum

from kio.schema.errors import ErrorCode

from brokers.config import (
    INT32_MAX,
    TOPIC_CONFIG_DEFAULTS,
    TOPIC_CONFIG_TYPES,
    BrokerConfig,
    ConfigError,
    TopicConfigType,
)
from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import BrokerConfigRecord
from metadata.prefix_cache import PrefixCache

log = logging.getLogger(__name__)
WRITE_ATTEMPTS = 5
"""Compare-and-swap attempts of one alteration before it is refused (another writer keeps winning)."""
SEEN_TIMEOUT_S = 5.0
"""How long an alteration waits for this broker's watch to show it, so that a DescribeConfigs right after
sees the new value; past that the write stands and the watch catches up."""


class ConfigSource(IntEnum):
    """Kafka's DescribeConfigsResponse config sources."""

    DYNAMIC_TOPIC_CONFIG = 1
    DYNAMIC_BROKER_CONFIG = 2
    DYNAMIC_DEFAULT_BROKER_CONFIG = 3
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


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
DYNAMIC_BROKER_CONFIGS: dict[str, TopicConfigType] = {
    broker_key: TOPIC_CONFIG_TYPES[topic_key] for topic_key, broker_key in BROKER_SYNONYMS.items()
}
"""The broker configs AlterConfigs may change, with the type and range their topic config has."""
DYNAMIC_BROKER_DEFAULTS: dict[str, str] = {
    broker_key: TOPIC_CONFIG_DEFAULTS[topic_key] for topic_key, broker_key in BROKER_SYNONYMS.items()
}
_FIELD_KEYS = {f.metadata["key"]: f for f in fields(BrokerConfig) if "key" in f.metadata}


class ResourceError(Exception):
    """A config resource refused with a Kafka error code; the message is what the client is told."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def static_default(key: str) -> str | None:
    """The value a BrokerConfig field has when not set at start (None for keys without a plain default)."""
    f = _FIELD_KEYS.get(key)
    if f is None or f.default is MISSING:
        return None
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def broker_resource_id(name: str) -> int | None:
    """A broker resource's name: "" is the cluster-wide default (None), else a broker id (INVALID_REQUEST)."""
    if name == "":
        return None
    try:
        node_id = int(name)
    except ValueError:
        node_id = -1
    if not 0 <= node_id <= INT32_MAX or str(node_id) != name.strip():
        raise ResourceError(ErrorCode.invalid_request, f"Broker id must be an integer, but it is: {name}")
    return node_id


def check_broker_configs(configs: dict[str, str], name: str, static: BrokerConfig) -> None:
    """Raise ResourceError unless every config may be set dynamically to its value (Kafka's answers:
    INVALID_REQUEST for a static config or a bad value, INVALID_CONFIG for a name no broker knows)."""
    known = set(static.broker_configs())
    unknown = sorted(k for k in configs if k not in DYNAMIC_BROKER_CONFIGS and k not in known)
    if unknown:
        raise ResourceError(ErrorCode.invalid_config, f"Unknown broker configs: [{', '.join(unknown)}]")
    fixed = sorted(k for k in configs if k not in DYNAMIC_BROKER_CONFIGS)
    if fixed:
        raise ResourceError(ErrorCode.invalid_request, f"Cannot update these configs dynamically: [{', '.join(fixed)}]")
    try:
        for key, value in configs.items():
            DYNAMIC_BROKER_CONFIGS[key].check(key, value)
        static.with_overrides(f"{k}={v}" for k, v in configs.items() if k in _FIELD_KEYS)
    except ConfigError as e:
        resource = f"ConfigResource(type=BROKER, name='{name}')"
        raise ResourceError(ErrorCode.invalid_request, f"Invalid config value for resource {resource}: {e}") from None


@dataclass(frozen=True, slots=True)
class Layer:
    """One level of the chain: its source and the configs set there (broker config names)."""

    source: ConfigSource
    configs: dict[str, str]


class DynamicConfigs:
    """This broker's view of the dynamic broker configs, kept current by a watch (module docstring)."""

    def __init__(
        self, store: MetadataStore, keys: Keys, static: BrokerConfig, on_change: Callable[[BrokerConfig], None]
    ) -> None:
        self.static = static
        """The config the process started with."""
        self._static_configs = static.broker_configs()
        self._store = store
        self._keys = keys
        self._on_change = on_change
        self._cache: PrefixCache[BrokerConfigRecord] = PrefixCache(
            store, keys.configs_prefix(), lambda _suffix, data: BrokerConfigRecord.decode(data),
            on_change=self._changed, name="dynamic broker configs",
        )
        self._started = False
        self._topic_defaults = {key: self._broker_level(key, default) for key, default in TOPIC_CONFIG_DEFAULTS.items()}
        """Each topic config's value where a topic does not set it (recomputed on every change; read per use)."""

    async def start(self) -> None:
        await self._cache.start()
        self._started = True
        self._changed(frozenset())

    async def stop(self) -> None:
        self._started = False
        await self._cache.stop()

    # --- reading ------------------------------------------------------------------------------
    def overrides(self, node_id: int | None) -> dict[str, str]:
        """The dynamic configs set on broker ``node_id`` (None: the cluster-wide defaults)."""
        suffix = self._keys.broker_config(node_id)[len(self._keys.configs_prefix()) :]
        record = self._cache.items.get(suffix)
        return dict(record.configs) if record is not None else {}

    def layers(self) -> list[Layer]:
        """This broker's dynamic levels, highest first (per-broker, then cluster-wide default)."""
        return [
            Layer(ConfigSource.DYNAMIC_BROKER_CONFIG, self.overrides(self.static.node_id)),
            Layer(ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG, self.overrides(None)),
        ]

    def broker_chain(self, key: str) -> list[tuple[str, str | None, ConfigSource]]:
        """Every level that sets broker config ``key``, highest first, ending with its default (Kafka's synonyms
        list for one name); the first entry is the effective value."""
        chain: list[tuple[str, str | None, ConfigSource]] = [
            (key, layer.configs[key], layer.source) for layer in self.layers() if key in layer.configs
        ]
        static = self._static_configs
        default = static_default(key) if key in _FIELD_KEYS else DYNAMIC_BROKER_DEFAULTS.get(key)
        if key in static and (default is None or static[key] != default):
            chain.append((key, static[key], ConfigSource.STATIC_BROKER_CONFIG))
        if default is not None:
            chain.append((key, default, ConfigSource.DEFAULT_CONFIG))
        return chain

    def effective(self) -> BrokerConfig:
        """The static config with the dynamic values BrokerConfig holds applied (what ``Broker.config`` is)."""
        merged: dict[str, str] = {}
        for layer in reversed(self.layers()):
            merged.update({k: v for k, v in layer.configs.items() if k in _FIELD_KEYS and k in DYNAMIC_BROKER_CONFIGS})
        if not merged:
            return self.static
        try:
            return self.static.with_overrides(f"{k}={v}" for k, v in merged.items())
        except ConfigError as e:  # validated when written; a hand-written key may still be bad
            log.warning("ignoring the dynamic broker configs (%s)", e)
            return self.static

    def topic_configs(self, overrides: dict[str, str]) -> dict[str, str]:
        """Every topic config's effective value for a topic with ``overrides`` set on it."""
        return {**self._topic_defaults, **{k: v for k, v in overrides.items() if k in self._topic_defaults}}

    def _broker_level(self, key: str, default: str) -> str:
        broker_key = BROKER_SYNONYMS.get(key)
        chain = self.broker_chain(broker_key) if broker_key is not None else []
        value = chain[0][1] if chain else None
        return default if value is None else value

    # --- writing ------------------------------------------------------------------------------
    async def alter(
        self, node_id: int | None, change: Callable[[dict[str, str]], dict[str, str]], validate_only: bool = False
    ) -> dict[str, str]:
        """Replace broker ``node_id``'s dynamic configs (None: the cluster-wide defaults) by ``change(current)``,
        checked first (ResourceError); compare-and-swap, retried when another writer came between. Returns the
        new configs; with ``validate_only`` nothing is written."""
        key = self._keys.broker_config(node_id)
        name = "" if node_id is None else str(node_id)
        for _ in range(WRITE_ATTEMPTS):
            found = await self._store.get(key)
            current = BrokerConfigRecord.decode(found.value).configs if found is not None else {}
            new = change(dict(current))
            check_broker_configs(new, name, self.static)
            if validate_only:
                return new
            try:
                version = await self._store.put(
                    key, BrokerConfigRecord(new).encode(), expected_version=found.version if found else 0
                )
            except VersionConflict:
                continue
            await self._seen(key, version)
            return new
        raise ResourceError(ErrorCode.invalid_update_version, f"broker configs {name!r} kept changing; retry")

    async def _seen(self, key: str, version: int) -> None:
        if not self._started:
            return
        suffix = key[len(self._keys.configs_prefix()) :]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SEEN_TIMEOUT_S):
                await self._cache.wait_until(lambda _items: (self._cache.version_of(suffix) or 0) >= version)

    def _changed(self, _changed: frozenset[str]) -> None:
        self._topic_defaults = {key: self._broker_level(key, default) for key, default in TOPIC_CONFIG_DEFAULTS.items()}
        self._on_change(self.effective())
