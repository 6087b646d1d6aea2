"""DescribeLogDirs, AlterReplicaLogDirs, ElectLeaders, DescribeTopicPartitions and DescribeProducers against a
real Broker (in-memory metadata and ledgers), as the embedded broker and as a cluster broker (FakeRouting
standing in for the etcd-fed view). Every response is encoded and decoded back with kio, as a client reads it.
"""

from __future__ import annotations

import asyncio
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
from brokers.handlers import (
    alter_replica_log_dirs,
    describe_log_dirs,
    describe_producers,
    describe_topic_partitions,
    elect_leaders,
    produce,
)
from brokers.handlers.base import RequestContext
from brokers.routing import Endpoint
from metadata.embedded import EmbeddedMetadataStore
from metadata.models import Reassignment, TopicAssignment
from storage.objectstore import MemoryObjectStore
from tests.batches import make_batch
from tests.fake_routing import FakeRouting
from tests.memory_ledgers import MemoryLedgerClient

NODE, HOST, PORT = 3, "broker-3.example", 19092
OTHER = Endpoint(5, "broker-5.example", 19095)
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(node_id=NODE, advertised_host=HOST, advertised_port=PORT, data_dir=str(tmp_path))
    b = Broker(config, store, MemoryLedgerClient(), MemoryObjectStore())
    await b.start()
    await b.topics.create("t", 3, 1, {})
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


def rq(mod: ModuleType, version: int) -> ModuleType:
    return load_payload_module(mod.API_KEY, version, EntityType.request)


async def call(broker: Broker, mod: ModuleType, version: int, request: Any) -> Any:
    """Run a handler; its response as a client decodes it."""
    response = await mod.handle(RequestContext(broker, mod.API_KEY, version, 7, "test", "127.0.0.1:1"), request)
    if isinstance(response, bytes):  # Produce: a packed body
        cls = load_payload_module(mod.API_KEY, version, EntityType.response).ProduceResponse
        decoded, used = entity_reader(cls)(response, 0)
        assert used == len(response)
        return decoded
    assert type(response).__version__ == version
    buf = io.BytesIO()
    entity_writer(type(response))(buf, response)
    decoded, _ = entity_reader(type(response))(buf.getvalue(), 0)
    assert decoded == response
    return decoded


def _cluster(broker: Broker) -> FakeRouting:
    """Node 3 of {3, 5}: t:0 led here, t:1 by node 5 (epoch 7), t:2 by no one."""
    routing = FakeRouting(NODE, {NODE: Endpoint(NODE, HOST, PORT), OTHER.node_id: OTHER}, controller=OTHER.node_id)
    broker.routing = routing
    broker.logs.take_on_first_use = False
    tid = _tid(broker)
    routing.set_leader(tid, 0, NODE, 1)
    routing.set_leader(tid, 1, OTHER.node_id, 7)
    return routing


def _tid(broker: Broker, name: str = "t") -> str:
    topic = broker.topics.get(name)
    assert topic is not None
    return topic.topic_id


async def _produce(broker: Broker, partition: int, producer_id: int = -1, seq: int = -1, ts: int = 1_000) -> None:
    m = rq(produce, 9)
    batch = make_batch(records=3, base_ts=ts, producer_id=producer_id, base_seq=seq)
    request = m.ProduceRequest(acks=-1, timeout=datetime.timedelta(seconds=5), topic_data=(
        m.TopicProduceData(name="t", partition_data=(m.PartitionProduceData(index=partition, records=batch),)),
    ))  # fmt: skip
    response = await call(broker, produce, 9, request)
    assert response.responses[0].partition_responses[0].error_code == ErrorCode.none


# --- DescribeProducers ---------------------------------------------------------------------------------------


async def test_describe_producers_lists_idempotent_producers_of_the_partition(broker: Broker) -> None:
    await _produce(broker, 0, producer_id=42, seq=0, ts=1_000)
    await _produce(broker, 0, producer_id=42, seq=3, ts=5_000)
    await _produce(broker, 0, producer_id=77, seq=0, ts=2_000)
    await _produce(broker, 0)  # not idempotent: no producer state
    m = rq(describe_producers, 0)
    request = m.DescribeProducersRequest(topics=(
        m.TopicRequest(name="t", partition_indexes=(0, 1, 9)), m.TopicRequest(name="nope", partition_indexes=(0,)),
    ))  # fmt: skip
    resp = await call(broker, describe_producers, 0, request)
    t, nope = resp.topics
    p0, p1, p9 = t.partitions
    assert p0.error_code == ErrorCode.none
    got = [(p.producer_id, p.producer_epoch, p.last_sequence, p.last_timestamp, p.coordinator_epoch,
            p.current_txn_start_offset) for p in p0.active_producers]  # fmt: skip
    assert got == [(42, 0, 5, 5_002, -1, -1), (77, 0, 2, 2_002, -1, -1)]
    assert (p1.error_code, p1.active_producers) == (ErrorCode.none, ())
    assert p9.error_code == ErrorCode.unknown_topic_or_partition
    assert nope.partitions[0].error_code == ErrorCode.unknown_topic_or_partition


