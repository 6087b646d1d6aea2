"""MetadataStore over etcd v3 (the ``aetcd`` asyncio client).

* Versions are etcd mod_revisions. ``expected_version=N`` is a transaction comparing ``mod_revision == N``;
  ``expected_version=0`` compares ``create_revision == 0`` (the key is absent).
* Leases are kept alive by a task refreshing at ttl/3; ``alive`` turns False if etcd says the lease is
  gone, or if no refresh succeeded for a whole ttl (the keys may already have vanished).
* Watches survive etcd restarts and dropped connections: they are re-created from the last delivered
  revision (events already delivered are skipped), for up to ``reconnect_timeout`` seconds.
* Connection failures raise StoreUnavailable; a watch from a compacted revision raises RevisionCompacted.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

# gRPC's fork handlers (pthread_atfork) are for processes that fork and keep using gRPC in the child. Ours fork
# only to exec (bookies, brokers, etcd with a preexec_fn), and a fork while gRPC threads run its handlers
# crashed the child before exec (SIGSEGV in a test that starts etcd members beside a live client).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import aetcd  # after the environment is set: gRPC reads it when it loads
from aetcd import rpc
from aetcd.utils import prefix_range_end

from metadata.api import (
    MAX_COMMIT_OPS,
    Check,
    Event,
    EventKind,
    LeaseExpired,
    MetadataError,
    Put,
    RevisionCompacted,
    StoreUnavailable,
    VersionConflict,
    Versioned,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
LIST_PAGE = 1000
_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "ABORTED")
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,  # notice a silently dead etcd (etcd allows pings every >= 5 s)
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.initial_reconnect_backoff_ms": 100,  # reconnect promptly once etcd is back
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
}


def _map_error(error: BaseException) -> BaseException:
    """Translate client/gRPC errors to the store's errors (others are returned unchanged)."""
    text = str(error)
    if isinstance(error, rpc.AioRpcError):
        text = f"{error.code().name}: {error.details()}"
        if error.code().name in _UNAVAILABLE:
            return StoreUnavailable(f"etcd: {text}")
    if "lease not found" in text:
        return LeaseExpired(text)
    if isinstance(error, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError | TimeoutError):
        return StoreUnavailable(f"etcd: {text or type(error).__name__}")
    if isinstance(error, aetcd.ClientError | rpc.AioRpcError):
        return MetadataError(f"etcd: {text}")
    return error


