"""Kafka's topic name rules: INVALID_TOPIC_EXCEPTION (17) at once from Metadata (with and without
auto-creation), Produce and CreateTopics, for every kind of illegal name and for '.'/'_' collisions with an
existing topic — and nothing created. Handlers run against a real Broker over in-memory ledgers."""

from __future__ import annotations

import datetime
import io
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.handlers import create_topics, metadata, produce
from brokers.handlers.base import RequestContext, make, response_module
from brokers.topics import MAX_NAME, TopicError, check_name, name_problem
from metadata.embedded import EmbeddedMetadataStore
from storage.objectstore import MemoryObjectStore
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

ILLEGAL = {
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "too long": "a" * (MAX_NAME + 1),
    "space": "bad name",
    "slash": "bad/name",
    "non-ASCII": "caf\u00e9",
    "colon": "a:b",
    "trailing newline": "orders\n",
    "control char": "tab\there",
    "asterisk": "a*b",
    "comma": "a,b",
}
LEGAL = ["a", "a" * MAX_NAME, "A.b_c-9", "...", "-", "_"]


def test_name_rules() -> None:
    for kind, name in ILLEGAL.items():
        assert name_problem(name) is not None, kind
        with pytest.raises(TopicError) as refused:
            check_name(name)
        assert refused.value.code == ErrorCode.invalid_topic_exception
    for name in LEGAL:
        assert name_problem(name) is None, name


@pytest_asyncio.fixture(params=[True, False], ids=["auto-create", "no-auto-create"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(data_dir=str(tmp_path), port=0).with_overrides(
        ["offload.enable=false", f"auto.create.topics.enable={str(request.param).lower()}"]
    )
    b = Broker(config, store, MemoryLedgerClient(), MemoryObjectStore())
    await b.start()
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


def rq(mod: ModuleType, version: int) -> ModuleType:
    return load_payload_module(mod.API_KEY, version, EntityType.request)


async def call(broker: Broker, mod: ModuleType, version: int, request: Any) -> Any:
    """Run a handler and decode its response from the bytes a client would read."""
    ctx = RequestContext(broker, mod.API_KEY, version, 7, "test", "127.0.0.1:1")
    response = await mod.handle(ctx, request)
    rmod = response_module(mod.API_KEY, version)
    cls = next(v for v in vars(rmod).values() if getattr(v, "__type__", None) == EntityType.response)
    if not isinstance(response, bytes):
        buf = io.BytesIO()
        entity_writer(cls)(buf, response)
        response = buf.getvalue()
    decoded, _ = entity_reader(cls)(response, 0)
    return decoded


async def _metadata(broker: Broker, version: int, names: list[str]) -> dict[str, int]:
    m = rq(metadata, version)
    topics = tuple(make(m.MetadataRequestTopic, name=n, topic_id=None) for n in names)
    request = make(m.MetadataRequest, topics=topics, allow_auto_topic_creation=True,
                   include_cluster_authorized_operations=False, include_topic_authorized_operations=False)
    response = await call(broker, metadata, version, request)
    return {t.name: t.error_code for t in response.topics}


def _user_topics(broker: Broker) -> list[str]:
    return [t.name for t in broker.topics.all() if not t.name.startswith("__")]


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [4, 9, 12])
async def test_metadata_answers_17_for_every_illegal_name_and_creates_nothing(broker: Broker, version: int) -> None:
    names = [n for n in ILLEGAL.values() if n]  # an empty name is legal on the wire; covered in Produce
    codes = await _metadata(broker, version, [*names, "fine"])
    assert {n: codes[n] for n in names} == dict.fromkeys(names, ErrorCode.invalid_topic_exception)
    auto = broker.config.auto_create_topics
    assert codes["fine"] == (ErrorCode.none if auto else ErrorCode.unknown_topic_or_partition)
    assert _user_topics(broker) == (["fine"] if auto else [])


@pytest.mark.asyncio
async def test_colliding_name_is_refused_by_metadata_and_create_topics(broker: Broker) -> None:
    await broker.topics.create("orders.eu", 1, 1, {})
    if broker.config.auto_create_topics:
        codes = await _metadata(broker, 12, ["orders_eu", "orders-eu"])
        assert codes == {"orders_eu": ErrorCode.invalid_topic_exception, "orders-eu": ErrorCode.none}
    m = rq(create_topics, 7)
    request = m.CreateTopicsRequest(topics=tuple(
        m.CreatableTopic(name=n, num_partitions=1, replication_factor=1, assignments=(), configs=())
        for n in ("orders_eu", "orders.eu", "..")
    ), validate_only=False, timeout=datetime.timedelta(seconds=5))
    response = await call(broker, create_topics, 7, request)
    results = {t.name: (t.error_code, t.error_message) for t in response.topics}
    assert results["orders_eu"] == (
        ErrorCode.invalid_topic_exception, "Topic 'orders_eu' collides with existing topic: orders.eu"
    )
    assert results["orders.eu"][0] == ErrorCode.topic_already_exists
    assert results[".."] == (ErrorCode.invalid_topic_exception, 'Topic name cannot be "." or ".."')
    assert "orders_eu" not in _user_topics(broker)
    await broker.topics.delete("orders.eu")  # once it is gone the other spelling may be created
    await broker.topics.create("orders_eu", 1, 1, {})


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [3, 9, 11])
async def test_produce_to_an_illegal_name_answers_17(broker: Broker, version: int) -> None:
    m = rq(produce, version)
    await broker.topics.create("orders.eu", 1, 1, {})
    names = [*ILLEGAL.values(), "missing", "orders_eu"]
    request = m.ProduceRequest(acks=-1, timeout=datetime.timedelta(seconds=5), transactional_id=None,
                               topic_data=tuple(
        m.TopicProduceData(name=n, partition_data=(m.PartitionProduceData(index=0, records=make_batch()),))
        for n in names
    ))
    response = await call(broker, produce, version, request)
    codes = {t.name: t.partition_responses[0].error_code for t in response.responses}
    assert codes == {**dict.fromkeys([*ILLEGAL.values(), "orders_eu"], ErrorCode.invalid_topic_exception),
                     "missing": ErrorCode.unknown_topic_or_partition}
    assert _user_topics(broker) == ["orders.eu"]  # Produce never creates topics
