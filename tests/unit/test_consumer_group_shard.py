"""ConsumerGroups (the shard extension) on its own: write-then-replay, timers, conversions, takeover.

The shard is faked (a list of records that it replays into the extension as the real one does once a
write is durable); the extension, groups, records and assignors are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.base import GroupError
from brokers.groups.consumer import ConsumerGroup, ConsumerGroupConfig, Heartbeat
from brokers.groups.consumer_shard import ConsumerGroups
from tests.unit.test_consumer_group_state import Topics

pytestmark = pytest.mark.asyncio
HANG_GUARD = 30.0


class FakeShard:
    """What ConsumerGroups uses of a GroupShard: ``groups``, ``write`` (applied once "durable"), ``spawn``."""

    def __init__(self) -> None:
        self.groups: dict[str, Any] = {}
        self.log: list[tuple[bytes, bytes | None]] = []
        self.extensions: list[ConsumerGroups] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def write(self, records: list[tuple[bytes, bytes | None]]) -> int:
        base = len(self.log)
        self.log.extend(records)
        await asyncio.sleep(0)  # the write is asynchronous: other requests may run meanwhile
        self.replay(records, base)
        return base

    def replay(self, records: list[tuple[bytes, bytes | None]], base: int = 0) -> None:
        for i, (key, value) in enumerate(records):
            parsed = rec.decode_key(key)
            if isinstance(parsed, rec.UnknownKey):
                for ext in self.extensions:
                    if ext.handles(parsed.version):
                        ext.replay(parsed, value, base + i)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class OtherGroup:
    """A classic group as the extension sees it."""

    def __init__(self, empty: bool) -> None:
        self.empty = empty
        self.stopped = False

    def is_empty(self) -> bool:
        return self.empty

    def delete_records(self) -> list[tuple[bytes, bytes | None]]:
        return [(rec.encode_group_key("g"), None)]

    def shutdown(self) -> None:
        self.stopped = True


def make(session_ms: int = 60_000, **partitions: int) -> tuple[FakeShard, ConsumerGroups, Topics]:
    shard, topics = FakeShard(), Topics(**(partitions or {"orders": 4}))
    ext = ConsumerGroups(shard, ConsumerGroupConfig(100, session_ms, 10), topics)  # type: ignore[arg-type]
    shard.extensions.append(ext)
    ext.loaded()
    return shard, ext, topics


def join(member: str, *names: str, rebalance_ms: int = 30_000, **kw: Any) -> Heartbeat:
    return Heartbeat(member, 0, rebalance_timeout_ms=rebalance_ms, subscribed_topic_names=names or ("orders",),
                     owned=frozenset(), **kw)


async def eventually(check: Any, what: str) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not check():
            await asyncio.sleep(0.01)


async def test_heartbeats_are_written_then_replayed_into_a_live_group() -> None:
    shard, ext, _ = make()
    out = await ext.heartbeat("g", join("m1"))
    group = shard.groups["g"]
    assert isinstance(group, ConsumerGroup) and group is ext.groups["g"]
    assert out.member_epoch == 1 and group.members["m1"].epoch == 1
    assert len(shard.log) == len(out.records)
    with pytest.raises(GroupError) as e:
        await ext.heartbeat("nope", Heartbeat("m1", 3))
    assert e.value.code == ErrorCode.group_id_not_found


async def test_concurrent_joins_are_serialised() -> None:
    _, ext, _ = make()
    outs = await asyncio.gather(*(ext.heartbeat("g", join(f"m{i}")) for i in range(5)))
    assert sorted(o.member_epoch for o in outs) == [1, 2, 3, 4, 5]
    assert ext.groups["g"].group_epoch == 5 and len(ext.groups["g"].members) == 5


async def test_takeover_replays_the_log_and_restarts_timers() -> None:
    shard, ext, _ = make()
    await ext.heartbeat("g", join("m1"))
    await ext.heartbeat("g", join("m2"))
    other = FakeShard()
    again = ConsumerGroups(other, ext.config, ext.topics)  # type: ignore[arg-type]
    other.extensions.append(again)
    other.replay(shard.log)
    assert other.groups == {}  # nothing is live before the load completes
    again.loaded()
    g1, g2 = ext.groups["g"], other.groups["g"]
    assert isinstance(g2, ConsumerGroup)
    assert g2.members == g1.members and g2.target == g1.target and g2.group_epoch == g1.group_epoch
    assert {k for k, _ in g2.timers} == {"m1", "m2"}
    g2.shutdown()
    assert g2.timers == {}


async def test_silent_member_is_removed_after_the_session_timeout() -> None:
    _, ext, _ = make(session_ms=100)
    await ext.heartbeat("g", join("silent"))
    live = await ext.heartbeat("g", join("alive"))
    group = ext.groups["g"]
    epoch = live.member_epoch
    async with asyncio.timeout(HANG_GUARD):
        while "silent" in group.members:  # "alive" keeps heartbeating; "silent" does not
            epoch = (await ext.heartbeat("g", Heartbeat("alive", epoch, owned=frozenset()))).member_epoch
            await asyncio.sleep(0.02)
    assert "alive" in group.members and group.group_epoch == 3


async def test_member_that_does_not_revoke_in_time_is_removed() -> None:
    _, ext, _ = make()
    a = await ext.heartbeat("g", join("slow", rebalance_ms=50))
    await ext.heartbeat("g", join("new"))
    asked = await ext.heartbeat("g", Heartbeat("slow", a.member_epoch, owned=a.assignment))
    assert asked.revoking and ("slow", "rebalance") in ext.groups["g"].timers
    await eventually(lambda: "slow" not in ext.groups["g"].members, "the slow member to be removed")
    assert ext.groups["g"].group_epoch == 3


async def test_revoking_in_time_cancels_the_rebalance_timer() -> None:
    _, ext, _ = make()
    a = await ext.heartbeat("g", join("m1", rebalance_ms=30_000))
    await ext.heartbeat("g", join("m2"))
    asked = await ext.heartbeat("g", Heartbeat("m1", a.member_epoch, owned=a.assignment))
    assert ("m1", "rebalance") in ext.groups["g"].timers
    done = await ext.heartbeat("g", Heartbeat("m1", asked.member_epoch, owned=asked.assignment))
    assert not done.revoking and ("m1", "rebalance") not in ext.groups["g"].timers


async def test_classic_groups_and_conversion() -> None:
    shard, ext, _ = make()
    shard.groups["busy"] = OtherGroup(empty=False)
    with pytest.raises(GroupError) as e:
        await ext.heartbeat("busy", join("m1"))
    assert e.value.code == ErrorCode.group_id_not_found
    empty = shard.groups["g"] = OtherGroup(empty=True)
    out = await ext.heartbeat("g", join("m1"))
    assert out.member_epoch == 1 and isinstance(shard.groups["g"], ConsumerGroup) and empty.stopped
    assert shard.log[0] == (rec.encode_group_key("g"), None), "the classic group's record is tombstoned first"


async def test_deleted_group_ids_can_be_reused() -> None:
    shard, ext, _ = make()
    await ext.heartbeat("g", join("m1"))
    await ext.heartbeat("g", Heartbeat("m1", -1))
    group = ext.groups["g"]
    assert group.is_empty()
    # DeleteGroups in flight: the coordinator marks it dead and drops it before the tombstones are durable.
    group.mark_dead()
    with pytest.raises(GroupError) as e:
        await ext.heartbeat("g", join("m2"))
    assert e.value.code == ErrorCode.coordinator_not_available
    del shard.groups["g"]
    # Dropped without its records removed (e.g. retention): the next join removes them and starts afresh.
    out = await ext.heartbeat("g", join("m2"))
    assert out.member_epoch == 1 and list(ext.groups["g"].members) == ["m2"] and shard.groups["g"] is ext.groups["g"]
    # Deleting for real: the tombstones remove the group everywhere.
    await ext.heartbeat("g", Heartbeat("m2", 1))  # no-op heartbeat
    await ext.heartbeat("g", Heartbeat("m2", -1))
    ext.groups["g"].mark_dead()
    await shard.write(ext.groups["g"].delete_records())
    assert "g" not in ext.groups and "g" not in shard.groups
    assert ext.snapshot_records() == []
