"""metadata/open.py: one ``--metadata`` URL -> the right MetadataStore, and a clear error for anything else.

Also the command-line forms that take such a URL (``tidelog broker --metadata``, ``tidelog bookie
--metadata``) accept postgresql:// and still refuse what they refused before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers.cli.broker import metadata_endpoints
from brokers.clustered import _redacted
from brokers.config import ConfigError
from metadata.embedded import EmbeddedMetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.open import is_shared, open_store, scheme_of
from metadata.postgres import PostgresMetadataStore
from tests.etcd_server import EtcdServer
from tests.postgres_server import PostgresServer


@pytest.mark.parametrize(
    "url", ["", "127.0.0.1:2379", "zk://127.0.0.1:2181", "mysql://u@h/db", "none", "etcd", "s3://bucket"]
)
def test_unknown_forms_are_refused_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"etcd://HOST:PORT.*postgresql://"):
        scheme_of(url)


def test_only_etcd_and_postgres_are_shared() -> None:
    assert [is_shared(u) for u in ("etcd://h:1", "postgresql://u@h/d", "postgres://u@h/d")] == [True] * 3
    assert [is_shared(u) for u in ("memory://", "file:///tmp/x", "embedded:/tmp/x")] == [False] * 3


@pytest.mark.asyncio
async def test_embedded_forms(tmp_path: Path) -> None:
    memory = await open_store("memory://")
    assert isinstance(memory, EmbeddedMetadataStore)
    await memory.close()
    for url in (f"file://{tmp_path}/a", f"embedded:{tmp_path}/b"):
        store = await open_store(url)
        assert isinstance(store, EmbeddedMetadataStore)
        await store.put("/k", b"v")
        await store.close()
        reopened = await open_store(url)  # durable: the key is there again
        got = await reopened.get("/k")
        await reopened.close()
        assert got is not None and got.value == b"v"
    with pytest.raises(ValueError, match="no directory"):
        await open_store("embedded:")


@pytest.mark.asyncio
async def test_etcd_url(metadata_store_etcd_server: EtcdServer) -> None:
    store = await open_store(metadata_store_etcd_server.url)
    try:
        assert isinstance(store, EtcdMetadataStore)
        assert await store.revision() >= 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_postgres_urls(metadata_store_postgres_server: PostgresServer) -> None:
    url = metadata_store_postgres_server.fresh_database()
    for form in (url, url.replace("postgresql://", "postgres://", 1)):
        store = await open_store(form)
        try:
            assert isinstance(store, PostgresMetadataStore)
            await store.put("/k", form.encode())
        finally:
            await store.close()


def test_broker_metadata_argument() -> None:
    assert metadata_endpoints("etcd://a:1,b:2") == ["etcd://a:1", "etcd://b:2"]
    url = "postgresql://tidelog:secret@db.example:5432/tidelog"
    assert metadata_endpoints(url) == [url]
    for bad in ("postgresql:///nohost", "zk://a:1", "a:1"):
        with pytest.raises(ConfigError, match="--metadata"):
            metadata_endpoints(bad)


def test_passwords_are_kept_out_of_start_errors() -> None:
    assert _redacted("postgresql://tidelog:secret@db:5432/t") == "postgresql://tidelog:***@db:5432/t"
    assert _redacted("postgresql://tidelog@db/t") == "postgresql://tidelog@db/t"
    assert _redacted("etcd://a:1,b:2") == "etcd://a:1,b:2"
