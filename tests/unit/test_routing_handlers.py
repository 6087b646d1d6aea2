"""Partition handlers read leadership through ``broker.routing``: NOT_LEADER_OR_FOLLOWER with KIP-951 hints,
leader-epoch fencing, and Metadata/FindCoordinator/DescribeConfigs answers for a cluster view (an in-memory
FakeRouting standing in for the etcd-fed one) as well as for the embedded broker's SingleBroker.

Every response is encoded and decoded back with kio (what a client would read)."""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import AsyncIterator
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
from brokers.handlers import (
    describe_configs,
    fetch,
    find_coordinator,
    list_offsets,
    metadata,
    offset_for_leader_epoch,
    produce,
)
from brokers.handlers.base import RequestContext, response_module
from brokers.routing import Endpoint, Leader
from brokers.single_routing import SingleBroker
from metadata.embedded import EmbeddedMetadataStore
from tests.batches import make_batch
from tests.fake_routing import FakeRouting
from tests.memory_ledgers import MemoryLedgerClient

NODE, HOST, PORT = 3, "broker-3.example", 19092
OTHER = Endpoint(5, "broker-5.example", 19095, "rack-b")
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(node_id=NODE, advertised_host=HOST, advertised_port=PORT, num_partitions=3)
    b = Broker(config, store, MemoryLedgerClient())
    await b.start()
    await b.topics.create("t", 3, 1, {})
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


def _cluster(broker: Broker) -> FakeRouting:
    """Make ``broker`` a cluster broker: node 3 of {3, 5}; 5 is the controller; partitions not loaded aren't
    taken on first use. Partition 0 of ``t`` is led by this broker (epoch as loaded), 1 by node 5 at epoch 7,
    2 by no one."""
    routing = FakeRouting(NODE, {NODE: Endpoint(NODE, HOST, PORT), OTHER.node_id: OTHER}, controller=OTHER.node_id)
    broker.routing = routing
    broker.logs.take_on_first_use = False
    return routing


def rq(api_key: int, version: int) -> ModuleType:
    return load_payload_module(api_key, version, EntityType.request)


async def call(broker: Broker, mod: ModuleType, version: int, request: Any) -> Any:
    """Run a handler and decode its response from the bytes a client would read."""
    ctx = RequestContext(broker, mod.API_KEY, version, 7, "test", "127.0.0.1:1")
    response = await mod.handle(ctx, request)
    cls = response_module(mod.API_KEY, version).__dict__[_response_class(mod.API_KEY, version)]
    if isinstance(response, bytes):  # Metadata: an encoded body
        decoded, _ = entity_reader(cls)(response, 0)
        return decoded
    buf = io.BytesIO()
    entity_writer(cls)(buf, response)
    decoded, _ = entity_reader(cls)(buf.getvalue(), 0)
    assert decoded == response
    return decoded


def _response_class(api_key: int, version: int) -> str:
    mod = response_module(api_key, version)
    return next(n for n, v in vars(mod).items() if getattr(v, "__type__", None) == EntityType.response)


async def _produce(broker: Broker, version: int, partition: int) -> Any:
    m = rq(0, version)
    request = m.ProduceRequest(acks=-1, timeout=datetime.timedelta(seconds=5), topic_data=(
        m.TopicProduceData(name="t", partition_data=(m.PartitionProduceData(index=partition, records=make_batch()),)),
    ))
    response = await call(broker, produce, version, request)
    return response


async def _fetch(broker: Broker, version: int, partition: int, epoch: int = -1) -> Any:
    m = rq(1, version)
    topic = broker.topics.get("t")
    assert topic is not None
    part = m.FetchPartition(partition=partition, current_leader_epoch=epoch, fetch_offset=0,
                            partition_max_bytes=1 << 20)
    ref = {"topic_id": uuid.UUID(topic.topic_id)} if version >= 13 else {"topic": "t"}
    request = m.FetchRequest(max_wait=datetime.timedelta(0), min_bytes=1, topics=(m.FetchTopic(**ref,
                             partitions=(part,)),), forgotten_topics_data=())
    return await call(broker, fetch, version, request)


