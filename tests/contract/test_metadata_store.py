"""The MetadataStore contract: every implementation must pass every test here (see conftest.py).

Waits on watches use generous timeouts that only expire if an event never comes.
The last section holds etcd-only fault tests (restart, outage) on a private etcd.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest

from metadata.api import (
    MAX_COMMIT_OPS,
    Check,
    Event,
    EventKind,
    LeaseExpired,
    MetadataError,
    MetadataStore,
    Put,
    RevisionCompacted,
    StoreUnavailable,
    VersionConflict,
)
from metadata.etcd import EtcdMetadataStore
from tests.etcd_server import EtcdServer, etcd_available, free_port

WAIT = 10.0  # only reached when an expected event never arrives


async def take(watch: AsyncIterator[Event], n: int) -> list[Event]:
    return [await asyncio.wait_for(anext(watch), WAIT) for _ in range(n)]


def summary(events: list[Event]) -> list[tuple[str, str, bytes | None]]:
    return [(e.kind.value, e.key, e.value) for e in events]


# --- get / put / delete ------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_get_missing_key_is_none(metadata_store: MetadataStore) -> None:
    assert await metadata_store.get("/nothing/here") is None


@pytest.mark.asyncio
async def test_put_get_delete(metadata_store: MetadataStore) -> None:
    version = await metadata_store.put("/t/k", b"v1")
    got = await metadata_store.get("/t/k")
    assert got is not None
    assert (got.key, got.value, got.version, got.lease) == ("/t/k", b"v1", version, None)

    assert await metadata_store.delete("/t/k") is True
    assert await metadata_store.get("/t/k") is None
    assert await metadata_store.delete("/t/k") is False


@pytest.mark.asyncio
async def test_versions_increase_store_wide(metadata_store: MetadataStore) -> None:
    v1 = await metadata_store.put("/t/a", b"1")
    v2 = await metadata_store.put("/t/b", b"2")
    v3 = await metadata_store.put("/t/a", b"3")
    assert v1 < v2 < v3
    got_a, got_b = await metadata_store.get("/t/a"), await metadata_store.get("/t/b")
    assert got_a is not None and got_a.version == v3 and got_a.value == b"3"
    assert got_b is not None and got_b.version == v2
    assert await metadata_store.revision() == v3


@pytest.mark.asyncio
async def test_put_compare_and_swap(metadata_store: MetadataStore) -> None:
    v1 = await metadata_store.put("/t/k", b"one")
    v2 = await metadata_store.put("/t/k", b"two", expected_version=v1)
    assert v2 > v1
    with pytest.raises(VersionConflict):
        await metadata_store.put("/t/k", b"stale", expected_version=v1)
    got = await metadata_store.get("/t/k")
    assert got is not None and (got.value, got.version) == (b"two", v2)
    with pytest.raises(VersionConflict):
        await metadata_store.put("/t/absent", b"x", expected_version=v2)
    assert await metadata_store.get("/t/absent") is None


@pytest.mark.asyncio
async def test_expected_version_zero_means_create_only(metadata_store: MetadataStore) -> None:
    v1 = await metadata_store.put("/t/k", b"first", expected_version=0)
    with pytest.raises(VersionConflict):
        await metadata_store.put("/t/k", b"second", expected_version=0)
    got = await metadata_store.get("/t/k")
    assert got is not None and (got.value, got.version) == (b"first", v1)
    assert await metadata_store.delete("/t/k")
    await metadata_store.put("/t/k", b"again", expected_version=0)  # absent again: allowed


@pytest.mark.asyncio
async def test_delete_compare_and_swap(metadata_store: MetadataStore) -> None:
    v1 = await metadata_store.put("/t/k", b"v")
    with pytest.raises(VersionConflict):
        await metadata_store.delete("/t/k", expected_version=v1 + 100)
    with pytest.raises(VersionConflict):
        await metadata_store.delete("/t/k", expected_version=0)  # 0: must be absent, but it exists
    assert await metadata_store.get("/t/k") is not None
    assert await metadata_store.delete("/t/k", expected_version=v1) is True
    assert await metadata_store.get("/t/k") is None
    assert await metadata_store.delete("/t/k", expected_version=0) is False  # absent, as expected


@pytest.mark.asyncio
async def test_concurrent_compare_and_swap_loses_no_update(metadata_store: MetadataStore) -> None:
    await metadata_store.put("/t/counter", b"0")

    async def increment() -> int:
        conflicts = 0
        while True:
            current = await metadata_store.get("/t/counter")
            assert current is not None
            new = str(int(current.value) + 1).encode()
            try:
                await metadata_store.put("/t/counter", new, expected_version=current.version)
                return conflicts
            except VersionConflict:
                conflicts += 1

    await asyncio.gather(*(increment() for _ in range(12)))
    final = await metadata_store.get("/t/counter")
    assert final is not None and final.value == b"12"


# --- commit -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_commit_applies_everything_at_one_revision(metadata_store: MetadataStore) -> None:
    va = await metadata_store.put("/t/a", b"a0")
    await metadata_store.put("/t/gone", b"x")
    revision = await metadata_store.commit(
        [Check("/t/a", va), Check("/t/new", 0)],
        [Put("/t/a", b"a1"), Put("/t/new", b"n1")],
        ["/t/gone", "/t/never-existed"],
    )
    assert revision == await metadata_store.revision()
    a, new = await metadata_store.get("/t/a"), await metadata_store.get("/t/new")
    assert a is not None and (a.value, a.version) == (b"a1", revision)
    assert new is not None and (new.value, new.version) == (b"n1", revision)
    assert await metadata_store.get("/t/gone") is None


@pytest.mark.asyncio
async def test_commit_with_a_failing_check_applies_nothing(metadata_store: MetadataStore) -> None:
    va = await metadata_store.put("/t/a", b"a0")
    vb = await metadata_store.put("/t/b", b"b0")
    before = await metadata_store.revision()
    with pytest.raises(VersionConflict):
        await metadata_store.commit(
            [Check("/t/a", va), Check("/t/b", vb - 1)],  # second check is stale
            [Put("/t/a", b"a1"), Put("/t/c", b"c1")],
            ["/t/b"],
        )
    with pytest.raises(VersionConflict):
        await metadata_store.commit([Check("/t/a", 0)], [Put("/t/c", b"c1")])  # /t/a exists
    assert await metadata_store.revision() == before
    assert [(i.key, i.value) for i in await metadata_store.list("/t/")] == [("/t/a", b"a0"), ("/t/b", b"b0")]


@pytest.mark.asyncio
async def test_commit_rejects_a_key_twice(metadata_store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="once"):
        await metadata_store.commit([], [Put("/t/k", b"1")], ["/t/k"])
    assert await metadata_store.get("/t/k") is None


@pytest.mark.asyncio
async def test_commit_size_is_bounded(metadata_store: MetadataStore) -> None:
    puts = [Put(f"/t/{i:03d}", b"x") for i in range(MAX_COMMIT_OPS)]
    revision = await metadata_store.commit([Check(p.key, 0) for p in puts], puts)
    assert len(await metadata_store.list("/t/")) == MAX_COMMIT_OPS
    with pytest.raises(ValueError, match="at most"):
        await metadata_store.commit([], puts[1:], ["/t/x", "/t/y"])
    assert await metadata_store.revision() == revision


# --- list -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_list_is_sorted_and_exact_to_the_prefix(metadata_store: MetadataStore) -> None:
    for key in ["/a/b/2", "/a/bc", "/a/b/10", "/a/a/1", "/a/b", "/a/bc/1", "/a/c", "/a/b/1"]:
        await metadata_store.put(key, key.encode())
    assert [i.key for i in await metadata_store.list("/a/b/")] == ["/a/b/1", "/a/b/10", "/a/b/2"]
    # A plain string prefix: "/a/b" also matches "/a/bc" (callers end prefixes with "/").
    assert [i.key for i in await metadata_store.list("/a/b")] == [
        "/a/b", "/a/b/1", "/a/b/10", "/a/b/2", "/a/bc", "/a/bc/1",
    ]  # fmt: skip
    items = await metadata_store.list("/a/bc/")
    assert [(i.key, i.value) for i in items] == [("/a/bc/1", b"/a/bc/1")]
    assert items[0].version > 0
    assert await metadata_store.list("/a/d/") == []
    assert len(await metadata_store.list("")) == 8


# --- watch ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_watch_replays_history_then_live_events_in_order(metadata_store: MetadataStore) -> None:
    start = await metadata_store.revision() + 1
    await metadata_store.put("/w/a", b"1")
    await metadata_store.put("/other/x", b"not watched")
    await metadata_store.put("/w/b", b"2")
    await metadata_store.delete("/w/a")

    watch = metadata_store.watch("/w/", start)
    history = await take(watch, 3)
    assert summary(history) == [("put", "/w/a", b"1"), ("put", "/w/b", b"2"), ("delete", "/w/a", None)]

    await metadata_store.put("/w/c", b"3")
    await metadata_store.put("/wx", b"neighbour")  # shares the string prefix "/w" but not "/w/"
    await metadata_store.commit([], [Put("/w/d", b"4")], ["/w/b"])
    live = await take(watch, 3)
    assert summary(live) == [("put", "/w/c", b"3"), ("put", "/w/d", b"4"), ("delete", "/w/b", None)]
    assert live[1].revision == live[2].revision  # one commit, one revision

    revisions = [e.revision for e in history + live]
    assert revisions == sorted(revisions) and revisions[0] >= start


@pytest.mark.asyncio
async def test_watch_from_the_middle_of_history(metadata_store: MetadataStore) -> None:
    await metadata_store.put("/w/k", b"1")
    second = await metadata_store.put("/w/k", b"2")
    await metadata_store.put("/w/k", b"3")
    watch = metadata_store.watch("/w/", second)
    events = await take(watch, 2)
    assert [(e.value, e.revision) for e in events] == [(b"2", second), (b"3", second + 1)]


@pytest.mark.asyncio
async def test_watch_without_revision_starts_now(metadata_store: MetadataStore) -> None:
    await metadata_store.put("/w/old", b"before")
    watch = metadata_store.watch("/w/")
    version = await metadata_store.put("/w/new", b"after")
    [event] = await take(watch, 1)
    assert (event.kind, event.key, event.value, event.revision) == (EventKind.PUT, "/w/new", b"after", version)


@pytest.mark.asyncio
async def test_watch_ends_when_the_store_closes(metadata_store: MetadataStore) -> None:
    watch = metadata_store.watch("/w/")
    await metadata_store.put("/w/k", b"v")
    await take(watch, 1)
    waiter = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)
    await metadata_store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, WAIT)
    with pytest.raises(MetadataError):
        await metadata_store.get("/w/k")


# --- leases -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_revoke_deletes_bound_keys_and_watch_sees_it(metadata_store: MetadataStore) -> None:
    lease = await metadata_store.lease(5)
    assert lease.alive
    await metadata_store.put("/l/one", b"1", lease=lease.id)
    await metadata_store.commit([], [Put("/l/two", b"2", lease=lease.id), Put("/l/free", b"f")])
    got = await metadata_store.get("/l/one")
    assert got is not None and got.lease == lease.id
    watch = metadata_store.watch("/l/")

    await lease.revoke()
    assert not lease.alive
    events = await take(watch, 2)
    assert sorted(summary(events)) == [("delete", "/l/one", None), ("delete", "/l/two", None)]
    assert [i.key for i in await metadata_store.list("/l/")] == ["/l/free"]


@pytest.mark.asyncio
async def test_put_without_lease_unbinds_the_key(metadata_store: MetadataStore) -> None:
    lease = await metadata_store.lease(5)
    await metadata_store.put("/l/k", b"leased", lease=lease.id)
    await metadata_store.put("/l/k", b"kept")
    await lease.revoke()
    got = await metadata_store.get("/l/k")
    assert got is not None and (got.value, got.lease) == (b"kept", None)


@pytest.mark.asyncio
async def test_keepalive_holds_keys_beyond_the_ttl(
    metadata_store: MetadataStore, metadata_store_lease_timing: tuple[float, float]
) -> None:
    ttl, wait = metadata_store_lease_timing
    lease = await metadata_store.lease(ttl)
    await metadata_store.put("/l/held", b"v", lease=lease.id)
    await asyncio.sleep(wait)
    assert lease.alive
    got = await metadata_store.get("/l/held")
    assert got is not None and got.lease == lease.id
    await lease.revoke()
    assert await metadata_store.get("/l/held") is None


@pytest.mark.asyncio
async def test_writing_with_a_dead_lease_raises(metadata_store: MetadataStore) -> None:
    lease = await metadata_store.lease(5)
    await lease.revoke()
    before = await metadata_store.revision()
    with pytest.raises(LeaseExpired):
        await metadata_store.put("/l/k", b"v", lease=lease.id)
    with pytest.raises(LeaseExpired):
        await metadata_store.commit([], [Put("/l/a", b"a"), Put("/l/b", b"b", lease=lease.id)])
    assert await metadata_store.list("/l/") == []
    assert await metadata_store.revision() == before


# --- revisions --------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_revision_is_monotonic(metadata_store: MetadataStore) -> None:
    seen = [await metadata_store.revision()]
    for i in range(5):
        await metadata_store.put(f"/r/{i}", b"x")
        seen.append(await metadata_store.revision())
    await metadata_store.delete("/r/0")
    seen.append(await metadata_store.revision())
    with pytest.raises(VersionConflict):
        await metadata_store.put("/r/1", b"y", expected_version=0)
    seen.append(await metadata_store.revision())
    assert all(a < b for a, b in itertools.pairwise(seen[:-1]))
    assert seen[-1] == seen[-2]  # a failed compare changes nothing


# --- etcd only: faults ------------------------------------------------------------------------
needs_etcd = pytest.mark.skipif(not etcd_available(), reason="etcd binary not found")


@pytest.fixture
def private_etcd() -> Any:
    with EtcdServer() as server:
        yield server


@needs_etcd
@pytest.mark.asyncio
async def test_etcd_watch_resumes_across_an_etcd_restart(private_etcd: EtcdServer) -> None:
    store = await EtcdMetadataStore.connect(private_etcd.url)
    try:
        watch = store.watch("/w/")
        await store.commit([], [Put("/w/a", b"1"), Put("/w/b", b"2")])
        first = await take(watch, 1)  # one event of a two-event revision, then the stream breaks
        await asyncio.to_thread(private_etcd.restart)
        await store.put("/w/c", b"3")
        rest = await take(watch, 2)
        assert summary(first + rest) == [("put", "/w/a", b"1"), ("put", "/w/b", b"2"), ("put", "/w/c", b"3")]
    finally:
        await store.close()


async def eventually(check: Any) -> None:
    """Await ``check()`` until it stops raising (a restarted etcd takes a moment to be reachable)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            await check()
            return
        except (StoreUnavailable, AssertionError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


@needs_etcd
@pytest.mark.asyncio
async def test_etcd_outage_raises_store_unavailable_and_loses_leases(private_etcd: EtcdServer) -> None:
    store = await EtcdMetadataStore.connect(private_etcd.url, request_timeout=2)
    try:
        await store.put("/k", b"v")
        lease = await store.lease(1)
        await asyncio.to_thread(private_etcd.kill)
        with pytest.raises(StoreUnavailable):
            await store.get("/k")
        with pytest.raises(StoreUnavailable):
            await store.put("/k", b"w")

        async def lease_lost() -> None:
            assert not lease.alive  # no keepalive succeeded for a whole ttl

        await eventually(lease_lost)
        await asyncio.to_thread(private_etcd.start)

        async def readable() -> None:
            got = await store.get("/k")
            assert got is not None and got.value == b"v"

        await eventually(readable)
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await EtcdMetadataStore.connect(f"etcd://127.0.0.1:{free_port()}")


@needs_etcd
@pytest.mark.asyncio
async def test_etcd_watch_from_a_compacted_revision_raises(private_etcd: EtcdServer) -> None:
    store = await EtcdMetadataStore.connect(private_etcd.url)
    try:
        first = await store.put("/w/k", b"1")
        latest = await store.put("/w/k", b"2")
        async with aetcd.Client(port=private_etcd.client_port, host="127.0.0.1") as admin:
            await admin.compact(latest)
        with pytest.raises(RevisionCompacted) as info:
            await take(store.watch("/w/", first), 1)
        assert info.value.oldest == latest
        [event] = await take(store.watch("/w/", latest), 1)
        assert event.value == b"2"
    finally:
        await store.close()


@needs_etcd
@pytest.mark.asyncio
async def test_etcd_lease_expires_when_its_holder_stops(private_etcd: EtcdServer) -> None:
    holder = await EtcdMetadataStore.connect(private_etcd.url)
    observer = await EtcdMetadataStore.connect(private_etcd.url)
    try:
        lease = await holder.lease(1)
        await holder.put("/owners/p0", b"me", lease=lease.id)
        watch = observer.watch("/owners/", await observer.revision() + 1)
        await holder.close()  # keepalives stop, as if the holder died
        [event] = await take(watch, 1)
        assert (event.kind, event.key) == (EventKind.DELETE, "/owners/p0")
        with pytest.raises(LeaseExpired):
            await observer.put("/owners/p1", b"x", lease=lease.id)
    finally:
        await holder.close()
        await observer.close()
