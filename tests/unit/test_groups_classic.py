"""The classic group state machine (ClassicGroup) on a shard over in-memory ledgers.

Timers are real asyncio timers with short timeouts; assertions never depend on how fast they fire, only
on what state they lead to (waits are bounded hang guards).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.base import GroupConfig, GroupError
from brokers.groups.classic import ClassicGroup, GroupState
from brokers.groups.member import JoinRequest, JoinResult
from brokers.groups.shard import GroupShard
from brokers.log.partition import LogConfig, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("t")
GUARD = 10.0  # hang guard only


class Env:
    def __init__(self, store: EmbeddedMetadataStore, ledgers: MemoryLedgerClient) -> None:
        self.store = store
        self.ledgers = ledgers
        self.shards: list[GroupShard] = []

    async def shard(self, **config: int) -> GroupShard:
        plog = PartitionLog(self.store, KEYS, self.ledgers, "offsets", 0, LogConfig())
        await plog.load()
        shard = GroupShard(0, plog, GroupConfig(**{"initial_rebalance_delay_ms": 0, **config}))
        await shard.load()
        self.shards.append(shard)
        return shard


@pytest_asyncio.fixture
async def env() -> object:
    e = Env(await EmbeddedMetadataStore.open(None), MemoryLedgerClient())
    yield e
    for shard in e.shards:
        await shard.close()


def _req(member_id: str = "", instance: str | None = None, protocols: tuple[tuple[str, bytes], ...] = (
    ("range", b"sub"),), session_ms: int = 10_000, rebalance_ms: int = 10_000, v4: bool = True,
         client: str = "c") -> JoinRequest:
    return JoinRequest("g", member_id, instance, client, "/127.0.0.1", session_ms, rebalance_ms, "consumer",
                       protocols, require_known_member_id=v4)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0.005)


async def _join_new(group: ClassicGroup, **kw: object) -> asyncio.Task[JoinResult]:
    """KIP-394: the first join gets MEMBER_ID_REQUIRED and an id; the second one (with it) waits."""
    first = await group.join(_req(**kw))  # type: ignore[arg-type]
    assert first.error is ErrorCode.member_id_required and first.member_id
    task = asyncio.create_task(group.join(_req(member_id=first.member_id, **kw)))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the join is registered with the group
    return task


async def _stable_pair(group: ClassicGroup) -> tuple[JoinResult, JoinResult]:
    """Two members, Stable: a joins alone (generation 1), b joins, a rejoins (generation 2), both sync."""
    ra = await asyncio.wait_for(await _join_new(group, client="a"), GUARD)
    assert ra.error is ErrorCode.none and ra.generation == 1 and ra.leader == ra.member_id
    await group.sync(ra.member_id, None, 1, None, None, {ra.member_id: b"alone"})
    b = await _join_new(group, client="b")
    assert group.heartbeat(ra.member_id, None, 1) is ErrorCode.rebalance_in_progress
    ra = await asyncio.wait_for(group.join(_req(member_id=ra.member_id)), GUARD)
    rb = await asyncio.wait_for(b, GUARD)
    assert ra.error is rb.error is ErrorCode.none and ra.generation == rb.generation == 2
    leader, follower = (ra, rb) if ra.leader == ra.member_id else (rb, ra)
    assert len(leader.members) == 2 and follower.members == ()
    assignments = {leader.member_id: b"L", follower.member_id: b"F"}
    s1 = asyncio.create_task(group.sync(follower.member_id, None, 2, "consumer", "range", {}))
    s2 = await group.sync(leader.member_id, None, 2, "consumer", "range", assignments)
    assert s2.error is ErrorCode.none and s2.assignment == b"L"
    assert (await asyncio.wait_for(s1, GUARD)).assignment == b"F"
    assert group.state is GroupState.STABLE
    return leader, follower


@pytest.mark.asyncio
async def test_join_sync_and_persisted_generation(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    shard.groups["g"] = group
    leader, follower = await _stable_pair(group)
    stored = shard.classic_values["g"]  # durable, applied once written
    assert stored.generation == 2 and stored.protocol == "range" and stored.leader == leader.member_id
    assert {m.member_id: m.assignment for m in stored.members} == {leader.member_id: b"L", follower.member_id: b"F"}
    assert group.heartbeat(follower.member_id, None, 2) is ErrorCode.none
    assert group.heartbeat(follower.member_id, None, 1) is ErrorCode.illegal_generation
    assert group.heartbeat("nobody", None, 2) is ErrorCode.unknown_member_id
    desc = group.describe()
    assert desc.state == "Stable" and desc.protocol == "range"
    assert sorted(m.assignment for m in desc.members) == [b"F", b"L"]


@pytest.mark.asyncio
async def test_a_join_triggers_a_rebalance_that_heartbeats_report(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    leader, follower = await _stable_pair(group)
    third = await _join_new(group, client="c3")
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.heartbeat(follower.member_id, None, 2) is ErrorCode.rebalance_in_progress
    # commits of the current generation are still accepted while preparing (eager clients commit on revoke)
    group.validate_offset_commit(follower.member_id, None, 2, 8)
    rejoin_l = asyncio.create_task(group.join(_req(member_id=leader.member_id)))
    rejoin_f = asyncio.create_task(group.join(_req(member_id=follower.member_id)))
    results = [await asyncio.wait_for(t, GUARD) for t in (rejoin_l, rejoin_f, third)]
    assert {r.generation for r in results} == {3} and {r.error for r in results} == {ErrorCode.none}
    assert group.state is GroupState.COMPLETING_REBALANCE
    with pytest.raises(GroupError) as err:
        group.validate_offset_commit(follower.member_id, None, 3, 8)
    assert err.value.code is ErrorCode.rebalance_in_progress
    stale = await group.sync(follower.member_id, None, 2, None, None, {})
    assert stale.error is ErrorCode.illegal_generation


@pytest.mark.asyncio
async def test_members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    leader, follower = await _stable_pair(group)
    for m in group.members.values():
        m.rebalance_timeout_ms = 300
    c = await _join_new(group, client="c", rebalance_ms=300)
    alone = asyncio.create_task(group.join(_req(member_id=leader.member_id, rebalance_ms=300)))
    done = [await asyncio.wait_for(t, GUARD) for t in (alone, c)]  # the follower never rejoins
    assert {r.generation for r in done} == {3}
    assert follower.member_id not in group.members and len(group.members) == 2
    assert group.heartbeat(follower.member_id, None, 3) is ErrorCode.unknown_member_id


@pytest.mark.asyncio
async def test_session_expiry_removes_a_silent_member(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    leader, follower = await _stable_pair(group)
    for m in group.members.values():
        m.session_timeout_ms = 400
    assert group.heartbeat(follower.member_id, None, 2) is ErrorCode.none  # its last heartbeat (400 ms session)
    keeper = leader.member_id

    async def heartbeats() -> None:
        while True:
            group.heartbeat(keeper, None, group.generation)
            await asyncio.sleep(0.05)

    beat = asyncio.create_task(heartbeats())
    try:
        await _until(lambda: follower.member_id not in group.members)  # the follower never heartbeats
        assert group.state is GroupState.PREPARING_REBALANCE
        again = await asyncio.wait_for(group.join(_req(member_id=keeper, session_ms=400)), GUARD)
        assert again.generation == 3 and again.leader == keeper and list(group.members) == [keeper]
    finally:
        beat.cancel()


async def _static_pair(group: ClassicGroup) -> tuple[JoinResult, JoinResult]:
    """Static members skip the MEMBER_ID_REQUIRED handshake."""
    ra = await asyncio.wait_for(group.join(_req(instance="i-a", client="a")), GUARD)
    await group.sync(ra.member_id, "i-a", 1, None, None, {ra.member_id: b"alone"})
    b = asyncio.create_task(group.join(_req(instance="i-b", client="b")))
    await asyncio.sleep(0)
    ra = await asyncio.wait_for(group.join(_req(member_id=ra.member_id, instance="i-a", client="a")), GUARD)
    rb = await asyncio.wait_for(b, GUARD)
    assert ra.generation == rb.generation == 2 and ra.leader == ra.member_id
    follower = asyncio.create_task(group.sync(rb.member_id, "i-b", 2, None, None, {}))
    await group.sync(ra.member_id, "i-a", 2, None, None, {ra.member_id: b"A", rb.member_id: b"B"})
    assert (await asyncio.wait_for(follower, GUARD)).assignment == b"B"
    return ra, rb


@pytest.mark.asyncio
async def test_static_member_rejoining_keeps_its_assignment_without_a_rebalance(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    ra, rb = await _static_pair(group)
    assert group.state is GroupState.STABLE
    # b restarts: a new process, same group.instance.id, unknown member id
    back = await group.join(_req(instance="i-b", client="b"))
    assert back.error is ErrorCode.none and back.generation == 2 and back.member_id != rb.member_id
    assert back.leader == ra.member_id and back.members == ()
    assert group.state is GroupState.STABLE
    synced = await group.sync(back.member_id, "i-b", 2, None, None, {})
    assert synced.assignment == b"B"
    assert group.heartbeat(ra.member_id, "i-a", 2) is ErrorCode.none  # the other member sees no rebalance
    assert group.heartbeat(rb.member_id, "i-b", 2) is ErrorCode.fenced_instance_id  # the old process is fenced
    assert shard.classic_values["g"].generation == 2
    assert back.member_id in {m.member_id for m in shard.classic_values["g"].members}


@pytest.mark.asyncio
async def test_static_leader_rejoin_is_told_to_skip_assignment(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    ra = await group.join(_req(instance="i-a"))
    await group.sync(ra.member_id, "i-a", 1, None, None, {ra.member_id: b"A"})
    v9 = await group.join(_req(instance="i-a"), supports_skip_assignment=True)
    assert v9.skip_assignment and v9.leader == v9.member_id and len(v9.members) == 1
    v5 = await group.join(_req(instance="i-a"))
    assert not v5.skip_assignment and v5.leader == v9.member_id != v5.member_id  # the old leader id
    assert group.generation == 1 and group.state is GroupState.STABLE


@pytest.mark.asyncio
async def test_leave_batched_and_leader_handover(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    leader, follower = await _stable_pair(group)
    codes = group.leave([(leader.member_id, None), ("ghost", None), ("", "no-such-instance")])
    assert codes == [ErrorCode.none, ErrorCode.unknown_member_id, ErrorCode.unknown_member_id]
    assert group.leader_id == follower.member_id and group.state is GroupState.PREPARING_REBALANCE
    done = await asyncio.wait_for(group.join(_req(member_id=follower.member_id)), GUARD)
    assert done.generation == 3 and done.leader == follower.member_id
    assert group.leave([(follower.member_id, None)]) == [ErrorCode.none]
    await _until(lambda: group.state is GroupState.EMPTY)
    assert group.generation == 4
    await _until(lambda: shard.classic_values["g"].generation == 4)  # the empty generation is persisted
    group.validate_offset_commit("", None, -1, 8)  # anyone may commit to an empty group


@pytest.mark.asyncio
async def test_static_leave_by_instance_id_and_fencing(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    _ra, rb = await _static_pair(group)
    assert group.leave([("someone-else", "i-b")]) == [ErrorCode.fenced_instance_id]
    assert group.leave([("", "i-b")]) == [ErrorCode.none]
    assert rb.member_id not in group.members and group.state is GroupState.PREPARING_REBALANCE


@pytest.mark.asyncio
async def test_join_errors(env: Env) -> None:
    shard = await env.shard(max_size=2)
    group = ClassicGroup("g", shard)
    leader, _follower = await _stable_pair(group)
    assert (await group.join(_req(member_id="unknown"))).error is ErrorCode.unknown_member_id
    other = await group.join(_req(protocols=(("roundrobin", b""),)))
    assert other.error is ErrorCode.inconsistent_group_protocol
    full = await group.join(_req())
    assert full.error is ErrorCode.group_max_size_reached
    with pytest.raises(GroupError) as err:
        group.validate_offset_commit("", None, -1, 8)
    assert err.value.code is ErrorCode.unknown_member_id
    with pytest.raises(GroupError) as err:
        group.validate_offset_commit(leader.member_id, None, 7, 8)
    assert err.value.code is ErrorCode.illegal_generation


@pytest.mark.asyncio
async def test_a_member_that_never_syncs_is_removed(env: Env) -> None:
    shard = await env.shard()
    group = ClassicGroup("g", shard)
    leader, follower = await _stable_pair(group)
    for m in group.members.values():
        m.rebalance_timeout_ms = 300
    third = await _join_new(group, client="c", rebalance_ms=300)
    again = [asyncio.create_task(group.join(_req(member_id=m.member_id, rebalance_ms=300))) for m in (leader, follower)]
    results = [await asyncio.wait_for(t, GUARD) for t in (*again, third)]
    new_leader = next(r for r in results if r.leader == r.member_id)
    quiet = next(r for r in results if r is not new_leader)
    await group.sync(new_leader.member_id, None, 3, None, None, {})
    await group.sync(next(r for r in results if r not in (new_leader, quiet)).member_id, None, 3, None, None, {})
    await _until(lambda: quiet.member_id not in group.members)  # it never sent SyncGroup
    assert group.state is GroupState.PREPARING_REBALANCE


@pytest.mark.asyncio
async def test_initial_rebalance_delay_gathers_members(env: Env) -> None:
    shard = await env.shard(initial_rebalance_delay_ms=200)
    group = ClassicGroup("g", shard)
    a = await _join_new(group, client="a")
    b = await _join_new(group, client="b")
    assert not a.done() and not b.done()  # nobody is answered before the delay ends
    ra, rb = await asyncio.wait_for(a, GUARD), await asyncio.wait_for(b, GUARD)
    assert ra.generation == rb.generation == 1 and len(group.members) == 2


@pytest.mark.asyncio
async def test_restored_group_expires_members_that_never_come_back(env: Env) -> None:
    shard = await env.shard()
    value = rec.GroupValue("consumer", 4, "range", "m1", 1, (
        rec.MemberMetadata("m1", None, "c", "/h", 300, 300, b"sub", b"asg"),
    ))
    group = ClassicGroup.restore("g", shard, value)
    assert group.state is GroupState.STABLE and group.generation == 4
    assert group.heartbeat("m1", None, 4) is ErrorCode.none
    await _until(lambda: group.state is GroupState.EMPTY)
    assert group.generation == 5
