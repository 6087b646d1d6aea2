"""The shared ObjectStore implementation over obstore, plus the in-memory store.

Backend subclasses (``local.py``, ``s3.py``) only build the obstore store and, where needed, override how
bytes are written. Everything else (key rules, list semantics, error mapping) lives here so every backend
behaves the same under the contract suite in tests/contract/test_object_store.py.

Semantics every backend shares:

* Keys are ``/``-separated, relative to the store's root or prefix, and validated strictly (no leading or
  trailing ``/``, no empty, ``.`` or ``..`` segments, no ``#``, no control characters, at most 1024
  bytes). obstore silently normalises ``/a`` and ``a/`` to ``a``; rejecting them keeps keys one-to-one.
* ``list(prefix)`` is a plain string prefix (obstore lists by whole path segments), sorted by key.
* ``get_range`` at or past the end of an object returns ``b""``; a missing object raises ObjectNotFound.
* Errors: not found -> ObjectNotFound, create conflict -> ObjectExists, network failures, timeouts, 5xx,
  408/409/429 -> ObjectStoreUnavailable (retriable); other 4xx, credentials, missing bucket ->
  ObjectStoreError (needs an operator).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import TYPE_CHECKING, NoReturn

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    InvalidPathError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import MemoryStore

from storage.metrics import object_store_request
from storage.objectstore.api import (
    ObjectExists,
    ObjectMeta,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreUnavailable,
)

if TYPE_CHECKING:
    from obstore.store import ObjectStore as ObstoreBackend

__all__ = [
    "MULTIPART_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "MemoryObjectStore",
    "ObstoreObjectStore",
    "validate_key",
]

MULTIPART_THRESHOLD = 8 * 1024 * 1024
"""Overwriting puts of at least this many bytes use a multipart upload."""
MULTIPART_PART_SIZE = 8 * 1024 * 1024
"""Part size of multipart uploads (S3's minimum is 5 MiB for every part but the last)."""
STREAM_PARTS_IN_FLIGHT = 2
"""Parts of a streamed multipart upload sent at once: a stream holds about this many parts in memory."""
MAX_KEY_BYTES = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HTTP_STATUS = re.compile(r"status code: (\d{3})")
# 4xx answers that mean "try again": request timeout, conflicting concurrent conditional write, throttling.
_RETRIABLE_4XX = frozenset({408, 409, 429})
_PERMANENT = (
    PermissionDeniedError,
    UnauthenticatedError,
    NotSupportedError,
    UnknownConfigurationKeyError,
    InvalidPathError,
)


def validate_key(key: str) -> None:
    """Raise ValueError unless ``key`` is a key every backend stores under exactly that name."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty str, got {key!r}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:64]!r}...")
    if key.startswith("/") or key.endswith("/"):
        raise ValueError(f"object key must not start or end with '/': {key!r}")
    if "#" in key or _CONTROL.search(key):
        raise ValueError(f"object key must not contain '#' or control characters: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")


def _byte_view(data: bytes | memoryview) -> bytes | memoryview:
    """``data`` as a flat contiguous byte buffer, which is what obstore accepts."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if not view.c_contiguous:
        return view.tobytes()
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


class ObstoreObjectStore:
    """An ObjectStore backed by any obstore store (S3, local directory, memory)."""

    def __init__(self, store: ObstoreBackend, *, description: str) -> None:
        self._store = store
        self._description = description
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._description})"

    # -- the ObjectStore protocol -------------------------------------------------------------------

    @object_store_request("put")
    async def put(self, key: str, data: bytes | memoryview, if_absent: bool = True) -> None:
        """Store ``data``; with ``if_absent`` raise ObjectExists when the key is taken (atomically)."""
        validate_key(key)
        self._check_open()
        await self._write(key, _byte_view(data), if_absent)

    @object_store_request("put_stream")
    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes | memoryview], if_absent: bool = True
    ) -> int:
        """Store the concatenation of ``chunks``. Up to ``MULTIPART_THRESHOLD`` bytes are gathered first: a
        shorter stream is one ``put``; a longer one goes to ``_write_stream`` (multipart) with the rest
        still streaming."""
        validate_key(key)
        self._check_open()
        source = aiter(chunks)
        head: list[bytes | memoryview] = []
        size = 0
        async for chunk in source:
            view = _byte_view(chunk)
            head.append(view)
            size += view.nbytes if isinstance(view, memoryview) else len(view)
            if size >= MULTIPART_THRESHOLD:
                break
        else:
            await self._write(key, b"".join(head), if_absent)
            return size
        counted = ChunkStream(head, source)
        await self._write_stream(key, counted, if_absent)
        return counted.size

    async def _write_stream(self, key: str, chunks: ChunkStream, if_absent: bool) -> None:
        """Write a stream of at least ``MULTIPART_THRESHOLD`` bytes. Here: an overwrite is a multipart
        upload; a create-only write is gathered and put whole (obstore cannot make a multipart upload
        conditional; backends that can do better override this)."""
        if if_absent:
            parts = [chunk async for chunk in chunks]
            await self._write(key, b"".join(parts), True)
            return
        await self._multipart(key, chunks)

    async def _multipart(self, key: str, chunks: ChunkStream) -> None:
        """An overwriting multipart upload of the stream; an error of the stream itself propagates as it is."""
        try:
            await obstore.put_async(
                self._store, key, chunks, mode="overwrite", use_multipart=True, chunk_size=MULTIPART_PART_SIZE,
                max_concurrency=STREAM_PARTS_IN_FLIGHT,
            )  # fmt: skip
        except Exception as exc:
            if chunks.error is not None:
                raise chunks.error from None
            if isinstance(exc, FileNotFoundError):
                raise ObjectStoreError(f"{self!r}: put {key!r}: {_first_line(exc)}") from exc
            self._raise(exc, key, "put")
        if chunks.error is not None:
            raise chunks.error

    @object_store_request("get")
    async def get(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""
        validate_key(key)
        self._check_open()
        try:
            result = await obstore.get_async(self._store, key)
            buf = await result.bytes_async()
        except Exception as exc:
            self._raise(exc, key, "get")
        return bytes(buf)

    @object_store_request("get_range")
    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        """``length`` bytes from ``start``, fewer (or none) at the end; raises ObjectNotFound. A read-only
        memoryview of obstore's buffer: copying it into ``bytes`` cost ~20% of a replaying broker's loop."""
        validate_key(key)
        if start < 0 or length < 0:
            raise ValueError(f"get_range needs start >= 0 and length >= 0, got {start}, {length}")
        self._check_open()
        if length == 0:
            return await self._empty_range(key)
        try:
            buf = await obstore.get_range_async(self._store, key, start=start, length=length)
        except GenericError as exc:
            # S3 answers 416 and local/memory a generic "invalid range" when start >= size.
            if self._is_missing(exc):
                raise ObjectNotFound(key) from exc
            meta = await self.head(key)
            if meta is None:
                raise ObjectNotFound(key) from None
            if start >= meta.size:
                return b""
            self._raise(exc, key, "get_range")
        except Exception as exc:
            self._raise(exc, key, "get_range")
        return memoryview(buf)

    @object_store_request("head")
    async def head(self, key: str) -> ObjectMeta | None:
        """Key and size of the object, or None when there is none."""
        validate_key(key)
        self._check_open()
        try:
            meta = await obstore.head_async(self._store, key)
        except Exception as exc:
            if self._is_missing(exc):
                return None
            self._raise(exc, key, "head")
        return ObjectMeta(key=meta["path"], size=meta["size"])

    @object_store_request("list")
    async def list(self, prefix: str) -> list[ObjectMeta]:
        """Objects whose key starts with ``prefix`` (a plain string prefix), sorted by key."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        self._check_open()
        # obstore lists whole path segments; list the enclosing "directory" and filter by string prefix.
        directory = prefix[: prefix.rfind("/") + 1].rstrip("/")
        try:
            stream = obstore.list(self._store, directory or None, chunk_size=1000)
        except ValueError:
            return []  # no valid key lies under a malformed directory such as "a//"
        found: list[ObjectMeta] = []
        try:
            async for chunk in stream:
                found.extend(
                    ObjectMeta(key=meta["path"], size=meta["size"]) for meta in chunk if meta["path"].startswith(prefix)
                )
        except FileNotFoundError as exc:
            raise ObjectStoreError(f"{self!r}: list {prefix!r}: {_first_line(exc)}") from exc
        except Exception as exc:
            self._raise(exc, prefix, "list")
        found.sort(key=lambda meta: meta.key)
        return found

    @object_store_request("delete")
    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects; keys that do not exist are ignored."""
        if isinstance(keys, str):
            raise TypeError("delete takes a sequence of keys, not a single str")
        batch = list(keys)
        for key in batch:
            validate_key(key)
        self._check_open()
        if not batch:
            return
        try:
            await obstore.delete_async(self._store, batch)
            return
        except Exception as exc:
            # Local directories report missing files (S3 and memory do not): retry one by one.
            if not self._is_missing(exc):
                self._raise(exc, batch[0], "delete")
        for key in batch:
            try:
                await obstore.delete_async(self._store, key)
            except Exception as exc:
                if not self._is_missing(exc):
                    self._raise(exc, key, "delete")

    async def close(self) -> None:
        """Release the store; later calls raise ObjectStoreError."""
        self._closed = True

    # -- for subclasses -----------------------------------------------------------------------------

    async def _write(self, key: str, data: bytes | memoryview, if_absent: bool) -> None:
        """Write through obstore: conditional single PUT, or multipart for large overwrites.

        obstore 0.12.1 performs every ``mode="create"`` put as one conditional PUT (If-None-Match: *),
        never as a multipart upload: the conditional CompleteMultipartUpload that S3 offers is not exposed.
        A single PUT carries up to 5 GiB on S3, far above any segment size Tidelog writes.
        """
        size = len(data) if isinstance(data, bytes) else data.nbytes
        try:
            await obstore.put_async(
                self._store,
                key,
                data,
                mode="create" if if_absent else "overwrite",
                use_multipart=not if_absent and size >= MULTIPART_THRESHOLD,
                chunk_size=MULTIPART_PART_SIZE,
            )
        except (AlreadyExistsError, PreconditionError) as exc:
            if if_absent:
                raise ObjectExists(key) from exc
            self._raise(exc, key, "put")
        except FileNotFoundError as exc:  # S3 NoSuchBucket
            raise ObjectStoreError(f"{self!r}: put {key!r}: {_first_line(exc)}") from exc
        except Exception as exc:
            self._raise(exc, key, "put")

    def _is_missing(self, exc: Exception) -> bool:
        """Whether ``exc`` means "no object under that key"."""
        return isinstance(exc, FileNotFoundError)

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectStoreError(f"{self!r} is closed")

    def _raise(self, exc: Exception, key: str, op: str) -> NoReturn:
        """Re-raise an obstore (or OS) error as the matching ObjectStoreError."""
        if isinstance(exc, ObjectStoreError):
            raise exc
        where = f"{self!r}: {op} {key!r}: {_first_line(exc)}"
        if self._is_missing(exc):
            raise ObjectNotFound(key) from exc
        if isinstance(exc, AlreadyExistsError):
            raise ObjectExists(key) from exc
        if isinstance(exc, _PERMANENT):
            raise ObjectStoreError(where) from exc
        if isinstance(exc, BaseError):
            status = _HTTP_STATUS.search(str(exc))
            if status is not None:
                code = int(status.group(1))
                if 400 <= code < 500 and code not in _RETRIABLE_4XX:
                    raise ObjectStoreError(where) from exc
            raise ObjectStoreUnavailable(where) from exc
        if isinstance(exc, OSError):  # includes TimeoutError and ConnectionError
            raise ObjectStoreUnavailable(where) from exc
        raise exc

    async def _empty_range(self, key: str) -> bytes:
        if await self.head(key) is None:
            raise ObjectNotFound(key)
        return b""


class ChunkStream:
    """An async iterator over gathered chunks then the rest of a stream, counting bytes and keeping the
    stream's own exception (obstore wraps what an iterator raises in its own error)."""

    def __init__(self, head: list[bytes | memoryview], rest: AsyncIterator[bytes | memoryview]) -> None:
        self._head = head
        self._rest = rest
        self.size = sum(len(memoryview(c)) for c in head)
        self.error: BaseException | None = None

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> bytes | memoryview:
        if self._head:
            return self._head.pop(0)
        try:
            chunk = await anext(self._rest)
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise
        view = _byte_view(chunk)
        self.size += len(memoryview(view))
        return view


class MemoryObjectStore(ObstoreObjectStore):
    """Objects in this process's memory (obstore MemoryStore); for tests and throwaway runs."""

    def __init__(self) -> None:
        super().__init__(MemoryStore(), description="memory://")
