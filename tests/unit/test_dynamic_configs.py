"""Dynamic configs on in-process brokers (brokers/dynamic_config.py; handlers alter_configs,
incremental_alter_configs, describe_configs): AlterConfigs replaces a resource's set; broker configs per broker
and cluster-wide, Kafka's refusals, sources and synonyms as DescribeConfigs reports them, and the live effect:
``Broker.config`` and a topic's effective configs follow a change at once, on the writer and on another broker
over the same store. Real clients over sockets: tests/e2e/test_dynamic_configs.py and
tests/cluster/test_dynamic_configs_cluster.py.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

import pytest
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.handlers import alter_configs, delete_records, describe_configs, incremental_alter_configs
from metadata.embedded import EmbeddedMetadataStore
from storage.ledger.api import LedgerClient
from tests.unit.test_admin_handlers import NODE, FakeLedgers, broker, call, rq  # noqa: F401  (fixture)

TOPIC, BROKER = 2, 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
pytestmark = pytest.mark.asyncio


async def replace(b: Broker, version: int, *resources: tuple[int, str, dict[str, str | None]],
                  validate_only: bool = False) -> list[tuple[str, ErrorCode, str | None]]:
    m = rq(alter_configs, version)
    request = m.AlterConfigsRequest(validate_only=validate_only, resources=tuple(
        m.AlterConfigsResource(resource_type=kind, resource_name=name, configs=tuple(
            m.AlterableConfig(name=k, value=v) for k, v in configs.items()))
        for kind, name, configs in resources))
    resp = await call(b, alter_configs, version, request)
    return [(r.resource_name, r.error_code, r.error_message) for r in resp.responses]


async def incremental(b: Broker, *resources: tuple[int, str, list[tuple[str, int, str | None]]]) -> list[ErrorCode]:
    m = rq(incremental_alter_configs, 1)
    request = m.IncrementalAlterConfigsRequest(validate_only=False, resources=tuple(
        m.AlterConfigsResource(resource_type=kind, resource_name=name, configs=tuple(
            m.AlterableConfig(name=k, config_operation=op, value=v) for k, op, v in ops))
        for kind, name, ops in resources))
    resp = await call(b, incremental_alter_configs, 1, request)
    return [r.error_code for r in resp.responses]


async def describe(b: Broker, kind: int, name: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    m = rq(describe_configs, 4)
    request = m.DescribeConfigsRequest(
        resources=(m.DescribeConfigsResource(resource_type=kind, resource_name=name, configuration_keys=keys),),
        include_synonyms=True, include_documentation=False)
    [result] = (await call(b, describe_configs, 4, request)).results
    assert result.error_code == ErrorCode.none, result.error_message
    return {c.name: c for c in result.configs}


def chain(entry: Any) -> list[tuple[str, str | None, int]]:
    return [(s.name, s.value, s.source) for s in entry.synonyms]


@pytest.mark.parametrize("version", [0, 2])
async def test_alter_configs_replaces_a_topics_set(broker: Broker, version: int) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {"retention.ms": "1000", "cleanup.policy": "compact"})
    got = await replace(broker, version, (TOPIC, "t", {"max.message.bytes": "2000", "segment.ms": None}))
    assert got == [("t", ErrorCode.none, None)]
    assert broker.topics.get("t").configs == {"max.message.bytes": "2000"}  # type: ignore[union-attr]
    entries = await describe(broker, TOPIC, "t", ("max.message.bytes", "retention.ms"))
    assert [(entries[k].value, entries[k].config_source) for k in ("max.message.bytes", "retention.ms")] == [
        ("2000", 1), ("604800000", 5)]
    got = await replace(broker, version, (TOPIC, "t", {"retention.ms": "5"}), validate_only=True)
    assert got == [("t", ErrorCode.none, None)]
    assert broker.topics.get("t").configs == {"max.message.bytes": "2000"}  # type: ignore[union-attr]


async def test_alter_configs_refusals(broker: Broker) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {})
    got = await replace(
        broker, 1,
        (TOPIC, "t", {"no.such.config": "1"}),
        (TOPIC, "missing", {"retention.ms": "1"}),
        (TOPIC, "..", {"retention.ms": "1"}),
        (BROKER, str(NODE), {"num.partitions": "3"}),  # static: Kafka's "Cannot update these configs dynamically"
        (BROKER, "", {"log.retention.ms": "soon"}),
        (BROKER, "0", {"no.such.broker.config": "1"}),
        (BROKER, "x", {"log.retention.ms": "1"}),
        (BROKER, "2147483648", {"log.retention.ms": "1"}),  # beyond an int32 broker id
        (7, "t", {}),
    )
    e = ErrorCode
    assert [code for _, code, _ in got] == [
        e.invalid_config, e.unknown_topic_or_partition, e.invalid_topic_exception, e.invalid_request,
        e.invalid_request, e.invalid_config, e.invalid_request, e.invalid_request, e.invalid_request]
    assert got[3][2] == "Cannot update these configs dynamically: [num.partitions]"
    assert "log.retention.ms" in (got[4][2] or "") and "ConfigResource(type=BROKER, name='')" in (got[4][2] or "")
    assert broker.topics.get("t").configs == {}  # type: ignore[union-attr]
    assert broker.dynamic.overrides(None) == {} and broker.dynamic.overrides(NODE) == {}


async def test_broker_configs_sources_synonyms_and_live_effect(broker: Broker) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {})
    assert broker.config.message_max_bytes == 1048588
    got = await replace(broker, 2, (BROKER, "", {"message.max.bytes": "3000000", "log.retention.ms": "60000"}))
    assert got == [("", ErrorCode.none, None)]
    assert broker.config.message_max_bytes == 3_000_000  # produce reads broker.config: bigger batches at once
    assert broker.dynamic.topic_configs({})["retention.ms"] == "60000"  # the next retention pass uses it
    assert await incremental(broker, (BROKER, str(NODE), [("message.max.bytes", SET, "4000000")])) == [ErrorCode.none]
    assert broker.config.message_max_bytes == 4_000_000  # this broker's value wins over the cluster default

    mine = await describe(broker, BROKER, str(NODE))
    assert (mine["message.max.bytes"].value, mine["message.max.bytes"].config_source) == ("4000000", 2)
    assert chain(mine["message.max.bytes"]) == [
        ("message.max.bytes", "4000000", 2), ("message.max.bytes", "3000000", 3), ("message.max.bytes", "1048588", 5)]
    assert (mine["log.retention.ms"].value, mine["log.retention.ms"].config_source) == ("60000", 3)
    assert not mine["log.retention.ms"].read_only and mine["num.partitions"].read_only
    default = await describe(broker, BROKER, "")
    assert {k: (c.value, c.config_source) for k, c in default.items()} == {
        "message.max.bytes": ("3000000", 3), "log.retention.ms": ("60000", 3)}
    topic = await describe(broker, TOPIC, "t", ("max.message.bytes", "retention.ms"))
    assert (topic["max.message.bytes"].value, topic["max.message.bytes"].config_source) == ("4000000", 2)
    assert chain(topic["retention.ms"]) == [("log.retention.ms", "60000", 3), ("log.retention.ms", "604800000", 5)]
    await incremental(broker, (TOPIC, "t", [("retention.ms", SET, "1000")]))
    assert broker.dynamic.topic_configs(broker.topics.get("t").configs)["retention.ms"] == "1000"  # type: ignore[union-attr]

    # DELETE goes back down the chain; AlterConfigs with nothing clears a resource
    assert await incremental(broker, (BROKER, str(NODE), [("message.max.bytes", DELETE, None)])) == [ErrorCode.none]
    assert broker.config.message_max_bytes == 3_000_000
    assert await replace(broker, 2, (BROKER, "", {})) == [("", ErrorCode.none, None)]
    assert broker.config.message_max_bytes == 1048588 and await describe(broker, BROKER, "") == {}


async def test_incremental_on_broker_resources(broker: Broker) -> None:  # noqa: F811
    e = ErrorCode
    got = await incremental(
        broker,
        (BROKER, "", [("log.cleanup.policy", APPEND, "compact")]),
        (BROKER, str(NODE), [("log.retention.ms", APPEND, "1")]),  # append only on list configs
        (BROKER, "5", [("advertised.listeners", SET, "PLAINTEXT://x:1")]),  # static
        (BROKER, "5", [("log.retention.bytes", SET, "1")]),  # named twice: both refused
    )
    assert got == [e.none, e.invalid_config, e.invalid_request, e.invalid_request]
    assert broker.dynamic.overrides(None) == {"log.cleanup.policy": "compact"}
    assert broker.dynamic.topic_configs({})["cleanup.policy"] == "compact"
    assert await incremental(broker, (BROKER, "", [("log.cleanup.policy", SUBTRACT, "compact")])) == [e.none]
    assert broker.dynamic.overrides(None) == {}  # an emptied list goes back to the default


async def test_another_broker_on_the_same_store_follows() -> None:
    """Two brokers over one store (a cluster's shape): a change written by one is applied by the other."""
    store = await EmbeddedMetadataStore.open(None)
    brokers = [Broker(BrokerConfig(node_id=n), store, cast(LedgerClient, FakeLedgers())) for n in (1, 2)]
    for b in brokers:
        await b.start()
    try:
        assert await replace(brokers[0], 1, (BROKER, "", {"message.max.bytes": "2000000"}),
                             (BROKER, "2", {"log.message.timestamp.type": "LogAppendTime"})) == [
            ("", ErrorCode.none, None), ("2", ErrorCode.none, None)]
        async with asyncio.timeout(10):
            while brokers[1].config.log_message_timestamp_type != "LogAppendTime":
                await asyncio.sleep(0.01)
        assert [b.config.message_max_bytes for b in brokers] == [2_000_000, 2_000_000]
        assert [b.config.log_message_timestamp_type for b in brokers] == ["CreateTime", "LogAppendTime"]
    finally:
        for b in brokers:
            await b.stop()
        await store.close()


async def test_delete_records_follows_the_broker_cleanup_policy(broker: Broker) -> None:  # noqa: F811
    """DeleteRecords needs "delete" in the effective cleanup.policy: the topic's, else the broker's (live)."""
    await broker.topics.create("t", 1, 1, {})
    assert await replace(broker, 2, (BROKER, "", {"log.cleanup.policy": "compact"})) == [("", ErrorCode.none, None)]
    m = rq(delete_records, 2)
    request = m.DeleteRecordsRequest(timeout=datetime.timedelta(seconds=5), topics=(m.DeleteRecordsTopic(
        name="t", partitions=(m.DeleteRecordsPartition(partition_index=0, offset=0),)),))
    [topic] = (await call(broker, delete_records, 2, request)).topics
    assert topic.partitions[0].error_code == ErrorCode.policy_violation