def _topic_id(broker: Broker) -> str:
    topic = broker.topics.get("t")
    assert topic is not None
    return topic.topic_id


@pytest.mark.parametrize("version", [9, 10, 12])
async def test_produce_not_leader_names_the_leader_from_v10(broker: Broker, version: int) -> None:
    routing = _cluster(broker)
    tid = _topic_id(broker)
    routing.set_leader(tid, 1, OTHER.node_id, 7)
    routing.set_leader(tid, 2, None)
    for partition, leader in ((1, (5, 7)), (2, (-1, -1))):
        resp = await _produce(broker, version, partition)
        [part] = resp.responses[0].partition_responses
        assert part.error_code == ErrorCode.not_leader_or_follower
        if version >= 10:
            assert (part.current_leader.leader_id, part.current_leader.leader_epoch) == leader
            endpoints = [(e.node_id, e.host, e.port, e.rack) for e in resp.node_endpoints]
            assert endpoints == ([(5, OTHER.host, OTHER.port, "rack-b")] if partition == 1 else [])
        else:
            assert not hasattr(part, "current_leader")
    assert broker.logs.loaded(tid, 1) is None  # nothing was taken over


async def test_produce_served_then_not_once_routing_moves_it(broker: Broker) -> None:
    tid = _topic_id(broker)
    plog = await broker.logs.get(tid, 0)  # taken (as ownership would) before the broker turns cluster
    routing = _cluster(broker)
    routing.set_leader(tid, 0, NODE, plog.epoch)
    resp = await _produce(broker, 10, 0)
    assert resp.responses[0].partition_responses[0].error_code == ErrorCode.none
    routing.set_leader(tid, 0, OTHER.node_id, plog.epoch + 1)  # moved away (its log not yet released here)
    part = (await _produce(broker, 10, 0)).responses[0].partition_responses[0]
    assert (part.error_code, part.current_leader.leader_id, part.current_leader.leader_epoch) == (
        ErrorCode.not_leader_or_follower, 5, plog.epoch + 1)


async def test_owned_but_not_loaded_is_not_leader_naming_itself(broker: Broker) -> None:
    """Routing says this broker owns it, but the take has not finished: not served, and not loaded by a
    request either (that is ownership's job)."""
    routing = _cluster(broker)
    tid = _topic_id(broker)
    routing.set_leader(tid, 0, NODE, 4)
    part = (await _produce(broker, 12, 0)).responses[0].partition_responses[0]
    assert (part.error_code, part.current_leader.leader_id, part.current_leader.leader_epoch) == (
        ErrorCode.not_leader_or_follower, NODE, 4)
    assert broker.logs.loaded(tid, 0) is None


@pytest.mark.parametrize("version", [11, 12, 13, 16])
async def test_fetch_not_leader_hints_from_v12_endpoints_from_v16(broker: Broker, version: int) -> None:
    routing = _cluster(broker)
    routing.set_leader(_topic_id(broker), 1, OTHER.node_id, 7)
    resp = await _fetch(broker, version, 1)
    [part] = resp.responses[0].partitions
    assert (part.error_code, part.high_watermark) == (ErrorCode.not_leader_or_follower, -1)
    if version >= 12:
        assert (part.current_leader.leader_id, part.current_leader.leader_epoch) == (5, 7)
    else:
        assert not hasattr(part, "current_leader")
    if version >= 16:
        assert [(e.node_id, e.host, e.port, e.rack) for e in resp.node_endpoints] == [
            (5, OTHER.host, OTHER.port, "rack-b")]


