"""Controller election and assignment (brokers/cluster/controller.py) on the embedded store and a real etcd:
brokers in one process, each with its own store client, session, membership and controller."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from brokers.cluster.assignment import PartitionSpec
from brokers.cluster.controller import Controller, _compute
from brokers.cluster.membership import BrokerMembership, LiveBrokers
from metadata.api import Put, VersionConflict
from metadata.keys import Keys
from metadata.models import OwnerRecord, Reassignment, TopicAssignment, TopicRecord
from metadata.session import LeasedSession
from tests.cluster.conftest import ClusterEnv

WAIT = 15.0
KEYS = Keys("ctl")
EVENTS = TopicRecord("events", str(uuid.UUID(int=1)), 12)
OFFSETS = TopicRecord("__consumer_offsets", str(uuid.UUID(int=2)), 50)


@dataclass
class Node:
    node_id: int
    session: LeasedSession
    live: LiveBrokers
    controller: Controller

    async def stop(self) -> None:
        await self.controller.stop()
        await self.live.stop()
        await self.session.close()


async def start_node(env: ClusterEnv, node_id: int) -> Node:
    store = await env.peer()
    session = LeasedSession(store, env.ttl)
    await session.start()
    await BrokerMembership(store, KEYS, session, host="127.0.0.1", port=9000 + node_id, node_id=node_id).join()
    live = LiveBrokers(store, KEYS)
    await live.start()
    controller = Controller(store, KEYS, session, node_id, live, debounce=0.01)
    await controller.start()
    return Node(node_id, session, live, controller)


async def create_topic(env: ClusterEnv, topic: TopicRecord) -> None:
    await env.store.put(KEYS.topic(topic.name), topic.encode())


def owners(assignments: Mapping[str, TopicAssignment]) -> Counter[int]:
    return Counter(n for a in assignments.values() for n in a.owners)


def balanced_over(nodes: set[int], topics: list[TopicRecord]):  # type: ignore[no-untyped-def]
    """Predicate: every topic fully assigned to exactly ``nodes``, by count max - min <= 1 overall and per topic."""

    def check(assignments: Mapping[str, TopicAssignment]) -> bool:
        if set(assignments) != {t.topic_id for t in topics}:
            return False
        for t in topics:
            a = assignments[t.topic_id]
            per = Counter(a.owners)
            if len(a.owners) != t.partitions or not set(per) <= nodes:
                return False
            counts = [per.get(n, 0) for n in nodes]
            if max(counts) - min(counts) > 1:
                return False
        total = owners(assignments)
        counts = [total.get(n, 0) for n in nodes]
        return set(total) == nodes and max(counts) - min(counts) <= 1

    return check


async def wait_assigned(node: Node, nodes: set[int], topics: list[TopicRecord]) -> None:
    await asyncio.wait_for(node.controller.assignments.wait_until(balanced_over(nodes, topics)), WAIT)


def leaders(nodes: list[Node]) -> list[int]:
    return [n.node_id for n in nodes if n.controller.election.is_leader]


async def wait_leader(nodes: list[Node]) -> Node:
    async def one() -> Node:
        while len(leaders(nodes)) != 1:
            await asyncio.sleep(0.02)
        return next(n for n in nodes if n.controller.election.is_leader)

    return await asyncio.wait_for(one(), WAIT)


@pytest.mark.asyncio
async def test_one_controller_spreads_every_topic_over_the_brokers(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2, 3)]
    try:
        leader = await wait_leader(nodes)
        await create_topic(cluster_env, EVENTS)
        await create_topic(cluster_env, OFFSETS)
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS, OFFSETS])
        assert leaders(nodes) == [leader.node_id]
        assert all(n.controller.election.leader_id == leader.node_id for n in nodes)
        per = Counter(nodes[0].controller.assignments.items[EVENTS.topic_id].owners)
        assert sorted(per.values()) == [4, 4, 4]
        grown = TopicRecord(EVENTS.name, EVENTS.topic_id, 15)  # CreatePartitions
        await create_topic(cluster_env, grown)
        await wait_assigned(nodes[0], {1, 2, 3}, [grown, OFFSETS])
        await cluster_env.store.delete(KEYS.topic(OFFSETS.name))
        await wait_assigned(nodes[0], {1, 2, 3}, [grown])
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_brokers_joining_and_leaving_are_rebalanced_stickily(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2, 3)]
    try:
        await create_topic(cluster_env, EVENTS)
        await create_topic(cluster_env, OFFSETS)
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS, OFFSETS])
        before = dict(nodes[0].controller.assignments.items)
        nodes.append(await start_node(cluster_env, 4))
        await wait_assigned(nodes[0], {1, 2, 3, 4}, [EVENTS, OFFSETS])
        after = dict(nodes[0].controller.assignments.items)
        moved = sum(1 for tid, a in after.items() for p, owner in enumerate(a.owners) if before[tid].owners[p] != owner)
        assert moved == owners(after)[4]  # every move went to the new broker
        dead = next(n for n in nodes if not n.controller.election.is_leader)
        await cluster_env.expire(dead.session.lease_id)  # a broker dies: its registration vanishes
        rest = {n.node_id for n in nodes} - {dead.node_id}
        await wait_assigned(nodes[0] if nodes[0] is not dead else nodes[1], rest, [EVENTS, OFFSETS])
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_a_controller_that_loses_its_lease_stops_at_once_and_another_takes_over(
    cluster_env: ClusterEnv,
) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2, 3)]
    try:
        await create_topic(cluster_env, EVENTS)
        old = await wait_leader(nodes)
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS])
        await cluster_env.expire(old.session.lease_id)
        await asyncio.wait_for(old.session.lost.wait(), WAIT)
        assert not old.controller.election.is_leader  # deposed in the lost-callback, before any await
        assert old.controller._task is None
        rest = [n for n in nodes if n is not old]
        new = await wait_leader(rest)
        assert new is not old
        survivor = rest[0]
        await wait_assigned(survivor, {n.node_id for n in rest}, [EVENTS])
        await create_topic(cluster_env, OFFSETS)  # the new controller acts on new topics
        await wait_assigned(survivor, {n.node_id for n in rest}, [EVENTS, OFFSETS])
        assert not old.controller.election.is_leader
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_a_deposed_controllers_late_write_is_refused_by_the_store(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2)]
    try:
        old = await wait_leader(nodes)
        version = old.controller.election.version
        await old.controller.election.stop()  # steps down; the other broker is elected
        other = next(n for n in nodes if n is not old)
        await wait_leader([other])
        await create_topic(cluster_env, EVENTS)
        await wait_assigned(other, {1, 2}, [EVENTS])
        old.controller.election.version = version  # a controller that has not noticed yet
        await create_topic(cluster_env, OFFSETS)
        await asyncio.wait_for(old.controller.topics.wait_until(lambda t: len(t) == 2), WAIT)
        with pytest.raises(VersionConflict):
            await old.controller.reconcile()
        old.controller.election.version = 0
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_a_stepping_down_controller_hands_over(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2)]
    try:
        old = await wait_leader(nodes)
        await old.controller.stop()
        other = next(n for n in nodes if n is not old)
        await wait_leader([other])
        assert other.controller.election.leader_id == other.node_id
    finally:
        for node in nodes:
            await node.stop()


# --- moves (pins: keys.reassignment, written by AlterPartitionReassignments) --------------------------------
def test_a_pinned_partition_goes_to_its_live_target_and_the_rest_stay_balanced() -> None:
    specs = [PartitionSpec("t", p) for p in range(6)]
    current = {("t", p): 1 + p % 3 for p in range(6)}  # balanced: 0,3 on 1; 1,4 on 2; 2,5 on 3
    plain = _compute([1, 2, 3], specs, current, {"t": 6})
    assert plain["t"].owners == (1, 2, 3, 1, 2, 3)
    pinned = _compute([1, 2, 3], specs, current, {"t": 6}, {("t", 5): 1})
    assert pinned["t"].owners[5] == 1
    assert sorted(Counter(pinned["t"].owners).values()) == [2, 2, 2]  # another partition made room
    gone = _compute([1, 2, 3], specs, current, {"t": 6}, {("t", 5): 9})  # target not live: ignored
    assert gone == plain


async def pin(env: ClusterEnv, topic: TopicRecord, partition: int, target: int) -> None:
    key = KEYS.reassignment(topic.topic_id, partition)
    await env.store.put(key, Reassignment(topic.topic_id, partition, target).encode())


@pytest.mark.asyncio
async def test_a_pin_moves_a_partition_and_is_cleared_once_the_target_owns_it(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2, 3)]
    try:
        leader = await wait_leader(nodes)
        await create_topic(cluster_env, EVENTS)
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS])
        before = nodes[0].controller.assignments.items[EVENTS.topic_id].owners
        target = next(n for n in (1, 2, 3) if n != before[7])
        await pin(cluster_env, EVENTS, 7, target)
        await asyncio.wait_for(
            nodes[0].controller.assignments.wait_until(lambda a: a[EVENTS.topic_id].owners[7] == target), WAIT
        )
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS])  # still balanced: another partition made room
        assert KEYS.reassignment(EVENTS.topic_id, 7)[len(KEYS.reassignments_prefix()) :] in (
            leader.controller.reassignments.items
        )  # not done until the target owns it
        await cluster_env.store.put(KEYS.owner(EVENTS.topic_id, 7), OwnerRecord(target, 2).encode())  # it took it
        await asyncio.wait_for(leader.controller.reassignments.wait_until(lambda pins: not pins), WAIT)
        assert await cluster_env.store.get(KEYS.reassignment(EVENTS.topic_id, 7)) is None
        assert leader.controller.pins_cleared == 1
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_a_pin_to_a_broker_that_is_not_live_is_dropped(cluster_env: ClusterEnv) -> None:
    nodes = [await start_node(cluster_env, n) for n in (1, 2)]
    try:
        leader = await wait_leader(nodes)
        await create_topic(cluster_env, EVENTS)
        await wait_assigned(nodes[0], {1, 2}, [EVENTS])
        before = dict(nodes[0].controller.assignments.items)
        gone = TopicRecord("gone", str(uuid.UUID(int=3)), 1)
        # Both pins in one commit: written one by one, the first could be cleared before the second is put, and
        # the wait below would see no pins in between.
        await cluster_env.store.commit(
            [],
            [
                Put(KEYS.reassignment(EVENTS.topic_id, 3), Reassignment(EVENTS.topic_id, 3, 9).encode()),  # no broker 9
                Put(KEYS.reassignment(gone.topic_id, 0), Reassignment(gone.topic_id, 0, 1).encode()),  # no such topic
            ],
        )
        # Not "until no pins": the view may not have seen the commit yet, and it had none before it.
        async with asyncio.timeout(WAIT):
            while leader.controller.pins_cleared < 2 or leader.controller.reassignments.items:
                await asyncio.sleep(0.02)
        assert dict(nodes[0].controller.assignments.items) == before
        assert leader.controller.pins_cleared == 2
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.asyncio
async def test_a_broker_that_comes_back_is_balanced_onto_only_after_the_rejoin_delay(cluster_env: ClusterEnv) -> None:
    """broker.rejoin.delay.ms: a restarted broker gets no partition moved back to it at once (clients still back
    off reconnecting to it); a new broker is balanced onto at once."""
    nodes = [await start_node(cluster_env, n) for n in (1, 2)]
    for n in nodes:
        n.controller._rejoin_delay = 3.0
    back: Node | None = None
    try:
        await wait_leader(nodes)
        await create_topic(cluster_env, EVENTS)
        await wait_assigned(nodes[0], {1, 2}, [EVENTS])
        leaving = nodes.pop(1)
        await leaving.stop()
        await wait_assigned(nodes[0], {1}, [EVENTS])
        back = await start_node(cluster_env, 2)
        fresh = await start_node(cluster_env, 3)  # never seen leaving: balanced onto at once
        nodes.append(fresh)
        # Broker 2 registered before broker 3: only if it is held back is there a spread over {1, 3} alone.
        await wait_assigned(nodes[0], {1, 3}, [EVENTS])
        await wait_assigned(nodes[0], {1, 2, 3}, [EVENTS])  # after the delay
    finally:
        for node in [*nodes, *([back] if back else [])]:
            await node.stop()
