"""Group API handlers, for the versions the e2e clients do not send (v10 topic ids, v8 batches, v6, v5
filters, batched FindCoordinator): a real Broker over the in-memory metadata store and in-memory ledgers;
every request and response goes through kio's encoder and decoder."""

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
    describe_groups,
    find_coordinator,
    join_group,
    list_groups,
    offset_commit,
    offset_fetch,
    sync_group,
)
from brokers.handlers.base import RequestContext
from metadata.embedded import EmbeddedMetadataStore
from tests.memory_ledgers import MemoryLedgerClient

pytestmark = pytest.mark.asyncio
NODE, HOST, PORT = 4, "broker-4.example", 19094


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(
        node_id=NODE, advertised_host=HOST, advertised_port=PORT, offsets_topic_num_partitions=3,
        group_initial_rebalance_delay_ms=0,
    )
    b = Broker(config, store, MemoryLedgerClient())
    await b.start()
    await b.groups.wait_loaded()
    await b.topics.create("orders", 2, 1, {})
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


def _mod(api: ModuleType, version: int, kind: EntityType) -> ModuleType:
    return load_payload_module(api.API_KEY, version, kind)


async def _call(broker: Broker, api: ModuleType, version: int, cls: str, **fields: Any) -> Any:
    """Encode a request with kio, decode it, run the handler, and round-trip its response the same way."""
    mod = _mod(api, version, EntityType.request)
    request = getattr(mod, cls)(**fields)
    buf = io.BytesIO()
    entity_writer(type(request))(buf, request)
    decoded, _ = entity_reader(type(request))(buf.getvalue(), 0)
    ctx = RequestContext(broker, api.API_KEY, version, 1, "unit", "127.0.0.1:5555")
    response = await api.handle(ctx, decoded)
    out = io.BytesIO()
    entity_writer(type(response))(out, response)
    back, _ = entity_reader(type(response))(out.getvalue(), 0)
    return back


async def test_find_coordinator_batched_keys_and_transactions(broker: Broker) -> None:
    res = await _call(broker, find_coordinator, 4, "FindCoordinatorRequest", key_type=0,
                      coordinator_keys=("a", "b"))
    assert [(c.key, c.error_code, c.node_id, c.host, c.port) for c in res.coordinators] == [
        ("a", ErrorCode.none, NODE, HOST, PORT), ("b", ErrorCode.none, NODE, HOST, PORT)
    ]
    res = await _call(broker, find_coordinator, 6, "FindCoordinatorRequest", key_type=1, coordinator_keys=("tx", ""))
    assert [(c.key, c.error_code, c.node_id, c.port) for c in res.coordinators] == [
        ("tx", ErrorCode.none, NODE, PORT), ("", ErrorCode.invalid_request, -1, -1)
    ]  # the transaction coordinator (brokers/transactions/); an empty transactional id is refused
    res = await _call(broker, find_coordinator, 0, "FindCoordinatorRequest", key="g")
    assert (res.error_code, res.node_id, res.port) == (ErrorCode.none, NODE, PORT)


async def test_offset_commit_and_fetch_by_topic_id(broker: Broker) -> None:
    topic = broker.topics.get("orders")
    assert topic is not None
    tid, unknown = uuid.UUID(topic.topic_id), uuid.uuid4()
    req = _mod(offset_commit, 10, EntityType.request)
    res = await _call(
        broker, offset_commit, 10, "OffsetCommitRequest", group_id="ids", generation_id_or_member_epoch=-1,
        member_id="", topics=(
            req.OffsetCommitRequestTopic(topic_id=tid, partitions=(
                req.OffsetCommitRequestPartition(partition_index=1, committed_offset=42, committed_metadata="m"),
            )),
            req.OffsetCommitRequestTopic(topic_id=unknown, partitions=(
                req.OffsetCommitRequestPartition(partition_index=0, committed_offset=1, committed_metadata=None),
            )),
        ),
    )
    assert [(t.topic_id, [(p.partition_index, p.error_code) for p in t.partitions]) for t in res.topics] == [
        (tid, [(1, ErrorCode.none)]), (unknown, [(0, ErrorCode.unknown_topic_id)])
    ]
    fetch = _mod(offset_fetch, 10, EntityType.request)
    res = await _call(
        broker, offset_fetch, 10, "OffsetFetchRequest", groups=(
            fetch.OffsetFetchRequestGroup(group_id="ids", topics=(
                fetch.OffsetFetchRequestTopics(topic_id=tid, partition_indexes=(0, 1)),
                fetch.OffsetFetchRequestTopics(topic_id=unknown, partition_indexes=(0,)),
            )),
            fetch.OffsetFetchRequestGroup(group_id="ids", topics=None),
        ),
    )
    first, everything = res.groups
    assert [(t.topic_id, [(p.partition_index, p.committed_offset, p.metadata, p.error_code) for p in t.partitions])
            for t in first.topics] == [
        (tid, [(0, -1, "", ErrorCode.none), (1, 42, "m", ErrorCode.none)]),
        (unknown, [(0, -1, "", ErrorCode.unknown_topic_id)]),
    ]
    assert [(t.topic_id, [p.committed_offset for p in t.partitions]) for t in everything.topics] == [(tid, [42])]