async def test_leader_epoch_checks(broker: Broker) -> None:
    """An older epoch than the partition's is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH, -1 and
    the current one are served (Fetch v9+, ListOffsets v4+, OffsetForLeaderEpoch)."""
    tid = _topic_id(broker)
    plog = await broker.logs.get(tid, 0)
    epoch = plog.epoch
    expected = {-1: ErrorCode.none, epoch: ErrorCode.none, epoch - 1: ErrorCode.fenced_leader_epoch,
                epoch + 1: ErrorCode.unknown_leader_epoch}
    for asked, code in expected.items():
        part = (await _fetch(broker, 12, 0, asked)).responses[0].partitions[0]
        assert part.error_code == code, asked
        if code == ErrorCode.fenced_leader_epoch:  # Kafka hints the leader on fencing too
            assert (part.current_leader.leader_id, part.current_leader.leader_epoch) == (NODE, epoch)
        m = rq(2, 9)
        lo = m.ListOffsetsRequest(replica_id=-1, isolation_level=0, topics=(m.ListOffsetsTopic(name="t", partitions=(
            m.ListOffsetsPartition(partition_index=0, current_leader_epoch=asked, timestamp=-1),)),))
        lpart = (await call(broker, list_offsets, 9, lo)).topics[0].partitions[0]
        assert lpart.error_code == code, asked
        assert lpart.leader_epoch == (epoch if code == ErrorCode.none else -1)
        m = rq(23, 4)
        oe = m.OffsetForLeaderEpochRequest(topics=(m.OffsetForLeaderTopic(topic="t", partitions=(
            m.OffsetForLeaderPartition(partition=0, current_leader_epoch=asked, leader_epoch=epoch),)),))
        opart = (await call(broker, offset_for_leader_epoch, 4, oe)).topics[0].partitions[0]
        assert opart.error_code == code, asked


@pytest.mark.parametrize("version", [2, 3, 4])
async def test_offset_for_leader_epoch_answers(broker: Broker, version: int) -> None:
    tid = _topic_id(broker)
    plog = await broker.logs.get(tid, 0)
    await (await plog.append(*_validated(make_batch(records=4))))
    m = rq(23, version)

    async def ask(partition: int, epoch: int) -> tuple[ErrorCode, int, int]:
        req = m.OffsetForLeaderEpochRequest(topics=(m.OffsetForLeaderTopic(topic="t", partitions=(
            m.OffsetForLeaderPartition(partition=partition, leader_epoch=epoch),)),))
        p = (await call(broker, offset_for_leader_epoch, version, req)).topics[0].partitions[0]
        return p.error_code, p.leader_epoch, p.end_offset

    assert await ask(0, plog.epoch) == (ErrorCode.none, plog.epoch, 4)  # the current epoch ends at the log end
    assert await ask(0, plog.epoch + 1) == (ErrorCode.none, -1, -1)  # above every known epoch
    assert await ask(0, -1) == (ErrorCode.none, -1, -1)
    assert (await ask(9, 1))[0] == ErrorCode.unknown_topic_or_partition
    routing = _cluster(broker)
    routing.set_leader(tid, 1, OTHER.node_id, 7)
    assert (await ask(1, 1))[0] == ErrorCode.not_leader_or_follower


def _validated(records: bytes) -> tuple[bytes, list[Any]]:
    from brokers.codec.batch import validate

    return records, validate(records)


async def test_metadata_from_routing(broker: Broker) -> None:
    """Several brokers, the controller, owners: this broker, another, none (LEADER_NOT_AVAILABLE, no replicas)."""
    routing = _cluster(broker)
    tid = _topic_id(broker)
    routing.set_leader(tid, 0, NODE, 2)
    routing.set_leader(tid, 1, OTHER.node_id, 7)
    m = rq(3, 12)
    request = m.MetadataRequest(topics=(m.MetadataRequestTopic(topic_id=None, name="t"),),
                                include_topic_authorized_operations=False)
    for version in (0, 1, 7, 9, 12):
        resp = await call(broker, metadata, version, _metadata_request(version))
        assert [(b.node_id, b.host, b.port) for b in resp.brokers] == [(NODE, HOST, PORT), (5, OTHER.host, OTHER.port)]
        if version >= 1:
            assert resp.controller_id == 5
            assert [b.rack for b in resp.brokers] == [None, "rack-b"]
        [topic] = resp.topics
        got = [(p.error_code, p.leader_id, p.replica_nodes, p.isr_nodes) for p in topic.partitions]
        assert got == [(ErrorCode.none, NODE, (NODE,), (NODE,)), (ErrorCode.none, 5, (5,), (5,)),
                       (ErrorCode.leader_not_available, -1, (), ())], version
        if version >= 7:
            assert [p.leader_epoch for p in topic.partitions] == [2, 7, -1]
    # a move is seen at once (the cached topic bytes are keyed by the routing generation)
    routing.set_leader(tid, 2, OTHER.node_id, 1)
    resp = await call(broker, metadata, 12, request)
    assert [(p.leader_id, p.leader_epoch) for p in resp.topics[0].partitions] == [(NODE, 2), (5, 7), (5, 1)]


