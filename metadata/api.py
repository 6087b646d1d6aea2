"""The MetadataStore seam: a small versioned key-value store with leases and watches (etcd's shape).

Every implementation (embedded, etcd, Postgres) passes the one contract suite in tests/contract.

Versions: every successful write bumps a store-wide revision; a key's ``version`` is the revision that
last modified it (etcd's mod_revision). ``expected_version=0`` means "the key must not exist".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

MAX_COMMIT_OPS = 128
"""Most checks, and most puts + deletes, in one ``commit`` (etcd's default --max-txn-ops); more: ValueError."""


class MetadataError(Exception):
    """Base class of metadata store errors."""


class VersionConflict(MetadataError):
    """A compare-and-swap check failed: the key's version was not the expected one."""


class LeaseExpired(MetadataError):
    """The lease named in a put no longer exists."""


class StoreUnavailable(MetadataError):
    """The backing store cannot be reached right now (retriable)."""


class RevisionCompacted(MetadataError):
    """A watch asked for history the store no longer keeps; re-read the state and watch from now."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"revision {requested} is compacted; the oldest watchable revision is {oldest}")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class Versioned:
    """A stored value with the revision that last modified it and the lease it is bound to, if any."""

    key: str
    value: bytes
    version: int
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Put:
    """A write inside an atomic ``commit``."""

    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """A compare inside an atomic ``commit``: ``key`` must be at ``version`` (0: must be absent)."""

    key: str
    version: int


class EventKind(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch; ``revision`` is the store revision of the change."""

    kind: EventKind
    key: str
    value: bytes | None
    revision: int


class Lease(Protocol):
    """A time-to-live grant. The store keeps it alive until ``revoke``; keys bound to it vanish with it."""

    @property
    def id(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    async def revoke(self) -> None: ...


class MetadataStore(Protocol):
    """The metadata seam. Keys are built only in ``metadata.keys``."""

    async def get(self, key: str) -> Versioned | None: ...

    async def put(
        self, key: str, value: bytes, expected_version: int | None = None, lease: int | None = None
    ) -> int:
        """Write ``value``; returns the new version. Raises VersionConflict if the check fails."""
        ...

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete ``key``; returns whether it existed. Raises VersionConflict if the check fails."""
        ...

    async def list(self, prefix: str) -> list[Versioned]:
        """All keys under ``prefix``, sorted by key. A plain string prefix: "/a/b" matches "/a/bc"."""
        ...

    async def commit(
        self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str] = ()
    ) -> int:
        """Apply puts and deletes atomically if every check holds; returns the new revision.

        Raises VersionConflict (and applies nothing) if a check fails. A key may appear at most once
        among puts and deletes, and MAX_COMMIT_OPS bounds their number (ValueError otherwise).
        """
        ...

    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[Event]:
        """Changes under ``prefix`` from ``from_revision`` (inclusive) on, or from now when None.

        Events come in revision order (a commit's events share one revision). If ``from_revision`` is
        older than the history the store keeps, iterating raises RevisionCompacted. The iterator ends
        when the store is closed.
        """
        ...

    async def lease(self, ttl: float) -> Lease:
        """Grant a lease kept alive by the store until revoked (or until this process dies)."""
        ...

    async def revision(self) -> int:
        """The store's current revision."""
        ...

    async def close(self) -> None: ...