async def test_describe_producers_elsewhere_is_not_leader(broker: Broker) -> None:
    _cluster(broker)
    m = rq(describe_producers, 0)
    resp = await call(broker, describe_producers, 0, m.DescribeProducersRequest(topics=(
        m.TopicRequest(name="t", partition_indexes=(1, 2)),)))  # fmt: skip
    assert [p.error_code for p in resp.topics[0].partitions] == [ErrorCode.not_leader_or_follower] * 2


# --- DescribeTopicPartitions ---------------------------------------------------------------------------------


async def _dtp(broker: Broker, names: list[str], limit: int, cursor: tuple[str, int] | None = None) -> Any:
    m = rq(describe_topic_partitions, 0)
    request = m.DescribeTopicPartitionsRequest(
        topics=tuple(m.TopicRequest(name=n) for n in names), response_partition_limit=limit,
        cursor=None if cursor is None else m.Cursor(topic_name=cursor[0], partition_index=cursor[1]),
    )  # fmt: skip
    return await call(broker, describe_topic_partitions, 0, request)


def _pages(resp: Any) -> tuple[list[tuple[str, list[int]]], tuple[str, int] | None]:
    topics = [(t.name, [p.partition_index for p in t.partitions]) for t in resp.topics]
    cursor = resp.next_cursor
    return topics, None if cursor is None else (cursor.topic_name, cursor.partition_index)


async def test_describe_topic_partitions_pages_through_every_partition(broker: Broker) -> None:
    await broker.topics.create("a", 2, 1, {})
    await broker.topics.create("u", 1, 1, {})
    everything = sorted(t.name for t in broker.topics.all())
    assert everything == ["__consumer_offsets", "a", "t", "u"]
    resp = await _dtp(broker, [], limit=3)
    assert _pages(resp) == ([("__consumer_offsets", [0, 1, 2])], ("__consumer_offsets", 3))
    assert resp.topics[0].is_internal
    resp = await _dtp(broker, [], limit=3, cursor=("a", 0))
    assert _pages(resp) == ([("a", [0, 1]), ("t", [0])], ("t", 1))
    assert not resp.topics[0].is_internal
    resp = await _dtp(broker, [], limit=3, cursor=("t", 1))
    assert _pages(resp) == ([("t", [1, 2]), ("u", [0])], None)
    resp = await _dtp(broker, [], limit=2, cursor=("a", 0))  # stops at a topic boundary: the next topic, 0
    assert _pages(resp) == ([("a", [0, 1])], ("t", 0))
    part = resp.topics[0].partitions[0]
    assert (part.error_code, part.leader_id, part.replica_nodes, part.isr_nodes) == (
        ErrorCode.none,
        NODE,
        (NODE,),
        (NODE,),
    )
    assert part.eligible_leader_replicas == () and part.offline_replicas == ()
    assert str(resp.topics[0].topic_id) == _tid(broker, "a")


async def test_describe_topic_partitions_named_topics_and_bad_cursors(broker: Broker) -> None:
    resp = await _dtp(broker, ["zz", "t", "a b", "t"], limit=2000)
    by_name = {t.name: t for t in resp.topics}
    assert [t.name for t in resp.topics] == ["a b", "t", "zz"]  # sorted, duplicates once
    assert by_name["zz"].error_code == ErrorCode.unknown_topic_or_partition
    assert by_name["a b"].error_code == ErrorCode.invalid_topic_exception
    assert [p.partition_index for p in by_name["t"].partitions] == [0, 1, 2]
    for cursor in (("a", 0), ("t", -1)):  # cursor topic not asked for; negative partition
        resp = await _dtp(broker, ["t"], limit=10, cursor=cursor)
        assert [(t.name, t.error_code, t.partitions) for t in resp.topics] == [("t", ErrorCode.invalid_request, ())]
    resp = await _dtp(broker, ["t"], limit=0)  # at least one partition per answer
    assert _pages(resp) == ([("t", [0])], ("t", 1))