def _metadata_request(version: int) -> Any:
    m = rq(3, version)
    wanted = m.MetadataRequestTopic(name="t", **({"topic_id": None} if version >= 10 else {}))
    extra: dict[str, Any] = {}
    if version >= 4:
        extra["allow_auto_topic_creation"] = False
    if 8 <= version:
        extra["include_topic_authorized_operations"] = False
    if 8 <= version <= 10:
        extra["include_cluster_authorized_operations"] = False
    return m.MetadataRequest(topics=(wanted,), **extra)


async def test_metadata_embedded_epoch_follows_the_loaded_log(broker: Broker) -> None:
    assert isinstance(broker.routing, SingleBroker)
    tid = _topic_id(broker)
    resp = await call(broker, metadata, 12, _metadata_request(12))
    assert [(p.leader_id, p.leader_epoch) for p in resp.topics[0].partitions] == [(NODE, -1)] * 3
    plog = await broker.logs.get(tid, 1)
    resp = await call(broker, metadata, 12, _metadata_request(12))
    assert [(p.leader_id, p.leader_epoch) for p in resp.topics[0].partitions] == [
        (NODE, -1), (NODE, plog.epoch), (NODE, -1)]
    assert broker.routing.leader(tid, 1) == Leader(NODE, plog.epoch)


async def test_find_coordinator_names_the_offsets_partition_leader(broker: Broker) -> None:
    m = rq(10, 4)
    request = m.FindCoordinatorRequest(key_type=0, coordinator_keys=("g1",))
    [c] = (await call(broker, find_coordinator, 4, request)).coordinators
    assert (c.error_code, c.node_id, c.host, c.port) == (ErrorCode.none, NODE, HOST, PORT)  # embedded: itself
    routing = _cluster(broker)
    offsets = broker.topics.get("__consumer_offsets")
    assert offsets is not None
    partition = broker.groups.partition_for("g1")
    routing.set_leader(offsets.topic_id, partition, OTHER.node_id, 3)
    [c] = (await call(broker, find_coordinator, 4, request)).coordinators
    assert (c.error_code, c.node_id, c.host, c.port) == (ErrorCode.none, 5, OTHER.host, OTHER.port)
    v3 = rq(10, 3)
    old = await call(broker, find_coordinator, 3, v3.FindCoordinatorRequest(key="g1", key_type=0))
    assert (old.error_code, old.node_id, old.port) == (ErrorCode.none, 5, OTHER.port)
    routing.set_leader(offsets.topic_id, partition, None)
    [c] = (await call(broker, find_coordinator, 4, request)).coordinators
    assert (c.error_code, c.node_id) == (ErrorCode.coordinator_not_available, -1)
    routing.set_leader(offsets.topic_id, partition, 9, 1)  # an owner that is not a live broker
    [c] = (await call(broker, find_coordinator, 4, request)).coordinators
    assert c.error_code == ErrorCode.coordinator_not_available


async def test_describe_configs_broker_resource_is_answered_by_that_broker(broker: Broker) -> None:
    _cluster(broker)
    m = rq(32, 4)

    def one(name: str) -> Any:
        return m.DescribeConfigsRequest(resources=(m.DescribeConfigsResource(
            resource_type=4, resource_name=name, configuration_keys=("broker.id",)),), include_synonyms=False,
            include_documentation=False)

    [mine] = (await call(broker, describe_configs, 4, one(str(NODE)))).results
    assert (mine.error_code, [(c.name, c.value) for c in mine.configs]) == (ErrorCode.none, [("broker.id", "3")])
    [other] = (await call(broker, describe_configs, 4, one("5"))).results  # a live broker, but not this one
    assert (other.error_code, other.configs) == (ErrorCode.invalid_request, ())
    assert other.error_message == "Unexpected broker id, expected 3 or empty string, but received 5"
