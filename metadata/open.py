"""Open a MetadataStore by URL: the one place that maps a ``--metadata`` value to an implementation.

* ``etcd://H:P[,H:P...]`` (or ``http://``)      — etcd (metadata/etcd.py; every member, the client fails over)
* ``postgresql://user[:pw]@H[:P]/db`` (or ``postgres://``) — PostgreSQL (metadata/postgres.py)
* ``memory://``                                   — the embedded store, in this process's memory only
* ``file:///dir`` (or ``embedded:DIR``)           — the embedded store, durable in a local directory

Only etcd and PostgreSQL are shared between processes; the embedded forms suit one process and tests.
"""

from __future__ import annotations

from metadata.api import MetadataStore

SHARED_SCHEMES = ("etcd", "http", "postgresql", "postgres")
SCHEMES = (*SHARED_SCHEMES, "memory", "file", "embedded")
EXPECTED = "etcd://HOST:PORT[,HOST:PORT...], postgresql://USER@HOST:PORT/DB, memory:// or file:///DIR"


def scheme_of(url: str) -> str:
    """The URL's scheme, checked: ValueError (saying what is accepted) for anything else."""
    scheme, sep, _ = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"metadata store {url!r}: expected {EXPECTED}")
    return scheme


def is_shared(url: str) -> bool:
    """Whether several processes can share this store (etcd, PostgreSQL)."""
    return scheme_of(url) in SHARED_SCHEMES


async def open_store(url: str) -> MetadataStore:
    """Connect to (or open) the store ``url`` names.

    ValueError for a URL of no known form; StoreUnavailable (or another MetadataError) if it cannot be
    reached. Client libraries are imported only for the kind asked for.
    """
    scheme = scheme_of(url)
    if scheme in ("etcd", "http"):
        from metadata.etcd import EtcdMetadataStore

        return await EtcdMetadataStore.connect(url)
    if scheme in ("postgresql", "postgres"):
        from metadata.postgres import PostgresMetadataStore

        return await PostgresMetadataStore.connect(url)
    from metadata.embedded import EmbeddedMetadataStore

    if scheme == "memory":
        return await EmbeddedMetadataStore.open(None)
    path = url.partition(":")[2]
    if scheme == "file":
        path = path.removeprefix("//")
    if not path:
        raise ValueError(f"metadata store {url!r}: no directory given")
    return await EmbeddedMetadataStore.open(path)
