"""Broker membership: each broker registers ``brokers/{node_id}`` under its session lease; every broker keeps
a watch-fed view of the live ones.

* The registration is a BrokerRecord (node id, advertised host and port, rack) bound to the broker's
  LeasedSession, whose ttl is ``broker.session.timeout.ms`` (Kafka's name; default 9000 ms as in Kafka).
  When the broker dies its lease expires and the key vanishes; a clean shutdown revokes it at once.
* Node ids are given (``--node-id``) or allocated from ``counters/broker_id`` by compare-and-swap, starting
  above Kafka's ``reserved.broker.max.id`` (1000) so allocated ids never collide with configured ones.
  Registering an id another live broker holds raises DuplicateNodeId (the key must be absent).
* ``LiveBrokers`` is a PrefixCache of the registrations (no etcd round trip per Metadata request). A broker
  that sees its *own* key vanish while its session believes it alive (the lease was revoked or expired on
  the server before the keepalive noticed) marks the session lost: ``BrokerMembership.guard``.
* ``initialise_cluster`` creates the cluster id once (the first broker wins; the rest read it).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping

from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import BrokerRecord, decode_int, encode_int
from metadata.prefix_cache import CacheView, PrefixCache
from metadata.session import LeasedSession, RegistrationConflict

DEFAULT_SESSION_TIMEOUT_MS = 9000
"""``broker.session.timeout.ms``: the ttl of a broker's lease (Kafka's default)."""
FIRST_ALLOCATED_NODE_ID = 1001
"""Allocated ids start above Kafka's ``reserved.broker.max.id`` (1000); configured ids stay at or below it."""
NODE_ID_COUNTER = "broker_id"


class DuplicateNodeId(RegistrationConflict):
    """Another live broker is registered with this node id."""


async def initialise_cluster(store: MetadataStore, keys: Keys) -> str:
    """The cluster id, created by the first broker to ask (idempotent, safe under races)."""
    key = keys.cluster_id()
    found = await store.get(key)
    if found is not None:
        return found.value.decode()
    new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    try:
        await store.put(key, new.encode(), expected_version=0)
    except VersionConflict:
        found = await store.get(key)
        if found is None:
            raise RuntimeError("cluster id vanished while being created") from None
        return found.value.decode()
    return new


async def allocate_node_id(store: MetadataStore, keys: Keys, *, first: int = FIRST_ALLOCATED_NODE_ID) -> int:
    """A node id no other broker was given by this counter (compare-and-swap on ``counters/broker_id``)."""
    key = keys.counter(NODE_ID_COUNTER)
    while True:
        found = await store.get(key)
        node_id = first if found is None else max(first, decode_int(found.value) + 1)
        try:
            await store.put(key, encode_int(node_id), expected_version=0 if found is None else found.version)
        except VersionConflict:
            continue
        return node_id


class BrokerMembership:
    """This broker's registration under its session (module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        session: LeasedSession,
        *,
        host: str,
        port: int,
        rack: str | None = None,
        node_id: int | None = None,
        listeners: tuple[tuple[str, str, int], ...] = (),
    ) -> None:
        self._listeners = listeners
        self._store = store
        self._keys = keys
        self._session = session
        self._host, self._port, self._rack = host, port, rack
        self._node_id = node_id
        self.record: BrokerRecord | None = None

    @property
    def node_id(self) -> int:
        if self._node_id is None:
            raise RuntimeError("node id not known before join")
        return self._node_id

    async def join(self) -> BrokerRecord:
        """Allocate a node id if none was given, then register (DuplicateNodeId if the id is taken)."""
        if self._node_id is None:
            self._node_id = await allocate_node_id(self._store, self._keys)
        record = BrokerRecord(self._node_id, self._host, self._port, self._rack, self._listeners)
        try:
            await self._session.register(self._keys.broker(self._node_id), record.encode())
        except RegistrationConflict as e:
            raise DuplicateNodeId(f"node id {self._node_id} is registered by another live broker") from e
        self.record = record
        return record

    async def leave(self) -> None:
        """Remove the registration now (the session stays; ``LeasedSession.close`` ends it)."""
        if self.record is not None:
            await self._session.unregister(self._keys.broker(self.record.node_id))
            self.record = None

    def guard(self, view: LiveBrokers) -> None:
        """Mark the session lost as soon as ``view`` sees this broker's registration vanish."""

        def check(changed: frozenset[str]) -> None:
            record = self.record
            if record is not None and str(record.node_id) in changed and record.node_id not in view.brokers:
                if self._session.alive:
                    self._session.mark_lost(f"registration of broker {record.node_id} vanished from the store")

        view.add_listener(check)


def _decode_broker(suffix: str, value: bytes) -> BrokerRecord:
    record = BrokerRecord.decode(value)
    if str(record.node_id) != suffix:
        raise ValueError(f"broker record {record.node_id} stored under {suffix!r}")
    return record


class LiveBrokers(CacheView[BrokerRecord]):
    """The registered (live) brokers by node id, kept current by a watch."""

    def __init__(
        self, store: MetadataStore, keys: Keys, *, on_change: Callable[[frozenset[str]], None] | None = None
    ) -> None:
        super().__init__(
            PrefixCache(store, keys.brokers_prefix(), _decode_broker, on_change=on_change, name="live brokers")
        )

    @property
    def brokers(self) -> Mapping[int, BrokerRecord]:
        """By node id; rebuilt only when a registration changes (do not mutate)."""
        return self.derived("brokers", lambda items: {r.node_id: r for r in items.values()})

    def registered_at(self, node_id: int) -> int | None:
        """The store revision of a live broker's registration (a key written after it is of this session)."""
        return self._cache.version_of(str(node_id))

    def departed(self, node_id: int) -> float | None:
        """When (time.monotonic()) this view saw a broker's registration go, while it stays gone."""
        gone = self._cache.departed(str(node_id))
        return None if gone is None else gone[1]

    async def wait_for(self, predicate: Callable[[Mapping[int, BrokerRecord]], bool]) -> None:
        """Wait until ``predicate(brokers by id)`` holds (bound it with ``asyncio.timeout``)."""
        await self._cache.wait_until(lambda items: predicate({r.node_id: r for r in items.values()}))
