"""Settings within their Kafka type's range, topic configs typed per key, and the topic/partition limits
refused with Kafka's error codes before anything is written."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode

from brokers.config import (
    INT32_MAX,
    INT64_MAX,
    TOPIC_CONFIG_DEFAULTS,
    TOPIC_CONFIG_TYPES,
    BrokerConfig,
    ConfigError,
    validate_topic_configs,
)
from brokers.topics import TopicError, TopicLimits, TopicRegistry
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys

# --- broker settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["message.max.bytes", "socket.request.max.bytes", "num.partitions", "fetch.max.bytes",
            "max.partitions.per.topic", "max.partitions.per.broker", "max.topics"],
)
def test_int32_settings_refuse_values_beyond_int32(key: str) -> None:
    assert BrokerConfig().with_overrides([f"{key}={INT32_MAX}"])  # the largest int32 is fine
    for value in (INT32_MAX + 1, 2**40):
        with pytest.raises(ConfigError, match=rf"{key}=.*out of range for an int32"):
            BrokerConfig().with_overrides([f"{key}={value}"])


@pytest.mark.parametrize("key", ["ledger.rollover.ms", "tiered.block.cache.bytes", "log.retention.check.interval.ms"])
def test_int64_settings_refuse_values_beyond_int64(key: str) -> None:
    assert BrokerConfig().with_overrides([f"{key}={INT32_MAX + 1}"])  # a long may exceed int32
    with pytest.raises(ConfigError, match=rf"{key}=.*out of range for an int64"):
        BrokerConfig().with_overrides([f"{key}={INT64_MAX + 1}"])


def test_every_integer_setting_is_range_checked() -> None:
    """No integer setting takes an unbounded Python int: 2^70 is refused for each."""
    config = BrokerConfig()
    for key, value in config.broker_configs().items():
        if value.lstrip("-").isdigit() and key not in ("broker.id", "node.id"):
            with pytest.raises(ConfigError, match=key):
                config.with_overrides([f"{key}={2**70}"])


def test_limits_default_and_parse() -> None:
    config = BrokerConfig().with_overrides(
        ["max.partitions.per.topic=8", "max.partitions.per.broker=100", "max.topics=3"]
    )
    assert (config.max_partitions_per_topic, config.max_partitions_per_broker, config.max_topics) == (8, 100, 3)
    for bad in ("max.topics=0", "max.partitions.per.topic=-1", "max.partitions.per.broker=lots"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            BrokerConfig().with_overrides([bad])


# --- topic configs ----------------------------------------------------------------------------


def test_every_topic_config_has_a_type_and_its_default_is_valid() -> None:
    assert set(TOPIC_CONFIG_TYPES) == set(TOPIC_CONFIG_DEFAULTS)
    assert validate_topic_configs(dict(TOPIC_CONFIG_DEFAULTS)) == TOPIC_CONFIG_DEFAULTS


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max.message.bytes", str(INT32_MAX)),
        ("retention.ms", "-1"),
        ("retention.ms", str(INT64_MAX)),
        ("retention.bytes", "-1"),
        ("min.cleanable.dirty.ratio", "0.25"),
        ("min.cleanable.dirty.ratio", "1"),
        ("cleanup.policy", "compact, delete"),
        ("preallocate", "TRUE"),
        ("local.retention.ms", "-2"),
        ("segment.bytes", "14"),
        ("message.timestamp.type", "LogAppendTime"),
    ],
)
def test_valid_topic_configs_pass(key: str, value: str) -> None:
    assert validate_topic_configs({key: value}) == {key: value}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max.message.bytes", str(INT32_MAX + 1)),  # int, not long
        ("max.message.bytes", "1099511627776"),
        ("max.message.bytes", "1.5"),
        ("max.message.bytes", "-1"),
        ("retention.ms", str(INT64_MAX + 1)),
        ("retention.ms", "-2"),
        ("retention.ms", "1e3"),
        ("segment.ms", "0"),
        ("segment.bytes", "13"),
        ("min.insync.replicas", "0"),
        ("flush.messages", "0"),
        ("delete.retention.ms", "-1"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("min.cleanable.dirty.ratio", "nan"),
        ("min.cleanable.dirty.ratio", "half"),
        ("preallocate", "yes"),
        ("cleanup.policy", "delete,forever"),
        ("cleanup.policy", ""),
        ("compression.type", "brotli"),
        ("message.timestamp.type", "createtime"),
        ("no.such.config", "1"),
    ],
)
def test_invalid_topic_configs_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_topic_configs({key: value})


# --- topic and partition limits ---------------------------------------------------------------


async def _registry(limits: TopicLimits) -> tuple[TopicRegistry, EmbeddedMetadataStore]:
    store = await EmbeddedMetadataStore.open(None)
    registry = TopicRegistry(store, Keys("limits"), limits)
    await registry.load()
    return registry, store


@pytest.mark.asyncio
async def test_limits_refuse_before_writing() -> None:
    registry, store = await _registry(TopicLimits(partitions_per_topic=10, partitions_per_broker=25, topics=3))
    try:
        await registry.create("__consumer_offsets", 12, 1, {})  # internal: exempt, but counted
        with pytest.raises(TopicError) as too_many:
            await registry.create("wide", 11, 1, {})
        assert too_many.value.code == ErrorCode.invalid_partitions
        assert "max.partitions.per.topic=10" in str(too_many.value)
        await registry.create("a", 10, 1, {})
        with pytest.raises(TopicError) as broker_full:
            await registry.create("b", 4, 1, {})  # 12 + 10 + 4 > 25
        assert broker_full.value.code == ErrorCode.policy_violation
        assert "max.partitions.per.broker=25" in str(broker_full.value)
        await registry.create("b", 3, 1, {})
        assert registry.partition_count == 25
        with pytest.raises(TopicError) as grow:
            await registry.add_partitions("b", 4)
        assert grow.value.code == ErrorCode.policy_violation
        with pytest.raises(TopicError) as topics:
            await registry.create("c", 1, 1, {})
        assert topics.value.code == ErrorCode.policy_violation
        assert "max.topics=3" in str(topics.value)
        # nothing of the refused ones reached the store, and the counts are what a reload finds
        names = sorted(Keys("limits").topic_name(i.key) for i in await store.list(Keys("limits").topics_prefix()))
        assert names == ["__consumer_offsets", "a", "b"]
        await registry.delete("a")
        assert registry.partition_count == 15
        await registry.load()
        assert (registry.partition_count, registry.topic_count) == (15, 2)
        with pytest.raises(TopicError) as wide:
            await registry.add_partitions("b", 16_711_683, validate_only=True)
        assert wide.value.code == ErrorCode.invalid_partitions
        await registry.add_partitions("b", 10)
        assert registry.get("b") is not None and registry.get("b").partitions == 10  # type: ignore[union-attr]
    finally:
        await store.close()
