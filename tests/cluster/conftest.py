"""Fixtures of the cluster tests: the same store kinds as the metadata contract suite, reused from it.

* ``cluster_env`` — for each kind in CLUSTER_STORE_KINDS: a fresh, empty store (``env.store``), a way to
  open another client of the same store as another broker would (``await env.peer()``: a new etcd
  connection; the same object for the in-process embedded store), and ``await env.expire(lease_id)`` to end
  a lease on the server side as if its holder had been cut off (etcd: revoked by another client; embedded:
  ``expire_lease``; postgres: ended by another client, as its reaper would). The etcd and PostgreSQL servers
  are the contract suite's session fixtures. The postgres kind runs in the slow suite only (the fast suite's
  budget); ``pytest tests/cluster -m slow -k postgres`` runs it alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from brokers.devcluster import DevCluster
from metadata.api import MetadataStore
from metadata.embedded import EmbeddedMetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.postgres import PostgresMetadataStore
from tests.contract.conftest import (  # noqa: F401  (fixtures)
    _open_metadata_store,
    metadata_store_etcd_server,
    metadata_store_postgres_server,
)

CLUSTER_STORE_KINDS = ["embedded-memory", "etcd", pytest.param("postgres", marks=pytest.mark.slow)]
LEASE_TTL = {"embedded-memory": 0.5, "etcd": 1.0, "postgres": 1.0}  # etcd leases are whole seconds


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
        if isinstance(self.store, PostgresMetadataStore):
            pg = await PostgresMetadataStore.connect(self.url)
            self._peers.append(pg)
            return pg
        store = await EtcdMetadataStore.connect(self.url)
        self._peers.append(store)
        return store

    async def expire(self, lease_id: int) -> None:
        """End ``lease_id`` on the server, as if its holder had not renewed it in time."""
        if isinstance(self.store, EmbeddedMetadataStore):
            await self.store.expire_lease(lease_id)
            return
        if isinstance(self.store, PostgresMetadataStore):
            other = await PostgresMetadataStore.connect(self.url)
            try:
                await other._end_leases([lease_id])
            finally:
                await other.close()
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
    if kind == "postgres":
        url = request.getfixturevalue("metadata_store_postgres_server").fresh_database()
        store: MetadataStore = await PostgresMetadataStore.connect(url)
    else:
        store = await _open_metadata_store(kind, request, tmp_path)
        url = request.getfixturevalue("metadata_store_etcd_server").url if kind == "etcd" else ""
    env = ClusterEnv(kind, store, url, LEASE_TTL[kind])
    try:
        yield env
    finally:
        await env.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """A failed test that used a dev cluster says which of its processes had exited, with what code and the
    tail of their logs (a broker gone without a Python traceback otherwise leaves only "connection refused")."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    funcargs = getattr(item, "funcargs", {})
    dev = funcargs.get("cluster")
    if report.failed and isinstance(dev, DevCluster):
        from .harness import dead_processes

        dead = dead_processes(dev)
        if dead:
            report.sections.append(("dead cluster processes", dead))
