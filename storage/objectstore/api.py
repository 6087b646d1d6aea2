"""The ObjectStore seam: immutable objects under string keys (S3's shape, create-only writes).

Implementations over obstore: S3 (any S3 endpoint), local directory, memory. One contract suite in
tests/contract runs against each.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class ObjectStoreError(Exception):
    """Base class of object store errors."""


class ObjectNotFound(ObjectStoreError):
    """No object at that key."""


class ObjectExists(ObjectStoreError):
    """A create-only put found an object at that key already."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store cannot be reached right now (retriable)."""


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    key: str
    size: int


class ObjectStore(Protocol):
    """Immutable objects. Segment objects are written with ``if_absent=True`` and never overwritten."""

    async def put(self, key: str, data: bytes | memoryview, if_absent: bool = True) -> None:
        """Store ``data``; with ``if_absent`` raise ObjectExists when the key is taken."""
        ...

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes | memoryview], if_absent: bool = True
    ) -> int:
        """Store the concatenation of ``chunks`` without holding it whole (a bounded amount is buffered);
        returns its size. Same create-only rule as ``put``: the object appears whole or not at all, and
        when ``chunks`` raises, nothing is stored and that exception propagates."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""
        ...

    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        """``length`` bytes from ``start`` (fewer at the end of the object); raises ObjectNotFound. May be a
        read-only view of the store's own buffer (no copy): callers slice it, or copy what they keep small."""
        ...

    async def head(self, key: str) -> ObjectMeta | None: ...

    async def list(self, prefix: str) -> list[ObjectMeta]:
        """Objects whose key starts with ``prefix``, sorted by key."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects; keys that do not exist are ignored."""
        ...

    async def close(self) -> None: ...