async def test_describe_topic_partitions_in_a_cluster(broker: Broker) -> None:
    _cluster(broker)
    resp = await _dtp(broker, ["t"], limit=10)
    got = [
        (p.partition_index, p.error_code, p.leader_id, p.leader_epoch, p.replica_nodes)
        for p in resp.topics[0].partitions
    ]
    assert got == [
        (0, ErrorCode.none, NODE, 1, (NODE,)),
        (1, ErrorCode.none, OTHER.node_id, 7, (OTHER.node_id,)),
        (2, ErrorCode.leader_not_available, -1, -1, ()),
    ]


# --- ElectLeaders --------------------------------------------------------------------------------------------


async def _elect(
    broker: Broker, version: int, kind: int, parts: dict[str, list[int]] | None, timeout_ms: int = 5_000
) -> Any:
    m = rq(elect_leaders, version)
    topic_partitions = None if parts is None else tuple(
        m.TopicPartitions(topic=t, partitions=tuple(ps)) for t, ps in parts.items()
    )  # fmt: skip
    values: dict[str, Any] = {
        "topic_partitions": topic_partitions,
        "timeout": datetime.timedelta(milliseconds=timeout_ms),
    }
    if version >= 1:
        values["election_type"] = kind
    return await call(broker, elect_leaders, version, m.ElectLeadersRequest(**values))


def _results(resp: Any) -> dict[tuple[str, int], ErrorCode]:
    return {(t.topic, p.partition_id): p.error_code for t in resp.replica_election_results for p in t.partition_result}


@pytest.mark.parametrize("version", [0, 1, 2])
async def test_elect_leaders_on_the_embedded_broker_is_never_needed(broker: Broker, version: int) -> None:
    resp = await _elect(broker, version, 0, {"t": [0, 1, 7], "nope": [0]})
    assert _results(resp) == {
        ("t", 0): ErrorCode.election_not_needed, ("t", 1): ErrorCode.election_not_needed,
        ("t", 7): ErrorCode.unknown_topic_or_partition, ("nope", 0): ErrorCode.unknown_topic_or_partition,
    }  # fmt: skip
    resp = await _elect(broker, version, 0, None)  # every partition: the ones not needing an election are left out
    assert _results(resp) == {}
    if version >= 1:
        resp = await _elect(broker, version, 1, {"t": [0]})
        assert _results(resp) == {("t", 0): ErrorCode.election_not_needed}
        resp = await _elect(broker, version, 5, {"t": [0]})
        assert _results(resp) == {("t", 0): ErrorCode.invalid_request}
        if version >= 2:
            assert resp.error_code == ErrorCode.invalid_request


async def test_elect_leaders_moves_a_partition_to_its_preferred_broker(broker: Broker) -> None:
    routing = _cluster(broker)
    tid = _tid(broker)
    # The controller wants t:0 on node 5 (led here now), t:1 on node 5 (there already), t:2 on node 9 (not live).
    await broker.store.put(
        broker.keys.assignment(tid), TopicAssignment(tid, (OTHER.node_id, OTHER.node_id, 9)).encode()
    )
    resp = await _elect(broker, 2, 0, {"t": [1, 2]})
    assert _results(resp) == {
        ("t", 1): ErrorCode.election_not_needed,
        ("t", 2): ErrorCode.preferred_leader_not_available,
    }
    resp = await _elect(broker, 2, 0, {"t": [0]}, timeout_ms=100)  # the move is asked for but not done in time
    assert _results(resp) == {("t", 0): ErrorCode.request_timed_out}
    pin = await broker.store.get(broker.keys.reassignment(tid, 0))
    assert pin is not None and Reassignment.decode(pin.value) == Reassignment(tid, 0, OTHER.node_id)

    async def moved_soon() -> None:
        await asyncio.sleep(0.2)
        routing.set_leader(tid, 0, OTHER.node_id, 2)

    mover = asyncio.create_task(moved_soon())
    resp = await _elect(broker, 2, 0, {"t": [0]}, timeout_ms=30_000)  # answered once routing shows the move
    await mover
    assert _results(resp) == {("t", 0): ErrorCode.none}
    # A pending move names the preferred broker before the assignment does: here, back to node 3.
    await broker.store.put(broker.keys.reassignment(tid, 0), Reassignment(tid, 0, NODE).encode())
    resp = await _elect(broker, 2, 0, {"t": [0]}, timeout_ms=0)
    assert _results(resp) == {("t", 0): ErrorCode.request_timed_out}


