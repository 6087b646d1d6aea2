"""The cluster's ACLs in metadata, one key per ACL, followed by every broker with a watch.

Why one key per ACL: creating is one put and deleting one delete, with no read-modify-write to race on; the
same ACL created twice is the same key (Kafka treats a repeated creation as a success). Every broker follows
the ``acls/`` prefix with a PrefixCache (as dynamic configs do), so an ACL written through one broker is
enforced by all of them as soon as their watch delivers it, and survives restarts (it is in the store). The
writer waits (up to SEEN_TIMEOUT_S) until its own cache shows the write, so a DescribeAcls right after sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from brokers.security.acl import AclBinding, AclFilter, AclIndex
from metadata.api import MetadataStore
from metadata.keys import Keys
from metadata.models import AclRecord
from metadata.prefix_cache import PrefixCache

SEEN_TIMEOUT_S = 5.0


def to_record(binding: AclBinding) -> AclRecord:
    p, e = binding.pattern, binding.entry
    return AclRecord(int(p.resource_type), p.name, int(p.pattern_type), e.principal, e.host, int(e.operation),
                     int(e.permission))


def from_record(record: AclRecord) -> AclBinding:
    """The binding a stored record holds; AclError (a ValueError) when it is not a valid ACL."""
    r = record
    return AclBinding.checked(r.resource_type, r.name, r.pattern_type, r.principal, r.host, r.operation, r.permission)


class AclStore:
    """This broker's view of the ACLs (an AclSource for the authorizer) and the way to change them."""

    def __init__(self, store: MetadataStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys
        self._cache: PrefixCache[AclBinding] = PrefixCache(
            store, keys.acls_prefix(), lambda _suffix, data: from_record(AclRecord.decode(data)),
            on_change=self._changed, name="acls",
        )
        self.index = AclIndex(())
        """The ACLs as the authorizer reads them, rebuilt on every change."""
        self._started = False

    async def start(self) -> None:
        await self._cache.start()
        self._started = True
        self._changed(frozenset())

    async def stop(self) -> None:
        self._started = False
        await self._cache.stop()

    def _changed(self, _changed: frozenset[str]) -> None:
        self.index = AclIndex(self._cache.items.values())

    # --- reading ------------------------------------------------------------------------------
    def all(self) -> list[AclBinding]:
        return sorted(self._cache.items.values())

    def matching(self, acl_filter: AclFilter) -> list[AclBinding]:
        return [b for b in self.all() if acl_filter.matches(b)]

    # --- writing ------------------------------------------------------------------------------
    def _key(self, binding: AclBinding) -> str:
        r = to_record(binding)
        return self._keys.acl(r.resource_type, r.pattern_type, r.name, r.principal, r.host, r.operation, r.permission)

    async def create(self, binding: AclBinding) -> None:
        """Store one ACL (MetadataError when the store refuses)."""
        key = self._key(binding)
        version = await self._store.put(key, to_record(binding).encode())
        await self._seen(lambda: (self._cache.version_of(self._suffix(key)) or 0) >= version)

    async def delete(self, acl_filter: AclFilter) -> list[AclBinding]:
        """Delete every stored ACL the filter matches (read from the store, not the cache); returns them."""
        deleted: list[AclBinding] = []
        for found in await self._store.list(self._keys.acls_prefix()):
            try:
                binding = from_record(AclRecord.decode(found.value))
            except (ValueError, KeyError, TypeError):
                continue  # a bad key is logged (and ignored) by the cache
            if acl_filter.matches(binding) and await self._store.delete(found.key):
                deleted.append(binding)
        gone = {self._suffix(self._key(b)) for b in deleted}
        await self._seen(lambda: not gone & set(self._cache.items))
        return sorted(deleted)

    def _suffix(self, key: str) -> str:
        return key[len(self._keys.acls_prefix()) :]

    async def _seen(self, done: Callable[[], bool]) -> None:
        if not self._started:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SEEN_TIMEOUT_S):
                await self._cache.wait_until(lambda _items: done())
