"""Admin API handlers against a real Broker over the in-memory metadata store; every response round-trips."""

from __future__ import annotations

import asyncio
import datetime
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any, cast

import pytest
import pytest_asyncio
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from brokers.broker import Broker
from brokers.config import TOPIC_CONFIG_DEFAULTS, BrokerConfig
from brokers.dynamic_config import DYNAMIC_BROKER_CONFIGS
from brokers.handlers import create_partitions, create_topics, delete_topics, describe_cluster, describe_configs
from brokers.handlers.base import RequestContext
from brokers.routing import Endpoint
from metadata.embedded import EmbeddedMetadataStore
from metadata.models import LedgerRef, PartitionState
from storage.ledger.api import LedgerClient
from tests.fake_routing import FakeRouting

ADMIN = (create_topics, delete_topics, create_partitions, describe_configs, describe_cluster)
NODE, HOST, PORT = 3, "broker-3.example", 19092
TIMEOUT = datetime.timedelta(seconds=30)
pytestmark = pytest.mark.asyncio


class FakeLedgers:
    """Admin operations use only delete_ledger (topic deletion, in the background)."""

    def __init__(self) -> None:
        self.deleted: list[int] = []

    async def delete_ledger(self, ledger_id: int) -> None:
        self.deleted.append(ledger_id)


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(node_id=NODE, advertised_host=HOST, advertised_port=PORT, num_partitions=2,
                          default_replication_factor=3, **overrides)
    broker = Broker(config, store, cast(LedgerClient, FakeLedgers()))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        await store.close()


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running() as b:
        yield b


def rq(mod: ModuleType, version: int) -> ModuleType:
    """kio's request classes of one version of a handler's API."""
    return load_payload_module(mod.API_KEY, version, EntityType.request)


async def call(broker: Broker, mod: ModuleType, version: int, request: Any) -> Any:
    """Run a handler, then prove its response encodes and decodes back to itself."""
    ctx = RequestContext(broker, mod.API_KEY, version, 7, "test", "127.0.0.1:1")
    response = await mod.handle(ctx, request)
    assert type(response).__version__ == version
    buf = io.BytesIO()
    entity_writer(type(response))(buf, response)
    decoded, _ = entity_reader(type(response))(buf.getvalue(), 0)
    assert decoded == response
    return response


async def test_versions_exist_in_kio() -> None:
    for mod in ADMIN:
        for v in range(mod.MIN_VERSION, mod.MAX_VERSION + 1):
            load_payload_module(mod.API_KEY, v, EntityType.request)
            load_payload_module(mod.API_KEY, v, EntityType.response)


def creatable(m: ModuleType, name: str, partitions: int = -1, rf: int = -1, assignments: Any = (),
              **configs: str | None) -> Any:
    return m.CreatableTopic(name=name, num_partitions=partitions, replication_factor=rf, assignments=assignments,
                            configs=tuple(m.CreatableTopicConfig(name=k.replace("_", "."), value=v)
                                          for k, v in configs.items()))


async def create(broker: Broker, version: int, *topics: Any, validate_only: bool = False) -> list[Any]:
    m = rq(create_topics, version)
    resp = await call(broker, create_topics, version, m.CreateTopicsRequest(topics=topics, validate_only=validate_only))
    return list(resp.topics)


@pytest.mark.parametrize("version", range(2, 8))
async def test_create_topics_defaults_and_configs(broker: Broker, version: int) -> None:
    m = rq(create_topics, version)
    [res] = await create(broker, version, creatable(m, "orders", retention_ms="1000"))
    assert (res.name, res.error_code, res.error_message) == ("orders", ErrorCode.none, None)
    topic = broker.topics.get("orders")
    assert topic is not None
    assert (topic.partitions, topic.replication_factor, topic.configs) == (2, 3, {"retention.ms": "1000"})
    if version >= 5:
        assert (res.num_partitions, res.replication_factor) == (2, 3)
        configs = {c.name: c for c in res.configs}
        assert set(configs) == set(TOPIC_CONFIG_DEFAULTS)
        assert [(configs[k].value, configs[k].config_source) for k in ("retention.ms", "cleanup.policy")] == [
            ("1000", 1), ("delete", 5)]
        assert not any(c.read_only or c.is_sensitive for c in res.configs)
    if version >= 7:
        assert res.topic_id == uuid.UUID(topic.topic_id)
    [res] = await create(broker, version, creatable(m, "dry", partitions=4, rf=1), validate_only=True)
    assert (res.error_code, broker.topics.get("dry")) == (ErrorCode.none, None)
    if version >= 5:
        assert (res.num_partitions, res.replication_factor) == (4, 1)


