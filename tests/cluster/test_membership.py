"""Broker membership (brokers/cluster/membership.py) on the embedded store and a real etcd."""

from __future__ import annotations

import asyncio

import pytest

from brokers.cluster.membership import (
    FIRST_ALLOCATED_NODE_ID,
    BrokerMembership,
    DuplicateNodeId,
    LiveBrokers,
    allocate_node_id,
    initialise_cluster,
)
from metadata.keys import Keys
from metadata.models import BrokerRecord
from metadata.session import LeasedSession
from tests.cluster.conftest import ClusterEnv

WAIT = 10.0
KEYS = Keys("members")


async def joined(env: ClusterEnv, node_id: int | None, port: int) -> tuple[LeasedSession, BrokerMembership]:
    session = LeasedSession(await env.peer(), env.ttl)
    await session.start()
    member = BrokerMembership(env.store, KEYS, session, host="127.0.0.1", port=port, rack="r1", node_id=node_id)
    await member.join()
    return session, member


@pytest.mark.asyncio
async def test_live_brokers_follow_joins_leaves_and_expiry(cluster_env: ClusterEnv) -> None:
    view = LiveBrokers(cluster_env.store, KEYS)
    await view.start()
    one, _ = await joined(cluster_env, 1, 9001)
    two, member_two = await joined(cluster_env, 2, 9002)
    await asyncio.wait_for(view.wait_for(lambda b: set(b) == {1, 2}), WAIT)
    assert view.brokers[1] == BrokerRecord(1, "127.0.0.1", 9001, "r1")
    await member_two.leave()
    await asyncio.wait_for(view.wait_for(lambda b: set(b) == {1}), WAIT)
    await cluster_env.expire(one.lease_id)  # broker 1 "dies": its lease ends, its registration goes
    await asyncio.wait_for(view.wait_for(lambda b: not b), WAIT)
    await one.close()
    await two.close()
    await view.stop()


@pytest.mark.asyncio
async def test_a_node_id_held_by_a_live_broker_is_refused(cluster_env: ClusterEnv) -> None:
    first, _ = await joined(cluster_env, 7, 9001)
    with pytest.raises(DuplicateNodeId):
        await joined(cluster_env, 7, 9002)
    await first.close()  # revoked: the id is free again
    again, member = await joined(cluster_env, 7, 9003)
    assert member.record == BrokerRecord(7, "127.0.0.1", 9003, "r1")
    await again.close()


@pytest.mark.asyncio
async def test_allocated_node_ids_are_unique_and_above_the_reserved_range(cluster_env: ClusterEnv) -> None:
    stores = [await cluster_env.peer() for _ in range(4)]
    ids = await asyncio.gather(*(allocate_node_id(s, KEYS) for s in stores for _ in range(3)))
    assert len(set(ids)) == 12 and min(ids) == FIRST_ALLOCATED_NODE_ID
    session, member = await joined(cluster_env, None, 9001)
    assert member.node_id == FIRST_ALLOCATED_NODE_ID + 12
    await session.close()


@pytest.mark.asyncio
async def test_the_cluster_id_is_created_once(cluster_env: ClusterEnv) -> None:
    stores = [await cluster_env.peer() for _ in range(5)]
    ids = await asyncio.gather(*(initialise_cluster(s, KEYS) for s in stores))
    assert len(set(ids)) == 1 and ids[0]
    assert await initialise_cluster(cluster_env.store, KEYS) == ids[0]


@pytest.mark.asyncio
async def test_a_broker_whose_registration_vanishes_marks_its_session_lost(cluster_env: ClusterEnv) -> None:
    session, member = await joined(cluster_env, 3, 9001)
    view = LiveBrokers(cluster_env.store, KEYS)
    member.guard(view)
    await view.start()
    await cluster_env.store.delete(KEYS.broker(3))  # e.g. an operator, or a lease ended server-side
    await asyncio.wait_for(session.lost.wait(), WAIT)
    assert not session.alive
    await view.stop()
    await session.close()
