"""Contract-suite fixtures (metadata part).

* ``metadata_store``              — one fresh, empty store per test, for every kind in METADATA_STORE_KINDS.
* ``metadata_store_kind``         — the kind the current ``metadata_store`` is.
* ``metadata_store_lease_timing`` — (ttl to request, seconds to wait) for "keepalive outlives ttl" tests.
* ``metadata_store_etcd_server``  — one real etcd per session (started only if an etcd test runs).
* ``metadata_store_postgres_server`` — one real PostgreSQL per session (only if a postgres test runs);
  each test gets an empty database of its own on it.

To add an implementation: add its kind to METADATA_STORE_KINDS, open it in
``_open_metadata_store`` and give it an entry in METADATA_STORE_LEASE_TIMING.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from metadata.api import MetadataStore, StoreUnavailable
from metadata.embedded import EmbeddedMetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.postgres import PostgresMetadataStore

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # tests/contract is not a package: make ``tests.*`` importable regardless
    sys.path.insert(0, _ROOT)

from tests.etcd_server import EtcdServer, etcd_available  # noqa: E402
from tests.postgres_server import PostgresServer, postgres_available  # noqa: E402

METADATA_STORE_KINDS = ["embedded-memory", "embedded-file", "etcd", "postgres"]
METADATA_STORE_LEASE_TIMING = {
    "embedded-memory": (0.2, 0.6),
    "embedded-file": (0.2, 0.6),
    "etcd": (1.0, 3.5),  # etcd leases are whole seconds; 3.5 s spans several keepalive rounds
    "postgres": (1.0, 3.0),  # keepalive every ttl/3; 3 s spans several rounds and reaper passes
}


@pytest.fixture(scope="session")
def metadata_store_etcd_server() -> Iterator[EtcdServer]:
    if not etcd_available():
        pytest.skip("etcd binary not found (make system-deps installs etcd-server)")
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def metadata_store_postgres_server() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.skip("PostgreSQL not found (make system-deps installs postgresql)")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def _connect_etcd(url: str, attempts: int = 3) -> MetadataStore:
    """Connect to the session's etcd, trying again when a loaded machine lets the gRPC handshake time out."""
    for attempt in range(attempts):
        try:
            return await EtcdMetadataStore.connect(url)
        except StoreUnavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def _open_metadata_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> MetadataStore:
    if kind == "embedded-memory":
        return await EmbeddedMetadataStore.open(None)
    if kind == "embedded-file":
        # A small compaction threshold so the suite also runs across snapshots.
        return await EmbeddedMetadataStore.open(tmp_path / "metadata", compact_bytes=4096)
    if kind == "etcd":
        server: EtcdServer = request.getfixturevalue("metadata_store_etcd_server")
        store = await _connect_etcd(server.url)
        stale = await store.list("")  # the etcd is shared by the session: start each test empty
        for item in stale:
            await store.delete(item.key)
        return store
    if kind == "postgres":
        pg: PostgresServer = request.getfixturevalue("metadata_store_postgres_server")
        return await PostgresMetadataStore.connect(pg.fresh_database())
    raise ValueError(f"unknown metadata store kind {kind!r}")


@pytest_asyncio.fixture(params=METADATA_STORE_KINDS)
async def metadata_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    store = await _open_metadata_store(str(request.param), request, tmp_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def metadata_store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of this test's ``metadata_store`` (the test must use that fixture too)."""
    return str(request.node.callspec.params["metadata_store"])


@pytest.fixture
def metadata_store_lease_timing(metadata_store_kind: str) -> tuple[float, float]:
    return METADATA_STORE_LEASE_TIMING[metadata_store_kind]