@pytest.mark.parametrize("version", [2, 7])
async def test_create_topics_errors(broker: Broker, version: int) -> None:
    m = rq(create_topics, version)
    await create(broker, version, creatable(m, "taken"))

    def assign(*parts: tuple[int, tuple[int, ...]]) -> Any:
        return tuple(m.CreatableReplicaAssignment(partition_index=p, broker_ids=b) for p, b in parts)

    e = ErrorCode
    cases = [
        (e.invalid_request, creatable(m, "dup")), (e.topic_already_exists, creatable(m, "taken")),
        (e.invalid_request, creatable(m, "dup", partitions=3)),
        (e.invalid_config, creatable(m, "badkey", no_such_config="1")),
        (e.invalid_config, creatable(m, "nulls", retention_ms=None)),
        (e.invalid_config, creatable(m, "badvalue", cleanup_policy="sometimes")),
        (e.invalid_topic_exception, creatable(m, "bad name")), (e.invalid_partitions, creatable(m, "zero", 0)),
        (e.invalid_replication_factor, creatable(m, "norf", rf=0)),
        (e.invalid_request, creatable(m, "both", partitions=2, assignments=assign((0, (1,))))),
        (e.invalid_replica_assignment, creatable(m, "gap", assignments=assign((0, (1,)), (2, (1,))))),
        (e.none, creatable(m, "manual", assignments=assign((1, (1, 2)), (0, (2, 1)), (2, (1, 2))))),
    ]
    results = await create(broker, version, *(topic for _, topic in cases))
    expected = list(dict.fromkeys((topic.name, code) for code, topic in cases))  # a duplicate is reported once
    assert [(r.name, r.error_code) for r in results] == expected
    assert all(r.error_message for r in results[:-1]) and results[-1].error_message is None
    assert "no.such.config" in results[2].error_message
    manual = broker.topics.get("manual")
    assert manual is not None and (manual.partitions, manual.replication_factor) == (3, 2)
    assert broker.topics.get("dup") is None and broker.topics.get("badkey") is None


async def with_ledger(broker: Broker, name: str, ledger_id: int) -> str:
    """Create a topic whose partition 0 holds one closed ledger; returns the topic id."""
    topic = await broker.topics.create(name, 1, 1, {})
    state = PartitionState(ledgers=(LedgerRef(ledger_id, 0, 9, 1, True),))
    await broker.store.put(broker.keys.partition(topic.topic_id, 0), state.encode())
    return topic.topic_id


@pytest.mark.parametrize("version", range(1, 7))
async def test_delete_topics_by_name(broker: Broker, version: int) -> None:
    topic_id = await with_ledger(broker, "gone", 41)
    m = rq(delete_topics, version)
    names = ("gone", "never")
    states = tuple(m.DeleteTopicState(name=n, topic_id=None) for n in names) if version >= 6 else ()
    request = m.DeleteTopicsRequest(topics=states, timeout=TIMEOUT) if version >= 6 else \
        m.DeleteTopicsRequest(topic_names=names, timeout=TIMEOUT)
    resp = await call(broker, delete_topics, version, request)
    assert [r.error_code for r in resp.responses] == [ErrorCode.none, ErrorCode.unknown_topic_or_partition]
    assert broker.topics.get("gone") is None
    assert await broker.store.list(broker.keys.partitions_prefix(topic_id)) == []
    await asyncio.sleep(0.01)  # the ledgers are deleted in the background
    assert isinstance(broker.ledgers, FakeLedgers) and broker.ledgers.deleted == [41]


