"""The follower and the log's side of a handover, in process on the embedded store: ``LogManager.adopt`` loads
at the epoch the take wrote (no second bump), ``release`` closes cleanly so the next owner recovers nothing;
the Follower takes what is assigned, hands over what moves, and fences itself when its lease is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.cluster.follower import Follower, Takeover
from brokers.cluster.handover import OwnersView
from brokers.cluster.membership import LiveBrokers
from brokers.cluster.ownership import PartitionOwnership, Taken
from brokers.codec import batch
from brokers.log.manager import LogManager
from brokers.log.partition import LogConfig, LogError
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import BrokerRecord, PartitionState, TopicAssignment
from metadata.session import LeasedSession
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("follow")
TOPIC = "5f1c0d2e-0000-4000-8000-00000000000a"
WAIT_S = 10.0  # hang guard


@pytest_asyncio.fixture
async def store() -> AsyncIterator[EmbeddedMetadataStore]:
    opened = await EmbeddedMetadataStore.open(None)
    yield opened
    await opened.close()


async def _state(store: EmbeddedMetadataStore, partition: int) -> PartitionState:
    found = await store.get(KEYS.partition(TOPIC, partition))
    assert found is not None
    return PartitionState.decode(found.value)


async def _append(manager: LogManager, partition: int) -> int:
    plog = manager.loaded(TOPIC, partition)
    assert plog is not None
    data = make_batch(2)
    return (await (await plog.append(data, batch.validate(data)))).base_offset


@pytest.mark.asyncio
async def test_adopt_keeps_the_taken_epoch_and_release_leaves_nothing_to_recover(
    store: EmbeddedMetadataStore,
) -> None:
    ledgers = MemoryLedgerClient()
    session = LeasedSession(store, 5.0)
    await session.start()
    ownership = PartitionOwnership(store, KEYS, 1, session)
    manager = LogManager(store, KEYS, ledgers, LogConfig())

    taken = await ownership.take(TOPIC, 0)
    plog = await manager.adopt(TOPIC, 0, taken.epoch, taken.state_version)
    assert plog.epoch == taken.epoch == 1
    assert await _append(manager, 0) == 0
    assert (await _state(store, 0)).epoch == 1

    assert await manager.release(TOPIC, 0)
    assert manager.loaded(TOPIC, 0) is None
    assert all(ref.closed for ref in (await _state(store, 0)).ledgers)  # closed by the owner, not recovered
    assert await ownership.release(TOPIC, 0)

    again = await ownership.take(TOPIC, 0)
    plog = await manager.adopt(TOPIC, 0, again.epoch, again.state_version)
    assert plog.epoch == again.epoch == 2
    assert plog.high_watermark == 2
    await manager.close()
    await session.close()


@pytest.mark.asyncio
async def test_adopt_refuses_a_state_changed_after_the_take(store: EmbeddedMetadataStore) -> None:
    session = LeasedSession(store, 5.0)
    await session.start()
    taken = await PartitionOwnership(store, KEYS, 1, session).take(TOPIC, 0)
    await store.put(KEYS.partition(TOPIC, 0), taken.state.encode())  # someone wrote after the take
    manager = LogManager(store, KEYS, MemoryLedgerClient(), LogConfig())
    with pytest.raises(LogError) as e:
        await manager.adopt(TOPIC, 0, taken.epoch, taken.state_version)
    assert e.value.code == ErrorCode.not_leader_or_follower
    assert manager.loaded(TOPIC, 0) is None
    await session.close()


class _Host:
    """A PartitionHost over a real LogManager, recording what the follower asked."""

    def __init__(self, manager: LogManager) -> None:
        self.manager = manager
        self.deposed: list[str] = []

    async def adopt(self, taken: Taken) -> None:
        await self.manager.adopt(taken.topic_id, taken.partition, taken.epoch, taken.state_version)

    async def release(self, topic_id: str, partition: int) -> None:
        await self.manager.release(topic_id, partition)

    def depose_all(self, reason: str) -> None:
        self.deposed.append(reason)
        self.manager.depose_all(reason)

    async def release_all(self) -> None:
        for plog in self.manager.all():
            await self.manager.release(plog.topic_id, plog.partition)


class _Node:
    def __init__(self, store: EmbeddedMetadataStore, node_id: int, assignments: dict[str, TopicAssignment]) -> None:
        self.session = LeasedSession(store, 0.5)
        self.owners = OwnersView(store, KEYS)
        self.manager = LogManager(store, KEYS, MemoryLedgerClient(), LogConfig())
        self.host = _Host(self.manager)
        self.live = LiveBrokers(store, KEYS)
        self.takeovers: list[Takeover] = []
        self.follower = Follower(
            node_id, self.session, PartitionOwnership(store, KEYS, node_id, self.session), self.owners,
            lambda: assignments, self.host, broker_departed=self.live.departed, on_taken=self.takeovers.append,
        )

    def reasons(self) -> list[tuple[int, str, int | None]]:
        return [(t.partition, t.reason, t.previous_owner) for t in self.takeovers]

    async def start(self) -> None:
        await self.session.start()
        await self.session.register(KEYS.broker(self.follower.node_id), _broker_record(self.follower.node_id))
        await self.live.start()
        await self.owners.start()
        await self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()
        await self.host.release_all()
        await self.owners.stop()
        await self.live.stop()
        await self.session.close()


def _broker_record(node_id: int) -> bytes:
    return BrokerRecord(node_id, "127.0.0.1", 9092 + node_id).encode()


async def _until(predicate: object) -> None:
    assert callable(predicate)
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.02)


def _assign(assignments: dict[str, TopicAssignment], owners: Mapping[int, int]) -> None:
    assignments[TOPIC] = TopicAssignment(TOPIC, tuple(owners[p] for p in sorted(owners)))


@pytest.mark.asyncio
async def test_follower_takes_hands_over_and_fences_itself(store: EmbeddedMetadataStore) -> None:
    assignments: dict[str, TopicAssignment] = {}
    a, b = _Node(store, 1, assignments), _Node(store, 2, assignments)
    await a.start()
    await b.start()
    try:
        _assign(assignments, {0: 1, 1: 1, 2: 2})
        a.follower.kick()
        b.follower.kick()
        await _until(lambda: a.follower.serving == {(TOPIC, 0), (TOPIC, 1)} and b.follower.serving == {(TOPIC, 2)})
        assert await _append(a.manager, 1) == 0

        # a planned move: a releases partition 1 cleanly, b takes it at the next epoch with the data
        _assign(assignments, {0: 1, 1: 2, 2: 2})
        a.follower.kick()
        await _until(lambda: (TOPIC, 1) in b.follower.serving)
        assert (TOPIC, 1) not in a.follower.serving and a.manager.loaded(TOPIC, 1) is None
        moved = b.manager.loaded(TOPIC, 1)
        assert moved is not None and moved.high_watermark == 2 and moved.epoch == 2

        # a loses its lease: it stops serving at once, then registers again and takes partition 0 back
        plog = a.manager.loaded(TOPIC, 0)
        assert plog is not None
        lease = a.session.lease_id
        await store.expire_lease(lease)
        await _until(lambda: a.host.deposed)
        with pytest.raises(LogError) as e:
            await plog.append(make_batch(1), batch.validate(make_batch(1)))
        assert e.value.code == ErrorCode.not_leader_or_follower
        await _until(lambda: a.follower.serving == {(TOPIC, 0)} and a.session.alive)
        assert a.session.lease_id != lease
        retaken = a.manager.loaded(TOPIC, 0)
        assert retaken is not None and retaken is not plog and retaken.epoch == 2
        assert a.follower.fenced == 1

        # b dies without releasing (its lease expires): a takes its partitions as a failover
        await b.follower.stop()
        _assign(assignments, {0: 1, 1: 1, 2: 1})
        await store.expire_lease(b.session.lease_id)
        a.follower.kick()
        await _until(lambda: a.follower.serving == {(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)})
        assert sorted(a.reasons()) == [(0, "restart", 1), (0, "start", None), (1, "failover", 2), (1, "start", None),
                                       (2, "failover", 2)]  # fmt: skip
        assert sorted(b.reasons()) == [(1, "move", 1), (2, "start", None)]
        failover = next(t for t in a.takeovers if t.reason == "failover")
        assert failover.unowned_s is not None and failover.unowned_s >= failover.load_s >= 0
        assert failover.topic == TOPIC and failover.epoch >= 2
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.asyncio
async def test_topic_registry_follows_topics_created_and_deleted_elsewhere(store: EmbeddedMetadataStore) -> None:
    from brokers.topics import TopicRegistry
    from metadata.models import TopicRecord
    from metadata.prefix_cache import PrefixCache

    here, there = TopicRegistry(store, KEYS), TopicRegistry(store, KEYS)
    await there.create("early", 2, 1, {})
    cache: PrefixCache[TopicRecord] = PrefixCache(store, KEYS.topics_prefix(), lambda _n, v: TopicRecord.decode(v))
    await cache.start()
    try:
        await here.load()
        here.follow(cache)
        made = await there.create("orders", 3, 1, {})
        await _until(lambda: here.get("orders") == made)
        assert here.partition_count == 5
        await there.load()
        grown = await there.add_partitions("orders", 4)
        await _until(lambda: here.get("orders") == grown)
        await here.add_partitions("orders", 6)  # the version followed is the one compare-and-swap needs
        await there.delete("early")
        await _until(lambda: here.get("early") is None)
        assert here.partition_count == 6 and here.topic_count == 1
    finally:
        await cache.stop()