async def test_offset_fetch_v8_several_groups_and_v1(broker: Broker) -> None:
    commit = _mod(offset_commit, 2, EntityType.request)
    for group, offset in (("g1", 5), ("g2", 6)):
        await _call(
            broker, offset_commit, 2, "OffsetCommitRequest", group_id=group, generation_id_or_member_epoch=-1,
            member_id="", retention_time=datetime.timedelta(milliseconds=-1), topics=(
                commit.OffsetCommitRequestTopic(name="orders", partitions=(
                    commit.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset,
                                                        committed_metadata=None),
                )),
            ),
        )
    fetch = _mod(offset_fetch, 8, EntityType.request)
    res = await _call(
        broker, offset_fetch, 8, "OffsetFetchRequest", require_stable=True, groups=(
            fetch.OffsetFetchRequestGroup(group_id="g1", topics=None),
            fetch.OffsetFetchRequestGroup(group_id="g2", topics=(
                fetch.OffsetFetchRequestTopics(name="orders", partition_indexes=(0,)),
            )),
        ),
    )
    got = {g.group_id: [(t.name, p.partition_index, p.committed_offset) for t in g.topics for p in t.partitions]
           for g in res.groups}
    assert got == {"g1": [("orders", 0, 5)], "g2": [("orders", 0, 6)]}
    v1 = _mod(offset_fetch, 1, EntityType.request)
    res = await _call(broker, offset_fetch, 1, "OffsetFetchRequest", group_id="g2",
                      topics=(v1.OffsetFetchRequestTopic(name="orders", partition_indexes=(0, 1)),))
    assert [(p.partition_index, p.committed_offset) for p in res.topics[0].partitions] == [(0, 6), (1, -1)]


async def test_describe_groups_v6_and_list_groups_filters(broker: Broker) -> None:
    join = _mod(join_group, 9, EntityType.request)
    first = await _call(
        broker, join_group, 9, "JoinGroupRequest", group_id="live", session_timeout=datetime.timedelta(seconds=10),
        rebalance_timeout=datetime.timedelta(seconds=10), member_id="", group_instance_id="i-1",
        protocol_type="consumer", protocols=(join.JoinGroupRequestProtocol(name="range", metadata=b"m"),),
    )
    assert first.error_code is ErrorCode.none and first.leader == first.member_id and first.protocol_type == "consumer"
    synced = await _call(broker, sync_group, 5, "SyncGroupRequest", group_id="live", generation_id=1,
                         member_id=first.member_id, group_instance_id="i-1", protocol_type="consumer",
                         protocol_name="range", assignments=())
    assert synced.error_code is ErrorCode.none and synced.protocol_name == "range"
    res = await _call(broker, describe_groups, 6, "DescribeGroupsRequest", groups=("live", "nobody"),
                      include_authorized_operations=True)
    live, nobody = res.groups
    assert (live.error_code, live.group_state, live.protocol_data) == (ErrorCode.none, "Stable", "range")
    assert [(m.member_id, m.group_instance_id, m.member_metadata) for m in live.members] == [
        (first.member_id, "i-1", b"m")
    ]
    assert live.authorized_operations > 0
    assert (nobody.error_code, nobody.group_state) == (ErrorCode.group_id_not_found, "Dead")
    v5 = await _call(broker, describe_groups, 5, "DescribeGroupsRequest", groups=("nobody",),
                     include_authorized_operations=False)
    assert (v5.groups[0].error_code, v5.groups[0].group_state) == (ErrorCode.none, "Dead")

    res = await _call(broker, list_groups, 5, "ListGroupsRequest", states_filter=("stable",),
                      types_filter=("classic",))
    assert [(g.group_id, g.group_state, g.group_type, g.protocol_type) for g in res.groups] == [
        ("live", "Stable", "classic", "consumer")
    ]
    res = await _call(broker, list_groups, 4, "ListGroupsRequest", states_filter=("Empty",))
    assert res.groups == ()
    res = await _call(broker, list_groups, 0, "ListGroupsRequest")
    assert [g.group_id for g in res.groups] == ["live"]