async def test_elect_leaders_unclean_fills_only_an_empty_leadership(broker: Broker) -> None:
    _cluster(broker)
    tid = _tid(broker)
    resp = await _elect(broker, 2, 1, {"t": [0, 1, 2]}, timeout_ms=0)
    # t:2 has no leader and no assignment to name a broker: nobody is eligible.
    assert _results(resp) == {
        ("t", 0): ErrorCode.election_not_needed, ("t", 1): ErrorCode.election_not_needed,
        ("t", 2): ErrorCode.eligible_leaders_not_available,
    }  # fmt: skip
    await broker.store.put(broker.keys.assignment(tid), TopicAssignment(tid, (NODE, NODE, OTHER.node_id)).encode())
    resp = await _elect(broker, 2, 1, {"t": [2]}, timeout_ms=0)
    assert _results(resp) == {("t", 2): ErrorCode.request_timed_out}  # pinned to node 5, not led yet
    assert await broker.store.get(broker.keys.reassignment(tid, 2)) is not None


# --- DescribeLogDirs / AlterReplicaLogDirs --------------------------------------------------------------------


async def _log_dirs(broker: Broker, version: int, topics: dict[str, list[int]] | None) -> Any:
    m = rq(describe_log_dirs, version)
    asked = None if topics is None else tuple(
        m.DescribableLogDirTopic(topic=t, partitions=tuple(ps)) for t, ps in topics.items()
    )  # fmt: skip
    return await call(broker, describe_log_dirs, version, m.DescribeLogDirsRequest(topics=asked))


def _sizes(result: Any, topic: str | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    return {
        (t.name, p.partition_index): (p.partition_size, p.offset_lag)
        for t in result.topics
        for p in t.partitions
        if topic is None or t.name == topic
    }


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
async def test_describe_log_dirs_reports_each_tier(broker: Broker, tmp_path: Path, version: int) -> None:
    await _produce(broker, 0)
    await _produce(broker, 0)
    plog = broker.logs.loaded(_tid(broker), 0)
    assert plog is not None
    resp = await _log_dirs(broker, version, None)
    bookies, objects = resp.results
    assert bookies.log_dir == "bookies"
    assert objects.log_dir == (tmp_path / "objects").as_uri()
    assert _sizes(bookies, "t") == {("t", 0): (plog.unoffloaded_bytes, 0), ("t", 1): (0, 0), ("t", 2): (0, 0)}
    assert plog.unoffloaded_bytes > 0
    assert _sizes(objects, "t") == {("t", 0): (0, 0), ("t", 1): (0, 0), ("t", 2): (0, 0)}
    assert len(_sizes(bookies, "__consumer_offsets")) == 50  # every partition this broker serves
    if version >= 4:
        assert bookies.total_bytes > 0 and 0 <= bookies.usable_bytes <= bookies.total_bytes  # the data dir's volume
    resp = await _log_dirs(broker, version, {"t": [2, 9], "nope": [0]})
    assert [_sizes(r) for r in resp.results] == [{("t", 2): (0, 0)}] * 2


async def test_describe_log_dirs_lists_only_owned_partitions_in_a_cluster(broker: Broker) -> None:
    _cluster(broker)
    resp = await _log_dirs(broker, 4, None)
    for result in resp.results:
        assert set(_sizes(result)) == {("t", 0)}
        assert result.total_bytes == -1  # remote bookies: the volume is not this broker's to know


async def test_alter_replica_log_dirs_moves_nothing(broker: Broker, tmp_path: Path) -> None:
    routing = _cluster(broker)
    store_dir = (tmp_path / "objects").as_uri()
    m = rq(alter_replica_log_dirs, 2)
    request = m.AlterReplicaLogDirsRequest(dirs=(
        m.AlterReplicaLogDir(path="/var/lib/kafka", topics=(m.AlterReplicaLogDirTopic(name="t", partitions=(0,)),)),
        m.AlterReplicaLogDir(path="bookies", topics=(m.AlterReplicaLogDirTopic(name="t", partitions=(0, 1, 5)),)),
        m.AlterReplicaLogDir(path=store_dir, topics=(m.AlterReplicaLogDirTopic(name="nope", partitions=(0,)),)),
    ))  # fmt: skip
    resp = await call(broker, alter_replica_log_dirs, 2, request)
    got = [(t.topic_name, p.partition_index, p.error_code) for t in resp.results for p in t.partitions]
    assert got == [
        ("t", 0, ErrorCode.log_dir_not_found),  # not one of this broker's log dirs (checked first, as Kafka)
        ("t", 0, ErrorCode.kafka_storage_error),  # owned here: the tiers are not chosen per partition
        ("t", 1, ErrorCode.replica_not_available),  # owned by node 5
        ("t", 5, ErrorCode.unknown_topic_or_partition),
        ("nope", 0, ErrorCode.unknown_topic_or_partition),
    ]
    assert routing.leader(_tid(broker), 0) is not None
