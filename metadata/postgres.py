"""MetadataStore on PostgreSQL (the ``asyncpg`` client): etcd's shape on four tables.

* ``tidelog_revision`` is one row holding the store-wide revision and the compaction floor. Every write
  takes that row ``FOR UPDATE`` first, so writers are serialised and a revision is committed before the
  next one is handed out: the events table never shows revision N+1 without N. A write that changes
  something bumps the revision in its own transaction; a key's ``version`` is that revision (etcd's
  mod_revision); a failed compare rolls back and changes nothing.
* ``tidelog_kv`` holds the keys (``bytea``, so ``ORDER BY key`` is byte order as in etcd) with value,
  version and lease. ``commit`` is one transaction: checks, upserts, deletes, events, NOTIFY.
* ``tidelog_leases`` holds leases as rows with an expiry on the server's clock. The owner's keepalive task
  pushes the expiry forward every ttl/3; every client runs a small reaper that, when it sees an expired
  lease, deletes it and its keys in one write transaction (one revision, a DELETE event per key) — whoever
  notices first does it, the others then find nothing to do.
* ``tidelog_events`` is the watch history: (revision, seq, key, value; NULL value = delete). A watch reads
  it from the revision it wants on, woken by ``LISTEN tidelog_events`` (each write NOTIFYs at commit) and,
  as a safety net for a missed notification, every POLL_S seconds. Events older than ``history`` revisions
  are compacted away; asking for them raises RevisionCompacted.

Connection failures raise StoreUnavailable (retriable); the pool reconnects on the next call, and the
listening connection reconnects by itself, waking every watch so nothing committed meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

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

CHANNEL = "tidelog_events"
DEFAULT_HISTORY = 10_000  # revisions of events kept for watches from the past
POLL_S = 2.0  # a watch re-reads the events table this often even without a notification
REAP_S = 0.2  # how often each client looks for expired leases
COMPACT_EVERY_S = 10.0
EVENT_PAGE = 1000
_DONE = 2**31 - 1  # "every event of this revision delivered" as a seq

SCHEMA = """
CREATE TABLE IF NOT EXISTS tidelog_revision (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    revision bigint NOT NULL,
    compacted bigint NOT NULL
);
INSERT INTO tidelog_revision (one, revision, compacted) VALUES (true, 0, 1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS tidelog_kv (
    key bytea PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL,
    lease bigint
);
CREATE INDEX IF NOT EXISTS tidelog_kv_lease ON tidelog_kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS tidelog_leases (
    id bigint PRIMARY KEY,
    ttl double precision NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS tidelog_leases_expiry ON tidelog_leases (expires_at);
CREATE TABLE IF NOT EXISTS tidelog_events (
    revision bigint NOT NULL,
    seq integer NOT NULL,
    key bytea NOT NULL,
    value bytea,
    PRIMARY KEY (revision, seq)
);
"""
WRITE_FUNCTION = """
CREATE OR REPLACE FUNCTION tidelog_write(
    check_keys bytea[], check_versions bigint[], put_keys bytea[], put_values bytea[], put_leases bigint[],
    delete_keys bytea[]
) RETURNS TABLE (revision bigint, deleted integer, conflicts bytea[], dead_lease bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    current bigint;
    failed bytea[];
    dead bigint;
    gone bytea[];
    next_revision bigint;
    changed text;
BEGIN
    -- One writer at a time: revision N is committed before N + 1 is handed out.
    SELECT r.revision INTO current FROM tidelog_revision r FOR UPDATE;
    SELECT array_agg(c.k ORDER BY c.o) INTO failed
      FROM unnest(check_keys, check_versions) WITH ORDINALITY AS c(k, v, o)
      LEFT JOIN tidelog_kv kv ON kv.key = c.k
     WHERE coalesce(kv.version, 0) <> c.v;
    IF failed IS NOT NULL THEN
        RETURN QUERY SELECT current, 0, failed, NULL::bigint;
        RETURN;
    END IF;
    SELECT l INTO dead FROM unnest(put_leases) AS l
     WHERE l IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM tidelog_leases x WHERE x.id = l AND x.expires_at > clock_timestamp())
     LIMIT 1;
    IF dead IS NOT NULL THEN
        RETURN QUERY SELECT current, 0, NULL::bytea[], dead;
        RETURN;
    END IF;
    WITH d AS (DELETE FROM tidelog_kv WHERE key = ANY(delete_keys) RETURNING key)
    SELECT coalesce(array_agg(t.k ORDER BY t.o), '{}') INTO gone
      FROM unnest(delete_keys) WITH ORDINALITY AS t(k, o) WHERE t.k IN (SELECT key FROM d);
    IF cardinality(put_keys) = 0 AND cardinality(gone) = 0 THEN
        RETURN QUERY SELECT current, 0, NULL::bytea[], NULL::bigint;
        RETURN;
    END IF;
    next_revision := current + 1;
    INSERT INTO tidelog_kv (key, value, version, lease)
         SELECT t.k, t.v, next_revision, t.l FROM unnest(put_keys, put_values, put_leases) AS t(k, v, l)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version, lease = EXCLUDED.lease;
    UPDATE tidelog_revision SET revision = next_revision;
    INSERT INTO tidelog_events (revision, seq, key, value)
         SELECT next_revision, t.s - 1, t.k, t.v
           FROM unnest(put_keys || gone, put_values || array_fill(NULL::bytea, ARRAY[cardinality(gone)]))
                WITH ORDINALITY AS t(k, v, s);
    -- The payload names the changed keys (hex) so a client wakes only the watches they concern; too many
    -- for one notification (8000 bytes): the revision alone, which wakes every watch.
    changed := array_to_string(ARRAY(SELECT encode(k, 'hex') FROM unnest(put_keys || gone) AS k), ' ');
    PERFORM pg_notify('tidelog_events', CASE WHEN length(changed) <= 7000
                                             THEN next_revision::text || ' ' || changed
                                             ELSE next_revision::text END);
    RETURN QUERY SELECT next_revision, cardinality(gone), NULL::bytea[], NULL::bigint;
END
$fn$;
COMMENT ON FUNCTION tidelog_write(bytea[], bigint[], bytea[], bytea[], bigint[], bytea[]) IS 'tidelog 2';
"""
# Bump 'tidelog 2' (here and in WRITE_FUNCTION) with any change of either: a connect then re-runs them.
_SCHEMA_PRESENT = """
SELECT to_regclass('tidelog_revision') IS NOT NULL AND to_regclass('tidelog_kv') IS NOT NULL
   AND to_regclass('tidelog_leases') IS NOT NULL AND to_regclass('tidelog_events') IS NOT NULL
   AND obj_description(to_regprocedure('tidelog_write(bytea[], bigint[], bytea[], bytea[], bigint[], bytea[])'),
                       'pg_proc') IS NOT DISTINCT FROM 'tidelog 2'
"""
_SCHEMA_LOCK = 0x7469_6465_6C6F_67  # pg_advisory_xact_lock key: processes starting together create it once

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
)


async def _keep_session(conn: Any) -> None:
    """Pool release hook: skip asyncpg's default reset round trip (UNLISTEN, RESET ALL, advisory unlocks).

    Pooled connections never LISTEN, change settings or hold session locks here; an open transaction is
    still rolled back by the pool before this is called.
    """


def _range(prefix: str) -> tuple[bytes, bytes | None]:
    """[low, high) of the byte keys starting with ``prefix`` (high None: no upper bound)."""
    low = prefix.encode()
    high = bytearray(low)
    while high and high[-1] == 0xFF:
        high.pop()
    if not high:
        return low, None
    high[-1] += 1
    return low, bytes(high)


class PostgresLease:
    """A lease row kept alive by this task (expiry pushed ttl ahead every ttl/3)."""

    def __init__(self, store: PostgresMetadataStore, lease_id: int, ttl: float) -> None:
        self._store = store
        self._id = lease_id
        self.ttl = ttl
        self._alive = True
        self._task = asyncio.create_task(self._keepalive(), name=f"pg-lease-{lease_id:x}")

    @property
    def id(self) -> int:
        return self._id

    @property
    def alive(self) -> bool:
        return self._alive

    async def revoke(self) -> None:
        """Stop refreshing, delete the lease and its keys now (one revision, a DELETE event per key)."""
        await self._stop()
        self._store._leases.discard(self)
        await self._store._end_leases([self._id])

    async def _stop(self) -> None:
        self._alive = False
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _keepalive(self) -> None:
        interval = max(self.ttl / 3, 0.05)
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(max(interval, 1.0)):
                    found = await self._store._refresh(self._id)
            except Exception as e:  # keep trying until a whole ttl passed without success
                if time.monotonic() - last_ok >= self.ttl:
                    log.warning("postgres lease %x lost: no keepalive for %ss (%s)", self._id, self.ttl, e)
                    self._alive = False
                    return
                continue
            if not found:
                log.warning("postgres lease %x expired", self._id)
                self._alive = False
                return
            last_ok = time.monotonic()


class PostgresWatch:
    """Async iterator of Events under a prefix, read from ``tidelog_events`` in (revision, seq) order."""

    def __init__(self, store: PostgresMetadataStore, prefix: str, start: int) -> None:
        self._store = store
        self._low, self._high = _range(prefix)
        self._prefix = prefix
        self._after = (start - 1, _DONE)  # everything up to and including this (revision, seq) is delivered
        self._pending: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def __aiter__(self) -> PostgresWatch:
        return self

    async def __anext__(self) -> Event:
        failing_since: float | None = None
        delay = 0.05
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed or self._store._closed:
                raise StopAsyncIteration
            self._wake.clear()  # set again by a notification arriving while we read: then we read again
            try:
                await self._fetch()
            except RevisionCompacted:
                self._closed = True
                raise
            except StoreUnavailable as e:
                if self._store._closed:
                    raise StopAsyncIteration from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._store._reconnect_timeout:
                    self._closed = True
                    raise StoreUnavailable(f"postgres watch on {self._prefix!r} could not resume: {e}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except MetadataError:
                if self._store._closed:
                    raise StopAsyncIteration from None
                raise
            failing_since, delay = None, 0.05
            if not self._pending:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
                # the wake-up does, and the consumer's task would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()

    async def aclose(self) -> None:
        """Stop watching; the iterator ends."""
        self._closed = True
        self._pending.clear()
        self._store._watches.discard(self)
        self._wake.set()

    def _offer(self, keys: Sequence[bytes] | None) -> None:
        """A notification: wake up if any changed key is under the prefix (``None``: unknown keys, wake)."""
        if keys is None or any(k >= self._low and (self._high is None or k < self._high) for k in keys):
            self._wake.set()

    async def _fetch(self) -> None:
        """Read the next page of events after ``_after`` in one snapshot (with the floor and revision)."""
        revision, seq = self._after
        wanted = revision + 1 if seq == _DONE else revision

        async def read(conn: Any) -> tuple[int, int, list[Any]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                head = await conn.fetchrow("SELECT revision, compacted FROM tidelog_revision")
                if wanted < head["compacted"]:
                    return int(head["revision"]), int(head["compacted"]), []
                rows = await conn.fetch(
                    "SELECT revision, seq, key, value FROM tidelog_events"
                    " WHERE (revision, seq) > ($1, $2) AND key >= $3 AND ($4::bytea IS NULL OR key < $4)"
                    " ORDER BY revision, seq LIMIT $5",
                    revision, seq, self._low, self._high, EVENT_PAGE,
                )  # fmt: skip
                return int(head["revision"]), int(head["compacted"]), rows

        current, floor, rows = await self._store._with_conn(read)
        if wanted < floor:
            raise RevisionCompacted(wanted, floor)
        self._store._seen(current)
        for row in rows:
            value = row["value"]
            key = bytes(row["key"]).decode()
            if value is None:
                self._pending.append(Event(EventKind.DELETE, key, None, int(row["revision"])))
            else:
                self._pending.append(Event(EventKind.PUT, key, bytes(value), int(row["revision"])))
        if len(rows) == EVENT_PAGE:
            self._after = (int(rows[-1]["revision"]), int(rows[-1]["seq"]))
        else:  # the snapshot holds every event up to ``current``: all of them are now delivered
            self._after = (max(current, revision), _DONE)


class PostgresMetadataStore:
    """MetadataStore on PostgreSQL. Create with ``await PostgresMetadataStore.connect("postgresql://...")``."""

    def __init__(self, url: str, request_timeout: float, reconnect_timeout: float, history: int) -> None:
        self._url = url
        self._request_timeout = request_timeout
        self._reconnect_timeout = reconnect_timeout
        self._history = history
        self._pool: Any = None
        self._last_revision = 0
        self._leases: set[PostgresLease] = set()
        self._watches: set[PostgresWatch] = set()
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        request_timeout: float = 5.0,
        reconnect_timeout: float = 30.0,
        history: int = DEFAULT_HISTORY,
        pool_size: int = 4,
    ) -> PostgresMetadataStore:
        """Connect to ``postgresql://user[:password]@host[:port]/database`` (or ``postgres://``).

        Creates the tables if they are missing; StoreUnavailable if the server does not answer.
        ``request_timeout`` bounds each statement; a watch retries for ``reconnect_timeout`` seconds.
        """
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a postgres url: {url!r} (expected postgresql://user@host:port/database)")
        if history < 1:
            raise ValueError("history must be >= 1")
        store = cls(url, request_timeout, reconnect_timeout, history)
        try:
            store._pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=request_timeout,
                command_timeout=request_timeout, max_inactive_connection_lifetime=60.0, reset=_keep_session,
            )  # fmt: skip
        except _UNAVAILABLE as e:
            raise StoreUnavailable(f"postgres: {e or type(e).__name__}") from e
        except asyncpg.PostgresError as e:  # bad credentials, no such database
            raise MetadataError(f"postgres: {e}") from e
        try:
            await store._with_conn(store._create_schema)
            await store.revision()
        except BaseException:
            await store._pool.close()
            raise
        store._tasks = [
            asyncio.create_task(store._listen(), name="pg-listen"),
            asyncio.create_task(store._maintain(), name="pg-maintain"),
        ]
        return store

    # --- reads --------------------------------------------------------------------------------
    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and the revision that last modified it, or None."""
        row = await self._with_conn(
            lambda c: c.fetchrow(
                "SELECT r.revision, k.value, k.version, k.lease FROM tidelog_revision r"
                " LEFT JOIN tidelog_kv k ON k.key = $1",
                key.encode(),
            )
        )
        self._seen(int(row["revision"]))
        if row["version"] is None:
            return None
        return Versioned(key, bytes(row["value"]), int(row["version"]), row["lease"])

    async def revision(self) -> int:
        """The store's current revision (0 for a new store)."""
        revision = int(await self._with_conn(lambda c: c.fetchval("SELECT revision FROM tidelog_revision")))
        self._seen(revision)
        return revision

    # --- writes -------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, expected_version: int | None = None, lease: int | None = None) -> int:
        """Write ``value``; returns the new version. Raises VersionConflict or LeaseExpired."""
        checks = () if expected_version is None else (Check(key, expected_version),)
        revision, _ = await self._write(checks, (Put(key, value, lease),), ())
        return revision

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete ``key``; returns whether it existed. Raises VersionConflict if the check fails."""
        checks = () if expected_version is None else (Check(key, expected_version),)
        _, deleted = await self._write(checks, (), (key,))
        return deleted > 0

    async def commit(self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str] = ()) -> int:
        """Apply puts and deletes in one transaction if every check holds; returns the revision after it.

        A commit that changes nothing (no puts, only absent keys deleted) returns the current revision.
        """
        keys = [p.key for p in puts] + builtins.list(deletes)
        if len(set(keys)) != len(keys):
            raise ValueError("a key may appear only once among the puts and deletes of one commit")
        if len(keys) > MAX_COMMIT_OPS or len(checks) > MAX_COMMIT_OPS:
            raise ValueError(f"a commit takes at most {MAX_COMMIT_OPS} checks and {MAX_COMMIT_OPS} puts + deletes")
        revision, _ = await self._write(checks, puts, deletes)
        return revision

    # --- leases -------------------------------------------------------------------------------
    async def lease(self, ttl: float) -> PostgresLease:
        """Grant a lease (a row expiring ``ttl`` seconds from now on the server's clock), kept alive here."""
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self._check_open()
        while True:
            lease_id = secrets.randbits(62) + 1

            async def insert(conn: Any, lease_id: int = lease_id) -> None:
                await conn.execute(
                    "INSERT INTO tidelog_leases (id, ttl, expires_at)"
                    " VALUES ($1, $2, clock_timestamp() + make_interval(secs => $2))",
                    lease_id, float(ttl),
                )  # fmt: skip

            try:
                await self._with_conn(insert)
            except MetadataError as e:
                if isinstance(e.__cause__, asyncpg.UniqueViolationError):
                    continue  # 1 in 2**62: draw again
                raise
            lease = PostgresLease(self, lease_id, float(ttl))
            self._leases.add(lease)
            return lease

    # --- watches ------------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int | None = None) -> AsyncIterator[Event]:
        """Changes under ``prefix`` from ``from_revision`` (inclusive), or from now when None.

        "Now" is just after the newest revision this client has seen, so nothing committed after this
        call is missed (a few changes just before it may be delivered too). Revisions older than the
        kept history (``history`` revisions) raise RevisionCompacted when iterated.
        """
        self._check_open()
        if from_revision is not None and from_revision < 1:
            raise ValueError("from_revision must be >= 1 (or None for 'from now')")
        start = self._last_revision + 1 if from_revision is None else from_revision
        watch = PostgresWatch(self, prefix, start)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """Drop the events of revisions below ``revision`` (bounded by the current revision + 1)."""

        async def run(conn: Any) -> None:
            async with conn.transaction():
                head = await conn.fetchrow("SELECT revision, compacted FROM tidelog_revision FOR UPDATE")
                floor = min(revision, int(head["revision"]) + 1)
                if floor <= head["compacted"]:
                    return
                await conn.execute("DELETE FROM tidelog_events WHERE revision < $1", floor)
                await conn.execute("UPDATE tidelog_revision SET compacted = $1", floor)

        await self._with_conn(run)

    # --- listing (defined late: the method name shadows the builtin in this class body) ---------
    async def list(self, prefix: str) -> builtins.list[Versioned]:
        """All keys starting with ``prefix`` (plain string prefix), sorted by key; one snapshot."""
        low, high = _range(prefix)
        rows = await self._with_conn(
            lambda c: c.fetch(
                "SELECT key, value, version, lease FROM tidelog_kv"
                " WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) ORDER BY key",
                low, high,
            )
        )  # fmt: skip
        return [Versioned(bytes(r["key"]).decode(), bytes(r["value"]), int(r["version"]), r["lease"]) for r in rows]

    # --- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop keepalives (leased keys then expire after their ttl), end watches, close the pool."""
        if self._closed:
            return
        self._closed = True
        for lease in builtins.list(self._leases):
            await lease._stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for watch in builtins.list(self._watches):
            await watch.aclose()
        if self._pool is not None:
            try:
                async with asyncio.timeout(self._request_timeout):
                    await self._pool.close()
            except _UNAVAILABLE:  # TimeoutError included: connections still busy after request_timeout
                self._pool.terminate()

    # --- internals: connections ----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MetadataError("metadata store is closed")

    def _seen(self, revision: int) -> None:
        self._last_revision = max(self._last_revision, revision)

    async def _with_conn(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` on a pooled connection, translating driver errors to the store's."""
        self._check_open()
        try:
            async with self._pool.acquire(timeout=self._request_timeout) as conn:
                return await fn(conn)
        except MetadataError:
            raise
        except _UNAVAILABLE as e:
            if self._closed:
                raise MetadataError("metadata store is closed") from e
            raise StoreUnavailable(f"postgres: {e or type(e).__name__}") from e
        except asyncpg.PostgresError as e:
            raise MetadataError(f"postgres: {e}") from e

    @staticmethod
    async def _create_schema(conn: Any) -> None:
        """Create the tables and the write function unless they are all there (then no DDL: a user with
        only SELECT/INSERT/UPDATE/DELETE rights can connect to a database set up once by its owner)."""
        if await conn.fetchval(_SCHEMA_PRESENT):
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)
            await conn.execute(WRITE_FUNCTION)

    # --- internals: writes ---------------------------------------------------------------------
    async def _write(self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str]) -> tuple[int, int]:
        """One serialised write (the tidelog_write function: one round trip); returns (revision, keys deleted)."""

        async def run(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT * FROM tidelog_write($1, $2, $3, $4, $5, $6)",
                [c.key.encode() for c in checks], [c.version for c in checks],
                [p.key.encode() for p in puts], [bytes(p.value) for p in puts], [p.lease or None for p in puts],
                [k.encode() for k in deletes],
            )  # fmt: skip

        row = await self._with_conn(run)
        if row["conflicts"] is not None:
            failed = {bytes(k).decode() for k in row["conflicts"]}
            wanted = ", ".join(f"{c.key}@{c.version}" for c in checks if c.key in failed)
            raise VersionConflict(f"compare failed (expected {wanted})")
        if row["dead_lease"] is not None:
            raise LeaseExpired(f"lease {int(row['dead_lease']):x} not found")
        revision, deleted = int(row["revision"]), int(row["deleted"])
        self._seen(revision)
        return revision, deleted

    @staticmethod
    async def _append_events(conn: Any, revision: int, events: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Bump the revision, record the events and notify watchers (delivered when the transaction commits)."""
        await conn.execute("UPDATE tidelog_revision SET revision = $1", revision)
        await conn.execute(
            "INSERT INTO tidelog_events (revision, seq, key, value)"
            " SELECT $1, s - 1, k, v FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS t(k, v, s)",
            revision, [k for k, _ in events], [v for _, v in events],
        )  # fmt: skip
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(revision))

    async def _end_leases(self, lease_ids: Sequence[int] | None) -> int:
        """Delete the given leases (None: every expired one) and their keys in one revision; returns it."""

        async def run(conn: Any) -> int:
            async with conn.transaction():
                current = int(await conn.fetchval("SELECT revision FROM tidelog_revision FOR UPDATE"))
                if lease_ids is None:
                    rows = await conn.fetch(
                        "DELETE FROM tidelog_leases WHERE expires_at <= clock_timestamp() RETURNING id"
                    )
                else:
                    rows = await conn.fetch(
                        "DELETE FROM tidelog_leases WHERE id = ANY($1::bigint[]) RETURNING id", builtins.list(lease_ids)
                    )
                ended = [int(r["id"]) for r in rows]
                if not ended:
                    return current
                keys = await conn.fetch("DELETE FROM tidelog_kv WHERE lease = ANY($1::bigint[]) RETURNING key", ended)
                if not keys:
                    return current
                revision = current + 1
                await self._append_events(conn, revision, [(bytes(r["key"]), None) for r in keys])
                return revision

        revision = await self._with_conn(run)
        self._seen(revision)
        return revision

    async def _refresh(self, lease_id: int) -> bool:
        """Push a live lease's expiry ttl ahead; False if it is gone or already expired."""
        found = await self._with_conn(
            lambda c: c.fetchval(
                "UPDATE tidelog_leases SET expires_at = clock_timestamp() + make_interval(secs => ttl)"
                " WHERE id = $1 AND expires_at > clock_timestamp() RETURNING id",
                lease_id,
            )
        )
        return found is not None

    # --- internals: background tasks ---------------------------------------------------------
    def _notify(self, *_: object) -> None:
        """Wake every watch (they re-read the events table)."""
        for watch in builtins.list(self._watches):
            watch._offer(None)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """``REVISION [HEXKEY ...]`` from tidelog_write: wake the watches of those keys (no keys: all)."""
        words = payload.split(" ")
        try:
            keys = [bytes.fromhex(w) for w in words[1:]] if len(words) > 1 else None
        except ValueError:
            keys = None
        for watch in builtins.list(self._watches):
            watch._offer(keys)

    async def _listen(self) -> None:
        """Hold one connection LISTENing on CHANNEL; reconnect when it drops, waking watches each time."""
        delay = 0.1
        while not self._closed:
            lost = asyncio.Event()
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._url, timeout=self._request_timeout)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notification)
                delay = 0.1
                self._notify()  # anything committed while not listening is read now
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("postgres listener: %s", e)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _maintain(self) -> None:
        """Reap expired leases (every REAP_S) and compact history past ``history`` revisions."""
        next_compact = time.monotonic() + COMPACT_EVERY_S
        while not self._closed:
            await asyncio.sleep(REAP_S)
            try:
                expired = await self._with_conn(
                    lambda c: c.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM tidelog_leases WHERE expires_at <= clock_timestamp())"
                    )
                )
                if expired:
                    await self._end_leases(None)
                if time.monotonic() >= next_compact:
                    next_compact = time.monotonic() + COMPACT_EVERY_S
                    current = await self.revision()
                    await self.compact(current - self._history + 1)
            except MetadataError as e:
                log.debug("postgres maintenance: %s", e)
