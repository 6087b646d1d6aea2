"""KIP-848 online migration through the coordinator of a real in-process Broker (in-memory metadata and
ledgers): a classic group upgraded by a consumer-protocol member, classic members served inside the
consumer group (JoinGroup/SyncGroup/Heartbeat/LeaveGroup, commits by generation = member epoch), the
downgrade when the last consumer-protocol member leaves or times out, the policy, replay of the mixed
group, and the classic member metadata record as Kafka lays it out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.groups.base import GroupError
from brokers.groups.classic import ClassicGroup, GroupState
from brokers.groups.consumer import ConsumerGroup, Heartbeat, MemberState
from brokers.groups.consumer_protocol import parse_assignment, parse_subscription, serialize_assignment
from brokers.groups.consumer_records import (
    ClassicMemberMetadata,
    MemberSubscription,
    MemberSubscriptionRecord,
    decode,
    encode,
)
from brokers.groups.consumer_shard import consumer_groups_for
from brokers.groups.member import JoinRequest, JoinResult
from brokers.groups.offsets import CommitRequest
from brokers.groups.shard import GroupShard
from metadata.embedded import EmbeddedMetadataStore
from tests.memory_ledgers import MemoryLedgerClient

pytestmark = pytest.mark.asyncio
TOPIC, PARTITIONS = "orders", 4
HANG_GUARD = 30.0


def subscription(topics: tuple[str, ...] = (TOPIC,), owned: tuple[tuple[str, int], ...] = ()) -> bytes:
    """ConsumerProtocolSubscription v1: topics, no user data, owned partitions."""
    out = [struct.pack(">hi", 1, len(topics))]
    out += [struct.pack(">h", len(t)) + t.encode() for t in topics]
    out.append(struct.pack(">i", -1))
    by_topic: dict[str, list[int]] = {}
    for t, p in owned:
        by_topic.setdefault(t, []).append(p)
    out.append(struct.pack(">i", len(by_topic)))
    for t, ps in by_topic.items():
        out.append(struct.pack(">h", len(t)) + t.encode() + struct.pack(f">i{len(ps)}i", len(ps), *ps))
    return b"".join(out)


async def make_broker(**overrides: Any) -> tuple[Broker, EmbeddedMetadataStore]:
    store = await EmbeddedMetadataStore.open(None)
    settings: dict[str, Any] = {
        "offsets_topic_num_partitions": 1, "group_initial_rebalance_delay_ms": 0,
        "group_min_session_timeout_ms": 50, **overrides,
    }
    b = Broker(BrokerConfig(**settings), store, MemoryLedgerClient())
    await b.start()
    await b.groups.wait_loaded()
    await b.topics.create(TOPIC, PARTITIONS, 1, {})
    return b, store


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    b, store = await make_broker()
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


class Classic:
    """A classic consumer as the coordinator sees it (eager: it owns nothing when it rejoins)."""

    def __init__(self, b: Broker, group: str, name: str, session_ms: int = 10_000, instance: str | None = None,
                 rebalance_ms: int = 10_000) -> None:
        self.b, self.group, self.name, self.session_ms, self.instance = b, group, name, session_ms, instance
        self.rebalance_ms = rebalance_ms
        self.member_id = ""
        self.generation = -1
        self.last: JoinResult | None = None
        self.partitions: set[int] = set()

    def request(self, owned: tuple[tuple[str, int], ...] = ()) -> JoinRequest:
        return JoinRequest(self.group, self.member_id, self.instance, self.name, "/127.0.0.1", self.session_ms,
                           self.rebalance_ms,
                           "consumer", (("range", subscription(owned=owned)), ("roundrobin", subscription())), False)

    async def join(self, owned: tuple[tuple[str, int], ...] = ()) -> JoinResult:
        r = await self.b.groups.join(self.request(owned), False)
        if r.error is ErrorCode.none:
            self.member_id, self.generation, self.last = r.member_id, r.generation, r
        return r

    async def sync(self, assignments: dict[str, bytes] | None = None) -> ErrorCode:
        protocol = self.last.protocol_name if self.last is not None else None
        r = await self.b.groups.sync(self.group, self.member_id, self.instance, self.generation, "consumer", protocol,
                                     assignments or {})
        if r.error is ErrorCode.none:
            self.partitions = {p for _, p in parse_assignment(r.assignment)}
        return r.error

    async def heartbeat(self) -> ErrorCode:
        return await self.b.groups.heartbeat(self.group, self.member_id, self.instance, self.generation)


async def classic_rebalance(members: list[Classic]) -> None:
    """Every member (re)joins, in this order (a newcomer first, so the rebalance waits for the others); the
    leader assigns partitions round robin; everyone syncs."""
    joins = []
    for m in members:
        joins.append(asyncio.ensure_future(m.join()))
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*joins)
    assert all(r.error is ErrorCode.none for r in results), results
    leader = next(r for r in results if r.leader == r.member_id)
    ids = [mid for mid, _, _ in leader.members]
    plan = {mid: serialize_assignment([(TOPIC, p) for p in range(PARTITIONS) if p % len(ids) == i])
            for i, mid in enumerate(ids)}
    codes = await asyncio.gather(*(m.sync(plan if m.member_id == leader.member_id else None) for m in members))
    assert set(codes) == {ErrorCode.none}


async def stable_classic_group(b: Broker, group: str, n: int) -> list[Classic]:
    members = [Classic(b, group, f"c{i}") for i in range(n)]
    await classic_rebalance(members[:1])
    await classic_rebalance(members[1:] + members[:1])
    return members


def live(b: Broker, group: str) -> Any:
    return b.groups.shard_for(group).groups.get(group)


async def consumer_join(b: Broker, group: str, member: str) -> Any:
    return await consumer_groups_for(b, group).heartbeat(group, Heartbeat(
        member, 0, rebalance_timeout_ms=10_000, subscribed_topic_names=(TOPIC,), owned=frozenset()))


async def settle(b: Broker, group: str, classics: list[Classic], consumers: dict[str, int]) -> dict[str, set[int]]:
    """Drive every member until the group is Stable; returns member -> partitions. Classic members rejoin
    and sync whenever their heartbeat says so (eager: owning nothing on rejoin); consumer-protocol members
    heartbeat reporting what they were given."""
    ext = consumer_groups_for(b, group)
    owned: dict[str, frozenset[tuple[str, int]]] = {m: frozenset() for m in consumers}
    async with asyncio.timeout(HANG_GUARD):
        while True:
            for c in classics:
                code = await c.heartbeat()
                if code is ErrorCode.rebalance_in_progress:
                    assert (await c.join()).error is ErrorCode.none
                    assert await c.sync() is ErrorCode.none
                else:
                    assert code is ErrorCode.none, code
            for mid in consumers:
                out = await ext.heartbeat(group, Heartbeat(mid, consumers[mid], owned=owned[mid]))
                consumers[mid] = out.member_epoch
                if out.assignment is not None:
                    owned[mid] = out.assignment
            g = live(b, group)
            if isinstance(g, ConsumerGroup) and g.state == "Stable":
                break
    tid = b.topics.get(TOPIC).topic_id  # type: ignore[union-attr]
    out = {c.member_id: c.partitions for c in classics}
    out.update({mid: {p for t, p in a if t == tid} for mid, a in owned.items()})
    return out


async def eventually(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not check():
            await asyncio.sleep(0.01)


def assert_partitioned(assigned: dict[str, set[int]]) -> None:
    flat = [p for ps in assigned.values() for p in ps]
    assert sorted(flat) == list(range(PARTITIONS)), assigned


# --- records --------------------------------------------------------------------------------------------
async def test_classic_member_metadata_is_kafkas_tagged_field_0_and_round_trips() -> None:
    classic = ClassicMemberMetadata(45_000, (("range", b"\x00\x01abc"), ("roundrobin", b"")))
    sub = MemberSubscription(client_id="c", client_host="/h", subscribed_topic_names=("t",), classic=classic)
    key, value = encode(MemberSubscriptionRecord("g", "m", sub))
    assert value is not None
    plain = encode(MemberSubscriptionRecord("g", "m", dataclasses.replace(sub, classic=None)))[1]
    assert plain is not None
    # Same fields, then the tagged section: 1 field, tag 0, its size, then the struct.
    body = struct.pack(">i", 45_000) + b"\x03" + b"\x06range" + b"\x06\x00\x01abc" + b"\x00"
    body += b"\x0broundrobin" + b"\x01" + b"\x00" + b"\x00"
    assert value == plain[:-1] + b"\x01\x00" + bytes([len(body)]) + body
    assert decode(key, value) == MemberSubscriptionRecord("g", "m", sub)
    assert decode(key, plain) == MemberSubscriptionRecord("g", "m", dataclasses.replace(sub, classic=None))


async def test_embedded_consumer_protocol_structs() -> None:
    s = parse_subscription(subscription(("a", "b"), (("a", 1), ("a", 3), ("b", 0))))
    assert (s.version, s.topics, s.owned, s.rack_id) == (1, ("a", "b"), (("a", 1), ("a", 3), ("b", 0)), None)
    v3 = struct.pack(">hi", 3, 1) + b"\x00\x01a" + struct.pack(">ii", -1, 0) + struct.pack(">i", 7) + b"\x00\x02r1"
    assert parse_subscription(v3).rack_id == "r1"
    assert sorted(parse_assignment(serialize_assignment([("b", 2), ("a", 0)], 3))) == [("a", 0), ("b", 2)]


# --- upgrade, classic members inside, downgrade -----------------------------------------------------------
async def test_upgrade_mixed_group_and_downgrade_keep_every_partition_owned_once(broker: Broker) -> None:
    classics = await stable_classic_group(broker, "g", 2)
    generation = classics[0].generation
    assert isinstance(live(broker, "g"), ClassicGroup)

    # A consumer-protocol member joins: the group becomes a consumer group at the classic generation + 1.
    out = await consumer_join(broker, "g", "k1")
    group = live(broker, "g")
    assert isinstance(group, ConsumerGroup) and group.group_epoch == generation + 1
    assert out.member_epoch == generation + 1
    assert {m.member_id for m in group.members.values() if m.uses_classic} == {c.member_id for c in classics}
    # The classic members are asked to rejoin; they are given generation = their member epoch.
    assert await classics[0].heartbeat() is ErrorCode.rebalance_in_progress
    assigned = await settle(broker, "g", classics, {"k1": out.member_epoch})
    assert_partitioned(assigned)
    assert all(len(ps) >= 1 for ps in assigned.values())
    assert all(c.generation == group.group_epoch for c in classics)

    # Commits: a classic member by generation (OffsetCommit v8), a stale generation refused.
    commit = [CommitRequest(TOPIC, 0, 5, -1, "")]
    c0 = classics[0]
    assert await broker.groups.commit_offsets("g", c0.member_id, None, c0.generation, commit, 8) == [ErrorCode.none]
    assert await broker.groups.commit_offsets("g", c0.member_id, None, c0.generation - 1, commit, 8) == [
        ErrorCode.illegal_generation]

    # The only consumer-protocol member leaves: the group is classic again, rebalancing, nobody lost.
    epoch = group.group_epoch
    left = await consumer_groups_for(broker, "g").heartbeat("g", Heartbeat("k1", -1))
    assert left.member_epoch == -1
    back = live(broker, "g")
    assert isinstance(back, ClassicGroup) and back.state is GroupState.PREPARING_REBALANCE
    assert back.generation == epoch and set(back.members) == {c.member_id for c in classics}
    assert await classics[1].heartbeat() is ErrorCode.rebalance_in_progress
    await classic_rebalance(classics)
    assert back.state is GroupState.STABLE and back.generation == epoch + 1
    assert_partitioned({c.member_id: c.partitions for c in classics})


async def test_classic_members_leave_and_time_out_of_a_consumer_group() -> None:
    b, store = await make_broker(consumer_session_timeout_ms=60_000)
    try:
        classics = await stable_classic_group(b, "g", 2)
        out = await consumer_join(b, "g", "k1")
        await settle(b, "g", classics, {"k1": out.member_epoch})
        group = live(b, "g")
        # LeaveGroup for a classic member of the consumer group; a consumer-protocol member cannot leave that way.
        assert await b.groups.leave("g", [(classics[0].member_id, None), ("k1", None)]) == [
            ErrorCode.none, ErrorCode.unknown_member_id]
        assert classics[0].member_id not in group.members
        # A classic member that stops heartbeating is removed after its own (JoinGroup) session timeout.
        quiet = Classic(b, "g", "quiet", session_ms=200)
        assert (await quiet.join()).error is ErrorCode.none
        assert quiet.member_id in group.members
        await eventually(lambda: quiet.member_id not in group.members, "the silent classic member to be removed")
        assert isinstance(live(b, "g"), ConsumerGroup)  # a classic member leaving never downgrades
    finally:
        await b.stop()
        await store.close()


async def test_consumer_member_session_timeout_downgrades_the_group() -> None:
    b, store = await make_broker(consumer_session_timeout_ms=300)
    try:
        classics = await stable_classic_group(b, "g", 2)
        await consumer_join(b, "g", "k1")
        # k1 never heartbeats again; the classic members keep theirs going until the group is classic again.
        async with asyncio.timeout(HANG_GUARD):
            while isinstance(live(b, "g"), ConsumerGroup):
                for c in classics:
                    if await c.heartbeat() is ErrorCode.rebalance_in_progress and isinstance(
                        live(b, "g"), ConsumerGroup
                    ):
                        await c.join()
                        await c.sync()
                await asyncio.sleep(0.02)
        back = live(b, "g")
        assert isinstance(back, ClassicGroup) and set(back.members) == {c.member_id for c in classics}
        await classic_rebalance(classics)
        assert_partitioned({c.member_id: c.partitions for c in classics})
    finally:
        await b.stop()
        await store.close()


@pytest.mark.parametrize(("policy", "upgrades", "downgrades"), [
    ("disabled", False, False), ("upgrade", True, False), ("downgrade", False, True)])
async def test_migration_policy(policy: str, upgrades: bool, downgrades: bool) -> None:
    b, store = await make_broker(consumer_migration_policy=policy)
    try:
        classics = await stable_classic_group(b, "up", 2)
        ext = consumer_groups_for(b, "up")
        hb = Heartbeat("k1", 0, rebalance_timeout_ms=10_000, subscribed_topic_names=(TOPIC,), owned=frozenset())
        if upgrades:
            await ext.heartbeat("up", hb)
            assert isinstance(live(b, "up"), ConsumerGroup)
        else:
            with pytest.raises(GroupError) as info:
                await ext.heartbeat("up", hb)
            assert info.value.code is ErrorCode.group_id_not_found
            assert isinstance(live(b, "up"), ClassicGroup) and live(b, "up").state is GroupState.STABLE
        # Classic members may always join a consumer group (any policy); the last consumer member leaving
        # converts it back only when the policy allows downgrades.
        out = await ext.heartbeat("down", dataclasses.replace(hb, member_id="k2"))
        late = Classic(b, "down", "late")
        assert (await late.join()).error is ErrorCode.none and late.generation == out.member_epoch + 1
        await ext.heartbeat("down", Heartbeat("k2", -1))
        assert isinstance(live(b, "down"), ClassicGroup if downgrades else ConsumerGroup)
        assert classics  # the classic group of "up" kept its members either way
    finally:
        await b.stop()
        await store.close()


async def test_mixed_group_is_rebuilt_by_replay(broker: Broker) -> None:
    classics = await stable_classic_group(broker, "g", 2)
    out = await consumer_join(broker, "g", "k1")
    await settle(broker, "g", classics, {"k1": out.member_epoch})
    shard = broker.groups.shard_for("g")
    before = live(broker, "g")
    again = GroupShard(shard.partition, shard.plog, shard.config, extensions=broker.groups.extensions)
    await again.load()
    try:
        rebuilt = again.groups["g"]
        assert isinstance(rebuilt, ConsumerGroup)
        assert rebuilt.members == before.members and rebuilt.target == before.target
        assert {m.member_id for m in rebuilt.members.values() if m.uses_classic} == {c.member_id for c in classics}
        assert "g" not in again.classic_values  # the classic group's record was tombstoned
        assert all(m.state == MemberState.STABLE for m in rebuilt.members.values())
    finally:
        await again.close()


async def test_a_classic_join_waits_out_an_upgrade_being_written(broker: Broker) -> None:
    classics = await stable_classic_group(broker, "g", 2)
    classic = live(broker, "g")
    rejoins: list[asyncio.Future[JoinResult]] = []
    begin = classic.begin_conversion

    def begin_and_rejoin() -> None:  # a classic rejoin arrives while the upgrade's records are being written
        begin()
        rejoins.append(asyncio.ensure_future(classics[0].join()))

    classic.begin_conversion = begin_and_rejoin
    await consumer_join(broker, "g", "k1")
    r = await rejoins[0]
    # The rejoin was held until the group was a consumer group, then served as a classic member of it.
    group = live(broker, "g")
    assert isinstance(group, ConsumerGroup) and r.error is ErrorCode.none
    assert r.leader == "" and r.generation == group.members[r.member_id].epoch


async def test_a_classic_static_member_replacing_the_last_consumer_member_downgrades_without_rebalance(
    broker: Broker,
) -> None:
    ext = consumer_groups_for(broker, "g")
    k = await ext.heartbeat("g", Heartbeat("k1", 0, instance_id="i1", rebalance_timeout_ms=10_000,
                                           subscribed_topic_names=(TOPIC,), owned=frozenset()))
    classic = Classic(broker, "g", "c0")
    assert (await classic.join()).error is ErrorCode.none
    assert await classic.sync() is ErrorCode.none
    assigned = await settle(broker, "g", [classic], {"k1": k.member_epoch})
    group = live(broker, "g")
    epoch = group.group_epoch
    # The consumer-protocol static member restarts as a classic consumer under the same instance id.
    restarted = Classic(broker, "g", "k1-classic", instance="i1")
    r = await restarted.join()
    back = live(broker, "g")
    assert r.error is ErrorCode.none and isinstance(back, ClassicGroup)
    assert back.state is GroupState.STABLE and back.generation == epoch == r.generation
    assert set(back.members) == {classic.member_id, restarted.member_id}
    assert await restarted.sync() is ErrorCode.none
    assert restarted.partitions == assigned["k1"]  # it took over the old member's partitions
    assert await classic.heartbeat() is ErrorCode.none  # no rebalance


async def test_an_upgrade_that_cannot_be_written_leaves_the_classic_group_serving(broker: Broker) -> None:
    classics = await stable_classic_group(broker, "g", 2)
    shard = broker.groups.shard_for("g")
    real_write = shard.write

    async def failing(records: list[tuple[bytes, bytes | None]]) -> int:
        raise GroupError(ErrorCode.coordinator_not_available, "the offsets partition is unwritable")

    shard.write = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(GroupError) as info:
            await consumer_join(broker, "g", "k1")
        assert info.value.code is ErrorCode.coordinator_not_available
    finally:
        shard.write = real_write  # type: ignore[method-assign]
    group = live(broker, "g")
    assert isinstance(group, ClassicGroup) and group.converting is None and group.state is GroupState.STABLE
    assert [await c.heartbeat() for c in classics] == [ErrorCode.none, ErrorCode.none]
    await consumer_join(broker, "g", "k1")  # and the next attempt converts it
    assert isinstance(live(broker, "g"), ConsumerGroup)


async def test_classic_members_that_do_not_rejoin_or_sync_in_time_are_removed(broker: Broker) -> None:
    out = await consumer_join(broker, "g", "k1")
    group = live(broker, "g")
    # Joins but never syncs: removed after its rebalance timeout (the sync timer).
    unsynced = Classic(broker, "g", "unsynced", rebalance_ms=200)
    assert (await unsynced.join()).error is ErrorCode.none
    await eventually(lambda: unsynced.member_id not in group.members, "the member that never synced to go")
    # Told to rejoin and keeps heartbeating instead: removed after its rebalance timeout (the join timer).
    stubborn = Classic(broker, "g", "stubborn", rebalance_ms=300)
    assert (await stubborn.join()).error is ErrorCode.none
    assert await stubborn.sync() is ErrorCode.none
    await consumer_groups_for(broker, "g").heartbeat("g", Heartbeat("k1", out.member_epoch, subscribed_topic_names=(
        TOPIC, "other")))  # a subscription change bumps the group epoch: everyone must catch up
    assert await stubborn.heartbeat() is ErrorCode.rebalance_in_progress

    async def keep_heartbeating() -> None:
        while stubborn.member_id in group.members:
            assert await stubborn.heartbeat() in (ErrorCode.rebalance_in_progress, ErrorCode.unknown_member_id)
            await asyncio.sleep(0.05)

    async with asyncio.timeout(HANG_GUARD):
        await keep_heartbeating()
    assert await stubborn.heartbeat() is ErrorCode.unknown_member_id
