"""The handover plan and owners view (brokers/cluster/handover.py), and the building blocks together: brokers
that follow the controller's assignment by taking and releasing ownership converge on it, on the embedded
store and a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from brokers.cluster.controller import Controller
from brokers.cluster.handover import OwnersView, Plan, plan
from brokers.cluster.membership import BrokerMembership, LiveBrokers
from brokers.cluster.ownership import OwnershipError, PartitionOwnership
from metadata.api import MetadataError
from metadata.keys import Keys
from metadata.models import OwnerRecord, TopicAssignment, TopicRecord
from metadata.session import LeasedSession
from tests.cluster.conftest import ClusterEnv

WAIT = 15.0
KEYS = Keys("handover")
T = str(uuid.UUID(int=1))
U = str(uuid.UUID(int=2))


def test_plan_takes_free_partitions_releases_moved_ones_and_waits_for_the_rest() -> None:
    assignments = {T: TopicAssignment(T, (1, 1, 2, 1, -1)), U: TopicAssignment(U, (2,))}
    owners = {
        (T, 0): OwnerRecord(1, 3),  # mine and assigned to me: keep
        (T, 2): OwnerRecord(1, 1),  # mine, assigned to 2: release
        (T, 3): OwnerRecord(2, 4),  # assigned to me, owned by 2: wait for it
        (T, 4): OwnerRecord(1, 1),  # unassigned (no live broker then): keep
        ("gone", 0): OwnerRecord(1, 9),  # topic deleted: release
    }
    assert plan(1, assignments, owners) == Plan(take=((T, 1),), release=((T, 2), ("gone", 0)), waiting=((T, 3),))
    assert plan(2, assignments, owners) == Plan(take=((U, 0),), release=((T, 3),), waiting=((T, 2),))
    assert plan(3, assignments, owners) == Plan()


@dataclass
class Broker:
    """A broker made of the building blocks, with a follower loop as ``tidelog broker`` will have."""

    node_id: int
    session: LeasedSession
    live: LiveBrokers
    controller: Controller
    owners: OwnersView
    ownership: PartitionOwnership
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    epochs: dict[tuple[str, int], int] = field(default_factory=dict)

    async def follow(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            todo = plan(self.node_id, self.controller.assignments.items, self.owners.owners)
            for topic_id, partition in todo.release:
                with contextlib.suppress(OwnershipError):
                    await self.ownership.release(topic_id, partition)
            for topic_id, partition in todo.take:
                with contextlib.suppress(OwnershipError, MetadataError):
                    taken = await self.ownership.take(topic_id, partition)
                    self.epochs[(topic_id, partition)] = taken.epoch

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.controller.stop()
        await self.owners.stop()
        await self.live.stop()
        await self.session.close()


async def start_broker(env: ClusterEnv, node_id: int) -> Broker:
    store = await env.peer()
    session = LeasedSession(store, env.ttl)
    await session.start()
    await BrokerMembership(store, KEYS, session, host="127.0.0.1", port=9000 + node_id, node_id=node_id).join()
    live = LiveBrokers(store, KEYS)
    owners = OwnersView(store, KEYS)
    broker = Broker(
        node_id, session, live, Controller(store, KEYS, session, node_id, live, debounce=0.01), owners,
        PartitionOwnership(store, KEYS, node_id, session),
    )  # fmt: skip
    for view in (owners, broker.controller.assignments):
        view.add_listener(lambda _keys: broker.wake.set())
    await live.start()
    await owners.start()
    await broker.controller.start()
    broker.wake.set()
    broker.task = asyncio.create_task(broker.follow())
    return broker


def converged(view: Broker, nodes: set[int], partitions: int) -> bool:
    assignments = view.controller.assignments.items
    owners = view.owners.owners
    if T not in assignments or set(assignments[T].owners) != nodes or len(assignments[T].owners) != partitions:
        return False
    return all(owners.get((T, p), OwnerRecord(-1, 0)).node_id == n for p, n in enumerate(assignments[T].owners))


async def wait_converged(view: Broker, nodes: set[int], partitions: int) -> Mapping[tuple[str, int], OwnerRecord]:
    async def check() -> None:
        while not converged(view, nodes, partitions):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(check(), WAIT)
    return view.owners.owners


@pytest.mark.asyncio
async def test_brokers_following_the_assignment_converge_and_moves_bump_epochs(cluster_env: ClusterEnv) -> None:
    brokers = [await start_broker(cluster_env, n) for n in (1, 2, 3)]
    try:
        await cluster_env.store.put(KEYS.topic("events"), TopicRecord("events", T, 12).encode())
        before = dict(await wait_converged(brokers[0], {1, 2, 3}, 12))
        assert all(r.epoch == 1 for r in before.values())
        brokers.append(await start_broker(cluster_env, 4))
        after = dict(await wait_converged(brokers[0], {1, 2, 3, 4}, 12))
        moved = {tp for tp in after if after[tp].node_id != before[tp].node_id}
        assert len(moved) == 3 and all(after[tp].node_id == 4 for tp in moved)
        assert all(after[tp].epoch == 2 for tp in moved) and all(after[tp].epoch == 1 for tp in set(after) - moved)
        dead = brokers[1]
        await cluster_env.expire(dead.session.lease_id)  # it dies: its owner keys vanish with its lease
        rest = {b.node_id for b in brokers} - {dead.node_id}
        final = await wait_converged(brokers[0], rest, 12)
        taken_over = {tp for tp, r in after.items() if r.node_id == dead.node_id}
        assert all(final[tp].epoch == 2 and final[tp].node_id != dead.node_id for tp in taken_over)
    finally:
        for broker in brokers:
            await broker.stop()


@pytest.mark.asyncio
async def test_the_owners_view_follows_take_and_release(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    await session.start()
    view = OwnersView(cluster_env.store, KEYS)
    await view.start()
    ownership = PartitionOwnership(cluster_env.store, KEYS, 5, session)
    await ownership.take(T, 3)
    await asyncio.wait_for(view.wait_for(lambda o: (T, 3) in o), WAIT)
    assert view.owner_of(T, 3) == OwnerRecord(5, 1)
    await ownership.release(T, 3)
    await asyncio.wait_for(view.wait_for(lambda o: not o), WAIT)
    assert view.owner_of(T, 3) is None
    await view.stop()
    await session.close()