async def test_delete_topics_v6_by_id(broker: Broker) -> None:
    gone = await with_ledger(broker, "gone", 1)
    kept_id = uuid.UUID((await broker.topics.create("kept", 1, 1, {})).topic_id)
    m, unknown = rq(delete_topics, 6), uuid.uuid4()
    asks = [(None, uuid.UUID(gone)), (None, unknown), ("kept", kept_id), ("twice", None), ("twice", None)]
    states = tuple(m.DeleteTopicState(name=n, topic_id=i) for n, i in asks)
    resp = await call(broker, delete_topics, 6, m.DeleteTopicsRequest(topics=states, timeout=TIMEOUT))
    e = ErrorCode
    assert [(r.name, r.topic_id, r.error_code) for r in resp.responses] == [
        ("gone", uuid.UUID(gone), e.none), (None, unknown, e.unknown_topic_id),
        ("kept", kept_id, e.invalid_request), ("twice", None, e.invalid_request)]
    assert all(r.error_message for r in resp.responses[1:])
    assert broker.topics.get("gone") is None and broker.topics.get("kept") is not None


@pytest.mark.parametrize("version", [0, 3])
async def test_create_partitions(broker: Broker, version: int) -> None:
    for name in ("grow", "dry", "shrink", "same", "placed", "misplaced"):
        await broker.topics.create(name, 2, 1, {})
    m = rq(create_partitions, version)
    one = (m.CreatePartitionsAssignment(broker_ids=(NODE,)),)
    asks = [("grow", 5, None), ("shrink", 1, None), ("same", 2, None), ("missing", 3, None), ("twice", 3, None),
            ("twice", 4, None), ("placed", 3, one), ("misplaced", 4, one), ("dry", 9, None)]

    async def grow(*asks: tuple[str, int, Any], validate_only: bool = False) -> Any:
        topics = tuple(m.CreatePartitionsTopic(name=n, count=c, assignments=a) for n, c, a in asks)
        request = m.CreatePartitionsRequest(topics=topics, timeout=TIMEOUT, validate_only=validate_only)
        return await call(broker, create_partitions, version, request)

    resp = await grow(*asks[:-1])
    assert [(r.name, r.error_code) for r in resp.results] == [
        ("grow", ErrorCode.none), ("shrink", ErrorCode.invalid_partitions), ("same", ErrorCode.invalid_partitions),
        ("missing", ErrorCode.unknown_topic_or_partition), ("twice", ErrorCode.invalid_request),
        ("placed", ErrorCode.none), ("misplaced", ErrorCode.invalid_replica_assignment),
    ]
    assert all(r.error_message for r in resp.results if r.error_code != ErrorCode.none)
    partitions = {t.name: t.partitions for t in broker.topics.all()}
    assert (partitions["grow"], partitions["shrink"], partitions["placed"], partitions["misplaced"]) == (5, 2, 3, 2)
    resp = await grow(asks[-1], validate_only=True)
    assert resp.results[0].error_code == ErrorCode.none
    assert partitions["dry"] == 2 and broker.topics.get("dry").partitions == 2  # type: ignore[union-attr]


def describe(m: ModuleType, *resources: tuple[int, str, tuple[str, ...] | None], synonyms: bool = False) -> Any:
    return m.DescribeConfigsRequest(
        resources=tuple(m.DescribeConfigsResource(resource_type=t, resource_name=n, configuration_keys=k)
                        for t, n, k in resources),
        include_synonyms=synonyms,
    )


@pytest.mark.parametrize("version", [1, 4])
@pytest.mark.parametrize("synonyms", [False, True])
async def test_describe_configs_topic(broker: Broker, version: int, synonyms: bool) -> None:
    await broker.topics.create("t", 1, 1, {"retention.ms": "5000"})
    m = rq(describe_configs, version)
    resp = await call(broker, describe_configs, version, describe(
        m, (2, "t", None), (2, "t", ("retention.ms", "segment.ms", "no.such")), (2, "missing", None),
        (2, "bad/name", None), synonyms=synonyms))
    full, some, missing, bad = resp.results
    assert (full.error_code, full.error_message) == (ErrorCode.none, None)
    configs = {c.name: c for c in full.configs}
    assert set(configs) == set(TOPIC_CONFIG_DEFAULTS)
    retention, segment = configs["retention.ms"], configs["segment.ms"]
    assert (retention.value, retention.config_source, retention.read_only) == ("5000", 1, False)
    assert (segment.value, segment.config_source) == (TOPIC_CONFIG_DEFAULTS["segment.ms"], 5)
    assert [c.name for c in some.configs] == ["retention.ms", "segment.ms"]
    assert [(s.name, s.value, s.source) for s in retention.synonyms] == (
        [("retention.ms", "5000", 1), ("log.retention.ms", "604800000", 5)] if synonyms else [])
    assert synonyms or all(c.synonyms == () for c in full.configs)
    if version >= 3:
        types = [configs[k].config_type for k in ("retention.ms", "preallocate", "cleanup.policy", "segment.bytes")]
        assert types == [5, 1, 7, 3] and retention.documentation is None
    assert (missing.error_code, missing.configs, bad.error_code) == (
        ErrorCode.unknown_topic_or_partition, (), ErrorCode.invalid_topic_exception)


