"""LeasedSession (metadata/session.py) on the embedded store and a real etcd: registration under a lease,
loss noticed and reported at once, renewal, conflicts."""

from __future__ import annotations

import asyncio
import time

import pytest

from metadata.api import MetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.session import LeasedSession, RegistrationConflict, SessionLost
from tests.cluster.conftest import ClusterEnv
from tests.etcd_server import EtcdServer, etcd_available

WAIT = 10.0  # only reached when something expected never happens


async def bound_lease(store: MetadataStore, key: str) -> int | None:
    found = await store.get(key)
    return None if found is None else found.lease


@pytest.mark.asyncio
async def test_register_binds_the_key_and_close_revokes_it(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    lease_id = await session.start()
    await session.register("/s/a", b"1")
    assert await bound_lease(cluster_env.store, "/s/a") == lease_id
    await session.update("/s/a", b"2")
    found = await cluster_env.store.get("/s/a")
    assert found is not None and (found.value, found.lease) == (b"2", lease_id)
    await session.close()
    assert await cluster_env.store.get("/s/a") is None


@pytest.mark.asyncio
async def test_a_lost_lease_is_reported_at_once_and_blocks_writes(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    lease_id = await session.start()
    await session.register("/s/a", b"1")
    reasons: list[str] = []
    session.on_lost(reasons.append)
    started = time.monotonic()
    await cluster_env.expire(lease_id)
    await asyncio.wait_for(session.lost.wait(), WAIT)
    print(f"{cluster_env.kind}: lease loss noticed {time.monotonic() - started:.3f} s after the server ended it")
    assert len(reasons) == 1 and not session.alive
    with pytest.raises(SessionLost):
        await session.put("/s/b", b"x")
    assert await cluster_env.store.get("/s/a") is None
    await session.close()


@pytest.mark.asyncio
async def test_renew_registers_again_on_a_new_lease(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    first = await session.start()
    await session.register("/s/a", b"1")
    await cluster_env.expire(first)
    await asyncio.wait_for(session.lost.wait(), WAIT)
    second = await session.renew()
    assert second != first and session.alive and session.generation == 2
    assert await bound_lease(cluster_env.store, "/s/a") == second
    await session.close()


@pytest.mark.asyncio
async def test_renew_takes_back_keys_still_bound_to_its_old_lease(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    first = await session.start()
    await session.register("/s/a", b"1")
    session.mark_lost("told so by a test")  # noticed locally while the server still holds the lease
    second = await session.renew()
    assert await bound_lease(cluster_env.store, "/s/a") == second != first
    await session.close()


@pytest.mark.asyncio
async def test_a_key_held_by_another_session_is_refused(cluster_env: ClusterEnv) -> None:
    one = LeasedSession(cluster_env.store, cluster_env.ttl)
    two = LeasedSession(await cluster_env.peer(), cluster_env.ttl)
    await one.start()
    await two.start()
    await one.register("/s/a", b"one")
    with pytest.raises(RegistrationConflict):
        await two.register("/s/a", b"two")
    await one.close()
    await two.register("/s/a", b"two")  # free again once the holder's lease is revoked
    found = await cluster_env.store.get("/s/a")
    assert found is not None and found.value == b"two"
    await two.close()


@pytest.mark.asyncio
async def test_unregister_deletes_only_its_own_key(cluster_env: ClusterEnv) -> None:
    session = LeasedSession(cluster_env.store, cluster_env.ttl)
    await session.start()
    await session.register("/s/a", b"1")
    await session.unregister("/s/a")
    assert await cluster_env.store.get("/s/a") is None
    await cluster_env.store.put("/s/a", b"someone else")
    await session.unregister("/s/a")
    assert await cluster_env.store.get("/s/a") is not None
    await session.close()


@pytest.mark.asyncio
async def test_etcd_unreachable_for_a_ttl_marks_the_session_lost(tmp_path: object) -> None:
    """etcd stopped: no keepalive succeeds; the session reports the loss about one ttl after the last refresh."""
    if not etcd_available():
        pytest.skip("etcd binary not found")
    with EtcdServer() as etcd:
        store = await EtcdMetadataStore.connect(etcd.url, request_timeout=1.0, reconnect_timeout=2.0)
        session = LeasedSession(store, 1.0)
        await session.start()
        etcd.kill()
        started = time.monotonic()
        await asyncio.wait_for(session.lost.wait(), WAIT)
        print(f"etcd unreachable: lease loss noticed {time.monotonic() - started:.3f} s after etcd was killed")
        assert not session.alive
        await session.close(revoke=False)
        await store.close()
