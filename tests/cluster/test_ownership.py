"""Partition ownership (brokers/cluster/ownership.py) on the embedded store and a real etcd: one
transaction creates the leased owner key and bumps the epoch; races have one winner; expiry frees the key;
only the owner releases."""

from __future__ import annotations

import asyncio

import pytest

from brokers.cluster.ownership import NotOwner, OwnedElsewhere, PartitionOwnership
from metadata.keys import Keys
from metadata.models import LedgerRef, OwnerRecord, PartitionState
from metadata.session import LeasedSession, SessionLost
from tests.cluster.conftest import ClusterEnv

KEYS = Keys("owners")
TOPIC = "7b0b5c9e-0000-4000-8000-000000000001"


async def broker(env: ClusterEnv, node_id: int) -> tuple[LeasedSession, PartitionOwnership]:
    store = await env.peer()
    session = LeasedSession(store, env.ttl)
    await session.start()
    return session, PartitionOwnership(store, KEYS, node_id, session)


async def state_of(env: ClusterEnv, partition: int) -> PartitionState:
    found = await env.store.get(KEYS.partition(TOPIC, partition))
    assert found is not None
    return PartitionState.decode(found.value)


@pytest.mark.asyncio
async def test_take_creates_the_leased_owner_key_and_bumps_the_epoch(cluster_env: ClusterEnv) -> None:
    ledgers = (LedgerRef(5, 0, 99, 1000, True),)
    await cluster_env.store.put(KEYS.partition(TOPIC, 0), PartitionState(3, 10, ledgers).encode())
    session, owner = await broker(cluster_env, 1)
    taken = await owner.take(TOPIC, 0)
    assert taken.epoch == 4
    found = await cluster_env.store.get(KEYS.owner(TOPIC, 0))
    assert found is not None and found.lease == session.lease_id
    assert OwnerRecord.decode(found.value) == OwnerRecord(1, 4)
    assert await state_of(cluster_env, 0) == PartitionState(4, 10, ledgers)  # only the epoch changed
    state = await cluster_env.store.get(KEYS.partition(TOPIC, 0))
    assert state is not None and state.version == taken.state_version
    await session.close()


@pytest.mark.asyncio
async def test_two_brokers_racing_for_a_partition_one_wins(cluster_env: ClusterEnv) -> None:
    brokers = [await broker(cluster_env, n) for n in (1, 2, 3)]
    for partition in range(5):
        results = await asyncio.gather(*(owner.take(TOPIC, partition) for _, owner in brokers), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(e, OwnedElsewhere) for e in losers), losers
        assert winners[0].epoch == 1 == (await state_of(cluster_env, partition)).epoch
    for session, _ in brokers:
        await session.close()


@pytest.mark.asyncio
async def test_an_expired_lease_frees_the_partition_for_a_higher_epoch(cluster_env: ClusterEnv) -> None:
    old_session, old = await broker(cluster_env, 1)
    new_session, new = await broker(cluster_env, 2)
    assert (await old.take(TOPIC, 0)).epoch == 1
    with pytest.raises(OwnedElsewhere) as refused:
        await new.take(TOPIC, 0)
    assert refused.value.owner == OwnerRecord(1, 1)
    await cluster_env.expire(old_session.lease_id)
    assert await cluster_env.store.get(KEYS.owner(TOPIC, 0)) is None
    assert (await new.take(TOPIC, 0)).epoch == 2
    with pytest.raises(NotOwner):  # the deposed owner cannot free the new owner's key
        await old.release(TOPIC, 0)
    assert await new.owner_of(TOPIC, 0) == OwnerRecord(2, 2)
    await old_session.close()
    await new_session.close()


@pytest.mark.asyncio
async def test_release_by_a_non_owner_is_refused_and_by_the_owner_frees_it(cluster_env: ClusterEnv) -> None:
    one_session, one = await broker(cluster_env, 1)
    two_session, two = await broker(cluster_env, 2)
    await one.take(TOPIC, 0)
    with pytest.raises(NotOwner):
        await two.release(TOPIC, 0)
    assert await two.owner_of(TOPIC, 0) == OwnerRecord(1, 1)
    assert await one.release(TOPIC, 0) is True
    assert await one.release(TOPIC, 0) is False  # already gone
    assert (await two.take(TOPIC, 0)).epoch == 2
    await one_session.close()
    await two_session.close()


@pytest.mark.asyncio
async def test_the_same_node_id_under_another_lease_is_not_the_owner(cluster_env: ClusterEnv) -> None:
    """A restarted broker (same node id, new lease) cannot release what its previous life owned."""
    old_session, old = await broker(cluster_env, 1)
    await old.take(TOPIC, 0)
    reborn_session, reborn = await broker(cluster_env, 1)
    with pytest.raises(NotOwner):
        await reborn.release(TOPIC, 0)
    await old_session.close()
    await reborn_session.close()


@pytest.mark.asyncio
async def test_no_take_without_a_live_session(cluster_env: ClusterEnv) -> None:
    session, owner = await broker(cluster_env, 1)
    session.mark_lost("test")
    with pytest.raises(SessionLost):
        await owner.take(TOPIC, 0)
    assert await cluster_env.store.get(KEYS.owner(TOPIC, 0)) is None
    await session.close()


@pytest.mark.asyncio
async def test_take_retries_when_the_state_moves_under_it(cluster_env: ClusterEnv) -> None:
    """An old owner's last state commit lands between the read and the take: the take reads again."""
    session, owner = await broker(cluster_env, 1)
    await cluster_env.store.put(KEYS.partition(TOPIC, 0), PartitionState(1).encode())
    store = owner._store
    real_get = store.get
    moved = False

    async def get_then_move(key: str):  # type: ignore[no-untyped-def]
        nonlocal moved
        found = await real_get(key)
        if key == KEYS.partition(TOPIC, 0) and not moved:
            moved = True
            await store.put(key, PartitionState(1, 5).encode())
        return found

    owner._store = type("S", (), {"get": staticmethod(get_then_move), "commit": store.commit})()  # type: ignore[assignment]
    taken = await owner.take(TOPIC, 0)
    assert taken.epoch == 2 and taken.state == PartitionState(2, 5)
    await session.close()
