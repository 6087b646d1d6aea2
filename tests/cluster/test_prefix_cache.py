"""PrefixCache (metadata/prefix_cache.py) on the embedded store and a real etcd: list + watch, callbacks,
bad values, re-listing after a compacted or failed watch, and riding out an etcd restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from metadata.api import Event, MetadataStore, RevisionCompacted, StoreUnavailable
from metadata.etcd import EtcdMetadataStore
from metadata.prefix_cache import PrefixCache
from tests.cluster.conftest import ClusterEnv
from tests.etcd_server import EtcdServer, etcd_available

WAIT = 10.0


def decode(_suffix: str, value: bytes) -> str:
    if value.startswith(b"bad"):
        raise ValueError("undecodable")
    return value.decode()


async def until(cache: PrefixCache[str], expected: Mapping[str, str]) -> None:
    await asyncio.wait_for(cache.wait_until(lambda items: dict(items) == dict(expected)), WAIT)


@pytest.mark.asyncio
async def test_lists_then_follows_changes_with_callbacks(cluster_env: ClusterEnv) -> None:
    store = cluster_env.store
    await store.put("/p/a", b"1")
    await store.put("/q/outside", b"x")
    changes: list[frozenset[str]] = []
    cache = PrefixCache(store, "/p/", decode, on_change=changes.append)
    await cache.start()
    assert dict(cache.items) == {"a": "1"} and changes == [frozenset({"a"})]
    await store.put("/p/b", b"2")
    await store.put("/p/a", b"3")
    await store.delete("/p/b")
    await store.put("/p/c", b"bad value")  # ignored, as if absent
    await store.put("/p/d", b"4")
    await until(cache, {"a": "3", "d": "4"})
    assert frozenset({"b"}) in changes and frozenset({"c"}) not in changes
    assert cache.version_of("d") == (await store.get("/p/d")).version  # type: ignore[union-attr]
    await cache.stop()


@pytest.mark.asyncio
async def test_no_key_goes_back_to_an_older_value_after_the_list(cluster_env: ClusterEnv) -> None:
    """Changes between the revision read and the list are delivered again by the watch and must be skipped."""
    store = cluster_env.store
    seen: list[str] = []
    cache = PrefixCache(store, "/p/", decode)
    cache.add_listener(lambda _keys: seen.append(cache.items.get("k", "")))
    original_list = store.list

    async def list_after_writes(prefix: str) -> list[Any]:
        await store.put("/p/k", b"v1")
        await store.put("/p/k", b"v2")
        return await original_list(prefix)

    store.list = list_after_writes  # type: ignore[method-assign]
    try:
        await cache.start()
    finally:
        del store.list  # type: ignore[method-assign]
    await store.put("/p/z", b"end")
    await until(cache, {"k": "v2", "z": "end"})
    assert "v1" not in seen, seen
    await cache.stop()


class FlakyWatchStore:
    """A store whose first watch fails with ``error`` (after delivering nothing); the rest is the real store."""

    def __init__(self, store: MetadataStore, error: Exception) -> None:
        self._store = store
        self._error: Exception | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[Event]:
        error, self._error = self._error, None
        if error is None:
            return self._store.watch(prefix, from_revision)

        async def failing() -> AsyncIterator[Event]:
            await asyncio.sleep(0.05)
            raise error
            yield  # pragma: no cover  (makes this an async generator)

        return failing()


@pytest.mark.parametrize(
    "error", [RevisionCompacted(1, 5), StoreUnavailable("etcd: gone")], ids=["compacted", "unavailable"]
)
@pytest.mark.asyncio
async def test_a_broken_watch_relists_and_catches_up(cluster_env: ClusterEnv, error: Exception) -> None:
    store = cluster_env.store
    await store.put("/p/a", b"1")
    flaky = FlakyWatchStore(store, error)
    cache = PrefixCache(flaky, "/p/", decode, retry_delay=0.05)  # type: ignore[arg-type]
    await cache.start()
    await store.put("/p/b", b"2")  # may land while the watch is broken: the re-list must find it
    await store.delete("/p/a")
    await until(cache, {"b": "2"})
    assert cache.resyncs == 1 and not cache.stale
    await store.put("/p/c", b"3")
    await until(cache, {"b": "2", "c": "3"})
    await cache.stop()


@pytest.mark.asyncio
async def test_the_cache_rides_out_an_etcd_restart() -> None:
    """The etcd watch resumes from its last revision: changes made after the restart arrive, no re-list."""
    if not etcd_available():
        pytest.skip("etcd binary not found")
    with EtcdServer() as etcd:
        store = await EtcdMetadataStore.connect(etcd.url)
        try:
            await store.put("/p/a", b"1")
            cache = PrefixCache(store, "/p/", decode)
            await cache.start()
            etcd.restart()
            for attempt in range(100):  # the client reconnects within a second or so
                try:
                    await store.put("/p/b", b"2")
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1 + 0 * attempt)
            await until(cache, {"a": "1", "b": "2"})
            assert cache.resyncs == 0
            await cache.stop()
        finally:
            await store.close()