@pytest.mark.parametrize("version", [1, 4])
async def test_describe_configs_broker(broker: Broker, version: int) -> None:
    m = rq(describe_configs, version)
    resp = await call(broker, describe_configs, version, describe(
        m, (4, str(NODE), None), (4, "", None), (4, "9", None), (4, "x", None), (4, str(NODE), ("num.partitions",)),
        (8, str(NODE), None), synonyms=True))
    mine, default, other, junk, one, logger = resp.results
    configs = {c.name: c for c in mine.configs}
    assert set(configs) == set(broker.config.broker_configs()) | set(DYNAMIC_BROKER_CONFIGS)
    assert {name for name, c in configs.items() if not c.read_only} == set(DYNAMIC_BROKER_CONFIGS)
    assert [(s.name, s.value, s.source) for s in configs["num.partitions"].synonyms] == [
        ("num.partitions", "2", 4), ("num.partitions", "1", 5)]  # set at start, then Kafka's default
    assert [(configs[k].value, configs[k].config_source) for k in ("broker.id", "fetch.max.bytes", "log.retention.ms")
            ] == [(str(NODE), 4), (str(55 * 1024 * 1024), 5), ("604800000", 5)]
    assert (mine.error_code, default.error_code, default.configs) == (ErrorCode.none, ErrorCode.none, ())
    assert [r.error_code for r in (other, junk, logger)] == [ErrorCode.invalid_request] * 3
    assert [c.name for c in one.configs] == ["num.partitions"]


async def test_topic_default_follows_broker_setting() -> None:
    async with running(message_max_bytes=2_000_000) as broker:
        await broker.topics.create("t", 1, 1, {})
        m = rq(describe_configs, 4)
        resp = await call(broker, describe_configs, 4, describe(m, (2, "t", ("max.message.bytes",)), synonyms=True))
        [entry] = resp.results[0].configs
        assert (entry.value, entry.config_source) == ("2000000", 4)
        assert [s.name for s in entry.synonyms] == ["message.max.bytes", "message.max.bytes"]


@pytest.mark.parametrize("version", [0, 2])
async def test_describe_cluster(broker: Broker, version: int) -> None:
    m = rq(describe_cluster, version)
    extra: dict[str, Any] = {"include_cluster_authorized_operations": False}
    extra.update({"include_fenced_brokers": True} if version >= 2 else {})
    resp = await call(broker, describe_cluster, version, m.DescribeClusterRequest(**extra))
    assert (resp.error_code, resp.cluster_id, resp.controller_id) == (ErrorCode.none, broker.cluster_id, NODE)
    assert broker.cluster_id and [(b.broker_id, b.host, b.port, b.rack) for b in resp.brokers] == [
        (NODE, HOST, PORT, None)]  # embedded: itself only, as in Metadata
    routing = FakeRouting(NODE, {NODE: Endpoint(NODE, HOST, PORT), 5: Endpoint(5, "other", 9093, "rack-b")},
                          controller=5)
    broker.routing = routing  # a cluster broker: the live brokers and the controller as routing knows them
    resp = await call(broker, describe_cluster, version, m.DescribeClusterRequest(**extra))
    assert resp.controller_id == 5
    assert [(b.broker_id, b.host, b.port, b.rack) for b in resp.brokers] == [
        (NODE, HOST, PORT, None), (5, "other", 9093, "rack-b")]
    assert resp.cluster_authorized_operations == -(2**31)
    extra["include_cluster_authorized_operations"] = True
    resp = await call(broker, describe_cluster, version, m.DescribeClusterRequest(**extra))
    assert resp.cluster_authorized_operations == 0b1111110100000
    if version >= 1:
        resp = await call(broker, describe_cluster, version, m.DescribeClusterRequest(endpoint_type=2, **extra))
        assert (resp.error_code, resp.endpoint_type, resp.brokers) == (ErrorCode.unsupported_endpoint_type, 2, ())
