"""A leased session: keys bound to one lease, loss of that lease reported at once, re-registration on demand.

Why: a cluster member (broker, bookie) proves it is alive by keeping keys bound to a lease; when the
lease is gone those keys are gone too, and other members may already act on that (take its partitions,
elect another controller). The member must then stop acting *by itself*, at once (self-fencing), so the
session turns "the lease is no longer alive" into an event and synchronous callbacks.

How loss is noticed: the store's Lease keeps itself alive and reports ``alive``; a monitor task polls it
every ``check_interval`` (a property read, no I/O). With etcd (metadata/etcd.py) ``alive`` turns False
when a refresh says the lease is gone (within ttl/3 of etcd expiring or revoking it) or when no refresh
succeeded for a whole ttl (etcd unreachable: etcd itself expires the lease about ttl after the last refresh
it saw, so there is a window of up to ~ttl/3 where etcd has expired the lease and this process has not yet
noticed; the write path is fenced by the bookies for that reason). The embedded store's lease dies only
when revoked or ``expire_lease``d. A holder that learns of the loss another way (a put raising
LeaseExpired, its own key seen deleted) calls ``mark_lost``.

Re-registration: ``renew`` grants a new lease and writes every key ``register``ed so far again, bound to
it. A registered key still held by the *old* lease (it has not expired on the server yet) is taken over by
compare-and-swap; a key held by someone else raises RegistrationConflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from metadata.api import Lease, LeaseExpired, MetadataError, MetadataStore, VersionConflict

log = logging.getLogger(__name__)

LostCallback = Callable[[str], None]
"""Called synchronously with the reason, once per lost lease: the place to self-fence."""


class SessionLost(MetadataError):
    """The session's lease is gone; nothing may be written under it (``renew`` to start again)."""


class RegistrationConflict(MetadataError):
    """A key this session wants to register is held by another live lease (another process)."""


class LeasedSession:
    """One lease, the keys registered under it, and a monitor that reports its loss (module docstring)."""

    def __init__(self, store: MetadataStore, ttl: float, *, check_interval: float | None = None) -> None:
        if ttl <= 0:
            raise ValueError("session ttl must be positive")
        self._store = store
        self.ttl = ttl
        self.check_interval = check_interval if check_interval is not None else min(0.1, ttl / 10)
        self._lease: Lease | None = None
        self._registered: dict[str, bytes] = {}
        self._callbacks: list[LostCallback] = []
        self._monitor: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        """Set when the lease is lost (cleared by ``renew``); await it to react."""
        self.lost_reason = ""
        self.generation = 0
        """How many leases this session has held; bumps with each ``start``/``renew``."""

    # --- state --------------------------------------------------------------------------------
    @property
    def lease_id(self) -> int:
        """The current lease's id; raises SessionLost if there is no live lease."""
        lease = self._lease
        if lease is None or self.lost.is_set():
            raise SessionLost(f"no live lease ({self.lost_reason or 'not started'})")
        return lease.id

    @property
    def last_lease_id(self) -> int | None:
        """The id of the lease held last, even if lost (to clean up keys still bound to it); None if closed."""
        return None if self._lease is None else self._lease.id

    @property
    def alive(self) -> bool:
        """Whether this session holds a lease it believes alive (False from the moment loss is noticed)."""
        return self._lease is not None and not self.lost.is_set()

    def on_lost(self, callback: LostCallback) -> None:
        """Call ``callback(reason)`` synchronously whenever the lease is lost (keep it short, no awaits)."""
        self._callbacks.append(callback)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        """Grant the lease and start watching it; returns the lease id."""
        if self._lease is not None:
            raise RuntimeError("session already started")
        await self._grant()
        return self.lease_id

    async def renew(self) -> int:
        """Start over on a new lease: register every registered key again; returns the new lease id.

        Raises RegistrationConflict if another process holds one of the keys meanwhile (the session is
        then left lost, with the new lease revoked).
        """
        old = self._lease
        await self._stop_monitor()
        if old is not None:
            with contextlib.suppress(MetadataError, OSError):
                await old.revoke()  # if it still lives on the server, its keys go now
        await self._grant()
        try:
            for key, value in self._registered.items():
                await self._put_registered(key, value, old.id if old is not None else None)
        except BaseException as e:
            self.mark_lost(f"re-registration failed: {e!r}")
            raise
        return self.lease_id

    async def close(self, *, revoke: bool = True) -> None:
        """Stop watching; revoke the lease (its keys vanish at once) unless ``revoke`` is False."""
        await self._stop_monitor()
        lease, self._lease = self._lease, None
        self._registered.clear()
        if lease is not None and revoke:
            with contextlib.suppress(MetadataError, OSError):
                await lease.revoke()

    def mark_lost(self, reason: str) -> None:
        """Declare the lease lost now (idempotent): sets ``lost`` and calls the callbacks once."""
        if self.lost.is_set() or self._lease is None:
            return
        self.lost_reason = reason
        self.lost.set()
        log.warning("session lease %x lost: %s", self._lease.id, reason)
        for callback in list(self._callbacks):
            try:
                callback(reason)
            except Exception:
                log.exception("session lost-callback failed")

    # --- writes under the lease ---------------------------------------------------------------
    async def register(self, key: str, value: bytes) -> int:
        """Create ``key`` bound to this lease (it must be absent, else RegistrationConflict); kept by ``renew``."""
        version = await self._put_registered(key, value, None)
        self._registered[key] = value
        return version

    async def update(self, key: str, value: bytes) -> int:
        """Change the value of a key registered by this session (still bound to the lease)."""
        if key not in self._registered:
            raise KeyError(f"{key} is not registered by this session")
        version = await self.put(key, value)
        self._registered[key] = value
        return version

    async def unregister(self, key: str) -> None:
        """Delete a registered key (if it is still bound to this lease) and forget it."""
        self._registered.pop(key, None)
        found = await self._store.get(key)
        if found is not None and self._lease is not None and found.lease == self._lease.id:
            with contextlib.suppress(VersionConflict):
                await self._store.delete(key, expected_version=found.version)

    async def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        """Write ``key`` bound to this lease; SessionLost if the lease is gone (noticed here or before)."""
        lease_id = self.lease_id
        try:
            return await self._store.put(key, value, expected_version=expected_version, lease=lease_id)
        except LeaseExpired as e:
            self.mark_lost(f"the store refused the lease: {e}")
            raise SessionLost(str(e)) from e

    # --- internals ----------------------------------------------------------------------------
    async def _grant(self) -> None:
        lease = await self._store.lease(self.ttl)
        self._lease = lease
        self.generation += 1
        self.lost.clear()
        self.lost_reason = ""
        self._monitor = asyncio.create_task(self._watch_lease(lease), name=f"session-lease-{lease.id:x}")

    async def _put_registered(self, key: str, value: bytes, old_lease: int | None) -> int:
        try:
            return await self.put(key, value, expected_version=0)
        except VersionConflict:
            found = await self._store.get(key)
            if found is None:  # vanished in between: try once more, then give up
                return await self.put(key, value, expected_version=0)
            if old_lease is None or found.lease != old_lease:
                raise RegistrationConflict(f"{key} is held by another lease ({found.lease})") from None
            return await self.put(key, value, expected_version=found.version)

    async def _watch_lease(self, lease: Lease) -> None:
        # The Lease protocol offers no event to wait on: poll the flag (a property read, no I/O).
        while lease.alive:  # noqa: ASYNC110
            await asyncio.sleep(self.check_interval)
        if self._lease is lease:
            self.mark_lost("the store reports the lease is no longer alive")

    async def _stop_monitor(self) -> None:
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
