"""A watch-fed cache of every key under a prefix, decoded, with an on-change callback.

Why: cluster members answer from what they know of the cluster (live brokers, topics, assignments,
owners) on every request; reading the store per request would put etcd on the request path. So each view
is listed once and then followed by a watch.

How:
* ``start`` reads the store's revision r0, lists the prefix, and watches from r0 + 1. Changes committed
  between the two reads are delivered again by the watch; an event is ignored when the cache already holds
  that key at the event's revision or later, so a key never goes back to an older value. (A key created
  *and* deleted in that short window may appear briefly before its delete event follows.)
* The watch resumes by itself across dropped connections (metadata/etcd.py EtcdWatch re-creates it from
  the last delivered revision). If the store no longer has the history (RevisionCompacted) or the watch
  gives up (StoreUnavailable after its reconnect timeout), the cache re-lists the prefix and watches again,
  retrying every ``retry_delay`` while the store is unreachable; meanwhile it keeps serving what it has
  and ``stale`` is True. On re-list, keys that changed or vanished are reported like events.
* ``on_change(changed_keys)`` is called synchronously after each applied event (with one key) and after a
  re-list (with every key that differed). A commit's events arrive one by one, so a reader may see a commit
  half applied for an instant; views that need a whole commit keep it in one key.
* Call ``stop`` before closing the store (a closed store looks unreachable: the cache would keep retrying).
* Values that do not decode (``decode`` raises ValueError/KeyError/TypeError) are logged and treated as
  absent, so one bad key cannot stop the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from metadata.api import EventKind, MetadataError, MetadataStore, RevisionCompacted

log = logging.getLogger(__name__)
T = TypeVar("T")
D = TypeVar("D")

Decode = Callable[[str, bytes], T]
"""(key suffix after the prefix, stored value) -> decoded value."""
ChangeCallback = Callable[[frozenset[str]], None]


class PrefixCache(Generic[T]):
    """Decoded values of every key under ``prefix`` by key suffix, kept current by a watch (module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        prefix: str,
        decode: Decode[T],
        *,
        on_change: ChangeCallback | None = None,
        retry_delay: float = 0.5,
        name: str = "",
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._decode = decode
        self._callbacks: list[ChangeCallback] = [on_change] if on_change is not None else []
        self._retry_delay = retry_delay
        self._name = name or prefix
        self._items: dict[str, T] = {}
        self._versions: dict[str, int] = {}
        self._gone: dict[str, tuple[T, float]] = {}  # deleted key -> (its last value, time.monotonic() seen)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.revision = 0
        """The newest store revision this view reflects (at least)."""
        self.stale = False
        """True while the watch is broken and the view may be behind the store."""
        self.resyncs = 0
        """How many times the prefix was re-listed after the first (observability, tests)."""
        self.changes = 0
        """Bumped on every change of ``items``: views derived from them rebuild when it moves."""

    @property
    def items(self) -> Mapping[str, T]:
        """A read-only live view: key suffix -> decoded value."""
        return MappingProxyType(self._items)

    def version_of(self, suffix: str) -> int | None:
        """The store version (mod revision) of a cached key, or None."""
        return self._versions.get(suffix)

    def departed(self, suffix: str) -> tuple[T, float] | None:
        """A deleted key's last value and when (time.monotonic()) this view saw it go; None once the key
        is back (or was never seen). Failover accounting reads it: who owned a partition, since when unowned."""
        return self._gone.get(suffix)

    def add_listener(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """List the prefix (raising if the store cannot be read), then follow it in the background."""
        if self._task is not None:
            raise RuntimeError("already started")
        revision = await self._resync()
        self._task = asyncio.create_task(self._follow(revision), name=f"prefix-cache {self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_until(self, predicate: Callable[[Mapping[str, T]], bool]) -> None:
        """Wait until ``predicate(items)`` holds (bound it with ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.items))

    # --- internals ----------------------------------------------------------------------------
    async def _resync(self) -> int:
        """Re-list the prefix; returns the revision to watch after."""
        revision = await self._store.revision()
        listed = await self._store.list(self.prefix)
        items: dict[str, T] = {}
        versions: dict[str, int] = {}
        for entry in listed:
            suffix = entry.key[len(self.prefix) :]
            value = self._decode_or_none(suffix, entry.value)
            if value is not None:
                items[suffix] = value
            versions[suffix] = entry.version
        changed = {k for k in items.keys() | self._items.keys() if items.get(k) != self._items.get(k)}
        now = time.monotonic()
        for k in changed:
            if k in items:
                self._gone.pop(k, None)
            else:
                self._gone[k] = (self._items[k], now)
        self._items, self._versions = items, versions
        self.revision = max(revision, *versions.values()) if versions else revision
        self.stale = False
        await self._notify(frozenset(changed))
        return revision

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async for event in self._store.watch(self.prefix, from_revision=revision + 1):
                    suffix = event.key[len(self.prefix) :]
                    if self._versions.get(suffix, 0) >= event.revision:
                        continue  # already reflected by the list
                    self.revision = max(self.revision, event.revision)
                    if event.kind is EventKind.DELETE or event.value is None:
                        self._versions.pop(suffix, None)
                        existed = self._forget(suffix)
                    else:
                        self._versions[suffix] = event.revision
                        value = self._decode_or_none(suffix, event.value)
                        old = self._items.get(suffix)
                        if value is None:
                            existed = self._forget(suffix)
                        else:
                            self._items[suffix] = value
                            self._gone.pop(suffix, None)
                            existed = old != value
                    if existed:
                        await self._notify(frozenset((suffix,)))
                return  # the store was closed
            except RevisionCompacted:
                log.warning("%s: watch fell behind the store's history; re-listing", self._name)
            except MetadataError as exc:
                log.warning("%s: watch failed (%r); re-listing", self._name, exc)
            self.stale = True
            while True:
                try:
                    revision = await self._resync()
                    self.resyncs += 1
                    break
                except MetadataError as exc:
                    log.warning("%s: re-listing failed (%r); retrying", self._name, exc)
                    await asyncio.sleep(self._retry_delay)

    def _forget(self, suffix: str) -> bool:
        """Drop a deleted key, remembering its last value (``departed``); whether it was there."""
        old = self._items.pop(suffix, None)
        if old is None:
            return False
        self._gone[suffix] = (old, time.monotonic())
        return True

    def _decode_or_none(self, suffix: str, value: bytes) -> T | None:
        try:
            return self._decode(suffix, value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring undecodable value at %r: %r", self._name, suffix, exc)
            return None

    async def _notify(self, changed: frozenset[str]) -> None:
        if changed:
            self.changes += 1
            for callback in list(self._callbacks):
                try:
                    callback(changed)
                except Exception:
                    log.exception("%s: on-change callback failed", self._name)
        async with self._changed:
            self._changed.notify_all()


class CacheView(Generic[T]):
    """Base of a typed view over one PrefixCache (live brokers, partition owners...): the lifecycle, change
    listeners and staleness delegate to the cache; ``derived`` memoizes what a view builds from its items until
    they change."""

    def __init__(self, cache: PrefixCache[T]) -> None:
        self._cache = cache
        self._derived: dict[str, tuple[int, object]] = {}

    @property
    def stale(self) -> bool:
        return self._cache.stale

    def add_listener(self, callback: ChangeCallback) -> None:
        self._cache.add_listener(callback)

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    def derived(self, name: str, build: Callable[[Mapping[str, T]], D]) -> D:
        """``build(items)``, rebuilt only after the items changed (callers must not mutate the result)."""
        found = self._derived.get(name)
        if found is None or found[0] != self._cache.changes:
            found = self._derived[name] = (self._cache.changes, build(self._cache.items))
        return found[1]  # type: ignore[return-value]
