"""PostgreSQL-only metadata tests (the shared contract runs in test_metadata_store.py): several clients on
one database, a server restart and outage, compaction, and a lease whose holder stops.

Restart and outage use a private server; the rest use the session's server with a fresh database each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from metadata.api import Event, EventKind, LeaseExpired, Put, RevisionCompacted, StoreUnavailable
from metadata.postgres import PostgresMetadataStore
from tests.etcd_server import free_port
from tests.postgres_server import PostgresServer, postgres_available

pytestmark = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not found")
WAIT = 10.0  # only reached when an expected event never arrives


async def take(watch: AsyncIterator[Event], n: int) -> list[Event]:
    return [await asyncio.wait_for(anext(watch), WAIT) for _ in range(n)]


@pytest.fixture
def private_pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest_asyncio.fixture
async def two_clients(metadata_store_postgres_server: PostgresServer) -> AsyncIterator[list[PostgresMetadataStore]]:
    url = metadata_store_postgres_server.fresh_database()
    stores = [await PostgresMetadataStore.connect(url) for _ in range(2)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def eventually(check: Any) -> None:
    """Await ``check()`` until it stops raising (a restarted server takes a moment to be reachable)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            await check()
            return
        except (StoreUnavailable, AssertionError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_two_clients_writing_at_once_share_one_revision_order(two_clients: list[PostgresMetadataStore]) -> None:
    a, b = two_clients
    watch = a.watch("/w/", 1)

    async def writer(store: PostgresMetadataStore, name: str) -> list[int]:
        return [await store.put(f"/w/{name}{i}", b"x") for i in range(20)]

    revisions = await asyncio.gather(writer(a, "a"), writer(b, "b"))
    flat = sorted(revisions[0] + revisions[1])
    assert flat == list(range(1, 41))  # no revision skipped, none shared by two writes
    events = await take(watch, 40)
    assert [e.revision for e in events] == flat
    assert await b.revision() == 40


@pytest.mark.asyncio
async def test_lease_expires_when_its_holder_stops(two_clients: list[PostgresMetadataStore]) -> None:
    holder, observer = two_clients
    lease = await holder.lease(1)
    await holder.put("/owners/p0", b"me", lease=lease.id)
    await observer.put("/owners/free", b"kept")
    watch = observer.watch("/owners/", await observer.revision() + 1)
    await holder.close()  # keepalives stop, as if the holder died; the observer's reaper removes it
    [event] = await take(watch, 1)
    assert (event.kind, event.key) == (EventKind.DELETE, "/owners/p0")
    with pytest.raises(LeaseExpired):
        await observer.put("/owners/p1", b"x", lease=lease.id)
    assert [i.key for i in await observer.list("/owners/")] == ["/owners/free"]


@pytest.mark.asyncio
async def test_watch_from_a_compacted_revision_raises(two_clients: list[PostgresMetadataStore]) -> None:
    store, _ = two_clients
    first = await store.put("/w/k", b"1")
    latest = await store.put("/w/k", b"2")
    await store.compact(latest)
    with pytest.raises(RevisionCompacted) as info:
        await take(store.watch("/w/", first), 1)
    assert (info.value.requested, info.value.oldest) == (first, latest)
    [event] = await take(store.watch("/w/", latest), 1)
    assert event.value == b"2"


@pytest.mark.asyncio
async def test_watch_resumes_across_a_server_restart(private_pg: PostgresServer) -> None:
    store = await PostgresMetadataStore.connect(private_pg.url)
    try:
        watch = store.watch("/w/")
        await store.commit([], [Put("/w/a", b"1"), Put("/w/b", b"2")])
        first = await take(watch, 1)
        await asyncio.to_thread(private_pg.restart)

        async def write() -> None:
            await store.put("/w/c", b"3")

        await eventually(write)  # the pool's old connections fail once, then it reconnects
        rest = await take(watch, 2)
        assert [(e.key, e.value) for e in first + rest] == [("/w/a", b"1"), ("/w/b", b"2"), ("/w/c", b"3")]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_outage_raises_store_unavailable_then_recovers(private_pg: PostgresServer) -> None:
    store = await PostgresMetadataStore.connect(private_pg.url, request_timeout=2)
    try:
        await store.put("/k", b"v")
        await asyncio.to_thread(private_pg.kill)
        with pytest.raises(StoreUnavailable):
            await store.get("/k")
        with pytest.raises(StoreUnavailable):
            await store.put("/k", b"w")
        await asyncio.to_thread(private_pg.start)

        async def readable() -> None:
            got = await store.get("/k")
            assert got is not None and got.value == b"v"

        await eventually(readable)
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await PostgresMetadataStore.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")


@pytest.mark.asyncio
async def test_a_role_with_only_data_rights_can_use_a_prepared_database(
    metadata_store_postgres_server: PostgresServer,
) -> None:
    """The owner creates the schema once; afterwards a role without CREATE rights connects and works."""
    url = metadata_store_postgres_server.fresh_database()
    owner = await PostgresMetadataStore.connect(url)
    database = url.rsplit("/", 1)[1]
    role = f"tidelog_app_{database}"
    await owner._with_conn(
        lambda c: c.execute(
            f"CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
            f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
    )
    await owner.close()
    app = await PostgresMetadataStore.connect(url.replace("://postgres@", f"://{role}@", 1))
    try:
        lease = await app.lease(5)
        watch = app.watch("/k/")
        version = await app.put("/k/a", b"1", lease=lease.id)
        [event] = await take(watch, 1)
        assert (event.key, event.revision) == ("/k/a", version)
        await lease.revoke()
        assert await app.get("/k/a") is None
    finally:
        await app.close()


@pytest.mark.asyncio
async def test_notifications_naming_keys_or_too_many_to_name_reach_the_right_watches(
    two_clients: list[PostgresMetadataStore],
) -> None:
    """A write's notification names its keys, so only watches of those prefixes read; a commit with more key
    bytes than one notification holds names none, and every watch reads. Either way nothing is missed."""
    writer, reader = two_clients
    a, b = reader.watch("/a/"), reader.watch("/b/")
    await writer.put("/a/1", b"x")
    [first] = await take(a, 1)
    assert first.key == "/a/1"
    long_keys = [f"/b/{'k' * 60}{i:03d}" for i in range(100)]  # ~13 000 hex characters: over the limit
    await writer.commit([], [Put(k, b"v") for k in long_keys])
    await writer.put("/a/2", b"y")
    assert [e.key for e in await take(b, 100)] == long_keys
    [second] = await take(a, 1)
    assert second.key == "/a/2"
