"""Fixtures of the cluster tests: the same store kinds as the metadata contract suite, reused from it.

* ``cluster_env`` — for each kind in CLUSTER_STORE_KINDS: a fresh, empty store (``env.store``), a way to
  open another client of the same store as another broker would (``await env.peer()``: a new etcd
  connection; the same object for the in-process embedded store), and ``await env.expire(lease_id)`` to end
  a lease on the server side as if its holder had been cut off (etcd: revoked by another client; embedded:
  ``expire_lease``). The etcd server is the contract suite's session fixture (one etcd process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from metadata.api import MetadataStore
from metadata.embedded import EmbeddedMetadataStore
from metadata.etcd import EtcdMetadataStore
from tests.contract.conftest import _open_metadata_store, metadata_store_etcd_server  # noqa: F401  (fixture)

CLUSTER_STORE_KINDS = ["embedded-memory", "etcd"]
LEASE_TTL = {"embedded-memory": 0.5, "etcd": 1.0}  # etcd leases are whole seconds


@dataclass
class ClusterEnv:
    kind: str
    store: MetadataStore
    url: str = ""
    ttl: float = 1.0
    _peers: list[MetadataStore] = field(default_factory=list)

    async def peer(self) -> MetadataStore:
        """Another client of the same store (a second broker's connection)."""
        if isinstance(self.store, EmbeddedMetadataStore):
            return self.store
        store = await EtcdMetadataStore.connect(self.url)
        self._peers.append(store)
        return store

    async def expire(self, lease_id: int) -> None:
        """End ``lease_id`` on the server, as if its holder had not renewed it in time."""
        if isinstance(self.store, EmbeddedMetadataStore):
            await self.store.expire_lease(lease_id)
            return
        assert isinstance(self.store, EtcdMetadataStore)
        other = await EtcdMetadataStore.connect(self.url)
        try:
            await other._client.revoke_lease(lease_id)
        finally:
            await other.close()

    async def close(self) -> None:
        for peer in self._peers:
            await peer.close()
        await self.store.close()


@pytest_asyncio.fixture(params=CLUSTER_STORE_KINDS)
async def cluster_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ClusterEnv]:
    kind = str(request.param)
    store = await _open_metadata_store(kind, request, tmp_path)
    url = request.getfixturevalue("metadata_store_etcd_server").url if kind == "etcd" else ""
    env = ClusterEnv(kind, store, url, LEASE_TTL[kind])
    try:
        yield env
    finally:
        await env.close()