def etcd_endpoints(url: str) -> builtins.list[tuple[str, int]]:
    """``etcd://h1:p1[,h2:p2...]`` (or ``http://``) as (host, port) pairs; ValueError if it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "http"):
        raise ValueError(f"not an etcd url: {url!r} (expected etcd://host:port[,host:port...])")
    endpoints = []
    for part in rest.rstrip("/").split(","):
        parts = urlsplit(f"//{part.strip()}")
        try:
            port = parts.port or 2379
        except ValueError as e:
            raise ValueError(f"not an etcd url: {url!r} ({part!r}: {e})") from None
        if not parts.hostname:
            raise ValueError(f"not an etcd url: {url!r} ({part!r} has no host)")
        endpoints.append((parts.hostname, port))
    return endpoints


def grpc_target(url: str) -> tuple[str, int]:
    """The (host, port) that aetcd joins into its gRPC channel target ``f"{host}:{port}"``.

    One member: its host and port. Several: a static address list ``ipv4:a:p1,b:p2`` (or ``ipv6:``),
    split so aetcd's join rebuilds it. gRPC's default pick_first policy then connects to the first
    member that answers and, when that connection breaks (the member was killed, restarted, partitioned
    away), re-connects to the next — so a broker outlives any single member, as etcd's own clients do.
    Host names are resolved once, here (gRPC's static address lists take addresses only).
    """
    endpoints = etcd_endpoints(url)
    if len(endpoints) == 1:
        return endpoints[0]
    addresses = []
    for host, port in endpoints:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ValueError(f"etcd endpoint {host}:{port}: {e}") from None
        family, *_, sockaddr = infos[0]
        addresses.append((family, str(sockaddr[0]), port))
    v6 = any(f == socket.AF_INET6 for f, _, _ in addresses)
    if v6 and not all(f == socket.AF_INET6 for f, _, _ in addresses):
        raise ValueError(f"etcd url {url!r} mixes IPv4 and IPv6 members; give them all in one family")
    listed = ",".join(f"[{a}]:{p}" if v6 else f"{a}:{p}" for _, a, p in addresses)
    head, _, last_port = listed.rpartition(":")
    return f"{'ipv6' if v6 else 'ipv4'}:{head}", int(last_port)


def _key_range(prefix: str) -> tuple[bytes, bytes]:
    if not prefix:
        return b"\0", b"\0"  # etcd: key "\0" with range_end "\0" means every key
    key = prefix.encode()
    return key, prefix_range_end(key)


class EtcdLease:
    """An etcd lease with its keepalive task."""

    def __init__(self, store: EtcdMetadataStore, lease_id: int, ttl: int) -> None:
        self._store = store
        self._id = lease_id
        self.ttl = ttl
        self._alive = True
        self._task = asyncio.create_task(self._keepalive(), name=f"etcd-lease-{lease_id:x}")

    @property
    def id(self) -> int:
        return self._id

    @property
    def alive(self) -> bool:
        return self._alive

    async def revoke(self) -> None:
        """Stop refreshing and revoke: etcd deletes the bound keys at once."""
        await self._stop()
        self._store._leases.discard(self)
        with contextlib.suppress(LeaseExpired):
            await self._store._call(lambda: self._store._client.revoke_lease(self._id))

    async def _stop(self) -> None:
        self._alive = False
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _keepalive(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        last_ok = time.monotonic()
        client = self._store._client
        while True:
            await asyncio.sleep(interval)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
                # the refresh completes, and _stop() (revoke, close) would then wait on this task for ever.
                async with asyncio.timeout(interval):
                    reply = await client.refresh_lease(self._id)
            except Exception as e:  # any failure: keep trying until a whole ttl passed without success
                if time.monotonic() - last_ok >= self.ttl:
                    log.warning("etcd lease %x lost: no keepalive for %ss (%s)", self._id, self.ttl, e)
                    self._alive = False
                    return
                continue
            if reply is None or reply.TTL <= 0:
                log.warning("etcd lease %x expired", self._id)
                self._alive = False
                return
            last_ok = time.monotonic()


class EtcdWatch:
    """Async iterator of Events under a prefix that resumes across etcd restarts."""

    def __init__(self, store: EtcdMetadataStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start
        self._last_rev = 0  # revision of the last delivered event
        self._seen_at_last = 0  # events delivered at _last_rev (a commit's events share a revision)
        self._skip = 0  # after a resume: events at _last_rev to drop (already delivered)
        self._watch: Any = None
        self._iter: Any = None
        self._closed = False

    def __aiter__(self) -> EtcdWatch:
        return self

    async def __anext__(self) -> Event:
        failing_since: float | None = None
        delay = 0.05
        while True:
            if self._closed or self._store._closed:
                raise StopAsyncIteration
            error: BaseException | None = None
            try:
                if self._iter is None:
                    await self._open()
                raw = await anext(self._iter)
            except aetcd.RevisionCompactedError as e:
                self._closed = True
                raise RevisionCompacted(self._resume_from(), int(e.compacted_revision)) from e
            except StopAsyncIteration as e:  # the client ended this stream; resume unless closing
                error = e
            except (aetcd.ClientError, rpc.AioRpcError, TimeoutError) as e:
                error = e
            if error is not None:
                await self._drop()
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._store._reconnect_timeout:
                    self._closed = True
                    raise StoreUnavailable(f"etcd watch on {self._prefix!r} could not resume: {error}") from error
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            failing_since, delay = None, 0.05
            event = self._convert(raw)
            if event is not None:
                return event

    async def aclose(self) -> None:
        """Stop watching; the iterator ends."""
        self._closed = True
        await self._drop()
        self._store._watches.discard(self)

    def _resume_from(self) -> int:
        return self._last_rev if self._last_rev else self._start

    async def _open(self) -> None:
        self._skip = self._seen_at_last if self._last_rev else 0
        key, range_end = _key_range(self._prefix)
        self._watch = await self._store._client.watch(key, range_end=range_end, start_revision=self._resume_from())
        self._iter = aiter(self._watch)

    async def _drop(self) -> None:
        watch, self._watch, self._iter = self._watch, None, None
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.cancel()

    def _convert(self, raw: Any) -> Event | None:
        revision = int(raw.kv.mod_revision)
        if revision < self._last_rev or (revision == self._last_rev and self._skip > 0):
            self._skip -= 1
            return None
        if revision == self._last_rev:
            self._seen_at_last += 1
        else:
            self._last_rev, self._seen_at_last, self._skip = revision, 1, 0
        self._store._seen(revision)
        key = bytes(raw.kv.key).decode()
        if raw.kind == aetcd.EventKind.DELETE:
            return Event(EventKind.DELETE, key, None, revision)
        return Event(EventKind.PUT, key, bytes(raw.kv.value), revision)


class EtcdMetadataStore:
    """MetadataStore on etcd. Create with ``await EtcdMetadataStore.connect("etcd://127.0.0.1:2379")``."""

    def __init__(self, client: Any, request_timeout: float, reconnect_timeout: float) -> None:
        self._client = client
        self._request_timeout = request_timeout
        self._reconnect_timeout = reconnect_timeout
        self._last_revision = 0
        self._leases: set[EtcdLease] = set()
        self._watches: set[EtcdWatch] = set()
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str, *, request_timeout: float = 5.0, reconnect_timeout: float = 30.0
    ) -> EtcdMetadataStore:
        """Connect to ``etcd://host:port[,host:port...]`` (or ``http://``); checks etcd answers (else
        StoreUnavailable). With several members the client fails over between them (see ``grpc_target``).

        ``request_timeout`` bounds each request; a watch retries for ``reconnect_timeout`` seconds.
        """
        host, port = grpc_target(url)
        client = aetcd.Client(host=host, port=port, timeout=request_timeout, options=_CHANNEL_OPTIONS)
        store = cls(client, request_timeout, reconnect_timeout)
        try:
            await store._call(client.connect)
            await store.revision()
        except BaseException:
            await client.close()
            raise
        return store

    # --- reads --------------------------------------------------------------------------------
    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and its mod_revision, or None."""
        response = await self._kv("Range", rpc.RangeRequest(key=key.encode()))
        return self._versioned(response.kvs[0]) if response.kvs else None

    async def revision(self) -> int:
        """etcd's current revision."""
        response = await self._kv("Range", rpc.RangeRequest(key=b"\0", count_only=True))
        return int(response.header.revision)

    # --- writes -------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, expected_version: int | None = None, lease: int | None = None) -> int:
        """Write ``value``; returns the new version. Raises VersionConflict or LeaseExpired."""
        request = rpc.PutRequest(key=key.encode(), value=bytes(value), lease=lease or 0)
        if expected_version is None:
            return int((await self._kv("Put", request)).header.revision)
        response = await self._txn([Check(key, expected_version)], [rpc.RequestOp(request_put=request)])
        return int(response.header.revision)

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete ``key``; returns whether it existed. Raises VersionConflict if the check fails."""
        request = rpc.DeleteRangeRequest(key=key.encode())
        if expected_version is None:
            return int((await self._kv("DeleteRange", request)).deleted) > 0
        checks = [Check(key, expected_version)]
        response = await self._txn(checks, [rpc.RequestOp(request_delete_range=request)])
        return int(response.responses[0].response_delete_range.deleted) > 0

    async def commit(self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str] = ()) -> int:
        """Apply puts and deletes in one etcd transaction if every check holds; returns the revision."""
        keys = [p.key for p in puts] + builtins.list(deletes)
        if len(set(keys)) != len(keys):
            raise ValueError("a key may appear only once among the puts and deletes of one commit")
        if len(keys) > MAX_COMMIT_OPS or len(checks) > MAX_COMMIT_OPS:
            raise ValueError(f"a commit takes at most {MAX_COMMIT_OPS} checks and {MAX_COMMIT_OPS} puts + deletes")
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=p.key.encode(), value=bytes(p.value), lease=p.lease or 0))
            for p in puts
        ]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode())) for k in deletes]
        return int((await self._txn(checks, ops)).header.revision)

    # --- leases -------------------------------------------------------------------------------
    async def lease(self, ttl: float) -> EtcdLease:
        """Grant a lease (ttl rounded up to whole seconds; etcd may raise it to its minimum)."""
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self._check_open()
        granted = await self._call(lambda: self._client.lease(max(1, math.ceil(ttl))))
        lease = EtcdLease(self, int(granted.id), int(granted.ttl))
        self._leases.add(lease)
        return lease

    # --- watches ------------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int | None = None) -> EtcdWatch:
        """Changes under ``prefix`` from ``from_revision`` (inclusive), or from now when None.

        "Now" is just after the newest revision this client has seen, so nothing committed after this
        call is missed (a few changes just before it may be delivered too). etcd keeps history until
        it is compacted; older revisions raise RevisionCompacted when iterated.
        """
        self._check_open()
        if from_revision is not None and from_revision < 1:
            raise ValueError("from_revision must be >= 1 (or None for 'from now')")
        start = self._last_revision + 1 if from_revision is None else from_revision
        watch = EtcdWatch(self, prefix, start)
        self._watches.add(watch)
        return watch

    # --- listing (defined late: the method name shadows the builtin in this class body) ---------
    async def list(self, prefix: str) -> builtins.list[Versioned]:
        """All keys starting with ``prefix`` (plain string prefix), sorted; one consistent snapshot."""
        key, range_end = _key_range(prefix)
        found: builtins.list[Versioned] = []
        at_revision = 0
        while True:
            request = rpc.RangeRequest(
                key=key, range_end=range_end, limit=LIST_PAGE, revision=at_revision,
                sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.KEY,
            )  # fmt: skip
            response = await self._kv("Range", request)
            at_revision = int(response.header.revision)
            found.extend(self._versioned(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return found
            key = bytes(response.kvs[-1].key) + b"\0"

    # --- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop keepalives (leased keys then expire after their ttl), end watches, close the client."""
        if self._closed:
            return
        self._closed = True
        for lease in builtins.list(self._leases):
            await lease._stop()
        for watch in builtins.list(self._watches):
            await watch.aclose()
        with contextlib.suppress(Exception):
            await self._client.close()

    # --- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MetadataError("metadata store is closed")

    def _seen(self, revision: int) -> None:
        self._last_revision = max(self._last_revision, revision)

    def _versioned(self, kv: Any) -> Versioned:
        return Versioned(bytes(kv.key).decode(), bytes(kv.value), int(kv.mod_revision), int(kv.lease) or None)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self._check_open()
        try:
            return await fn()
        except (aetcd.ClientError, rpc.AioRpcError, TimeoutError) as e:
            raise _map_error(e) from e

    async def _kv(self, method: str, request: Any) -> Any:
        """One KV RPC (raw stub, so the response header's revision is available)."""

        async def call() -> Any:
            await self._client.connect()
            stub = getattr(self._client.kvstub, method)
            return await stub(request, timeout=self._request_timeout, metadata=self._client.metadata)

        response = await self._call(call)
        self._seen(int(response.header.revision))
        return response

    async def _txn(self, checks: Sequence[Check], ops: builtins.list[Any]) -> Any:
        compares = []
        for check in checks:
            if check.version == 0:
                compares.append(
                    rpc.Compare(key=check.key.encode(), target=rpc.Compare.CREATE,
                                result=rpc.Compare.EQUAL, create_revision=0)
                )  # fmt: skip
            else:
                compares.append(
                    rpc.Compare(key=check.key.encode(), target=rpc.Compare.MOD,
                                result=rpc.Compare.EQUAL, mod_revision=check.version)
                )  # fmt: skip
        response = await self._kv("Txn", rpc.TxnRequest(compare=compares, success=ops))
        if not response.succeeded:
            wanted = ", ".join(f"{c.key}@{c.version}" for c in checks)
            raise VersionConflict(f"compare failed (expected {wanted})")
        return response
