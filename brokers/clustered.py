"""Cluster mode (``tidelog broker``): the composition root that wires one Broker into a cluster.

Beside brokers/embedded.py (one process holding everything), a cluster broker holds nothing of its own:

* metadata on etcd (every endpoint of ``--metadata``; the client fails over) or PostgreSQL (metadata/open.py);
* ledgers on the bookies registered in etcd (BookieWatcher feeds a QuorumLedgerClient; 3/3/2 by default,
  fewer while fewer bookies are live: brokers/log/ensemble.py);
* sealed ledgers in the shared object store;
* a LeasedSession (ttl ``broker.session.timeout.ms``) under which it registers (BrokerMembership), campaigns
  for controller (Controller), and owns partitions (owner keys of PartitionOwnership);
* a Follower taking and releasing partitions as the controller assigns them, ClusterRouting answering
  handlers from the watch-fed views, the GroupCoordinator following ownership of ``__consumer_offsets``,
  and the TopicRegistry following ``topics/``.

SIGTERM is a controlled shutdown: the broker registers ``draining/{id}`` under its lease (the controller then
assigns it nothing), waits until it owns no partition (at most ``controlled.shutdown.timeout.ms``, and not at
all when no other broker could take them), then stops serving, closes its logs and revokes its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import replace

from brokers.broker import Broker
from brokers.cli.startup import settle_gc
from brokers.cluster.controller import Controller
from brokers.cluster.follower import Follower, Takeover
from brokers.cluster.handover import OwnersView
from brokers.cluster.membership import (
    BrokerMembership,
    DuplicateNodeId,
    LiveBrokers,
    allocate_node_id,
    initialise_cluster,
)
from brokers.cluster.ownership import PartitionOwnership, Taken
from brokers.cluster.routing import ClusterRouting
from brokers.config import BrokerConfig, ConfigError, parse_hostport
from brokers.kafka_listeners import KafkaListeners
from brokers.observability import cluster_metrics
from brokers.observability.health import admin_server
from metadata.api import MetadataError, MetadataStore
from metadata.keys import Keys
from metadata.open import open_store
from metadata.session import LeasedSession
from storage.bookie.registry import BookieWatcher
from storage.ledger.client import QuorumLedgerClient
from storage.ledger.placement import placement_named
from storage.objectstore import open_object_store
from storage.objectstore.api import ObjectStore

log = logging.getLogger("tidelog")

DRAIN_POLL_S = 0.1


class ClusterStartError(RuntimeError):
    """The broker cannot join the cluster (etcd unreachable, node id taken)."""


class _Partitions:
    """The follower's PartitionHost: the broker's logs plus the group shards of ``__consumer_offsets`` and the
    transaction coordinator's shards of ``__transaction_state``."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def adopt(self, taken: Taken) -> None:
        await self._broker.logs.adopt(taken.topic_id, taken.partition, taken.epoch, taken.state_version)
        if taken.topic_id == self._broker.groups.topic_id:
            self._broker.groups.on_taken(taken.partition)
        if taken.topic_id == self._broker.transactions.topic_id:
            self._broker.transactions.on_taken(taken.partition)

    async def release(self, topic_id: str, partition: int) -> None:
        if topic_id == self._broker.groups.topic_id:
            await self._broker.groups.on_released(partition)
        if topic_id == self._broker.transactions.topic_id:
            await self._broker.transactions.on_released(partition)
        await self._broker.logs.release(topic_id, partition)

    def depose_all(self, reason: str) -> None:
        self._broker.logs.depose_all(reason)

    async def release_all(self) -> None:
        for plog in self._broker.logs.all():
            try:
                await self.release(plog.topic_id, plog.partition)
            except Exception:
                log.exception("closing %s/%d failed", plog.topic_id, plog.partition)


async def connect_metadata(endpoints: list[str]) -> MetadataStore:
    """One client over every etcd endpoint (it fails over between members; metadata/etcd.py grpc_target), or
    the PostgreSQL store of a single postgresql:// URL (metadata/open.py); ClusterStartError if none answers."""
    if len(endpoints) == 1 and endpoints[0].startswith(("postgresql://", "postgres://")):
        url = endpoints[0]
    else:
        url = "etcd://" + ",".join(u.partition("://")[2] for u in endpoints)
    try:
        return await open_store(url)
    except (MetadataError, OSError, ValueError) as e:
        raise ClusterStartError(f"the metadata store {_redacted(url)} did not answer: {e}") from e


def _redacted(url: str) -> str:
    """``url`` without a password (postgresql://user:secret@host/db -> postgresql://user:***@host/db)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"


def _count_takeover(t: Takeover) -> None:
    """The takeover in the ownership metrics: for a failover or move, the time the partition was unowned until
    served here; for a start, the take and load."""
    seconds = t.unowned_s if t.unowned_s is not None else t.load_s
    cluster_metrics.partition_taken(t.topic, t.partition, t.reason, seconds)


async def run_clustered(
    config: BrokerConfig, endpoints: list[str], *, node_id: int | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run one cluster broker until SIGTERM/SIGINT (controlled shutdown) or cancellation."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = await connect_metadata(endpoints)
    keys = Keys(config.cluster)
    try:
        objects = open_object_store(config.object_store)
    except ValueError as e:
        await store.close()
        raise ConfigError(f"--object-store: {e}") from None
    session = LeasedSession(store, config.broker_session_timeout_ms / 1000)
    ledgers: QuorumLedgerClient | None = None
    bookies: BookieWatcher | None = None
    try:
        await initialise_cluster(store, keys)
        await session.start()
        if node_id is None:
            node_id = await allocate_node_id(store, keys)
        config = replace(config, node_id=node_id)
        ledgers = QuorumLedgerClient(store, keys, {}, placement=placement_named(config.ledger_placement))
        bookies = BookieWatcher(store, keys, ledgers)
        await bookies.start()
        await _serve(config, store, keys, session, ledgers, objects, stop, ready)
    finally:
        if bookies is not None:
            await bookies.stop()
        if ledgers is not None:
            await ledgers.close()
        await session.close()  # revoke: any key still bound to the lease (owners, registration) vanishes now
        await objects.close()
        await store.close()
        log.info("stopped")


async def _serve(
    config: BrokerConfig,
    store: MetadataStore,
    keys: Keys,
    session: LeasedSession,
    ledgers: QuorumLedgerClient,
    objects: ObjectStore,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    node_id = config.node_id
    broker = Broker(config, store, ledgers, objects)
    broker.logs.take_on_first_use = False
    live = LiveBrokers(store, keys)
    owners = OwnersView(store, keys)
    controller = Controller(store, keys, session, node_id, live, rejoin_delay=config.broker_rejoin_delay_ms / 1000)
    host = _Partitions(broker)

    def topic_name(topic_id: str) -> str | None:
        topic = broker.topics.by_id(topic_id)
        return None if topic is None else topic.name

    follower = Follower(
        node_id, session, PartitionOwnership(store, keys, node_id, session), owners,
        lambda: controller.assignments.items, host, topic_name=topic_name, broker_departed=live.departed,
        on_taken=_count_takeover, on_released=cluster_metrics.partition_released,
    )
    routing = ClusterRouting(node_id, live, owners, controller.election, follower.serving, lambda: session.alive)
    follower.set_on_change(routing.bump)
    controller.assignments.add_listener(follower.kick)
    broker.routing = routing
    broker.groups.routing = routing
    broker.transactions.routing = routing
    listeners = KafkaListeners(broker)
    server = listeners.primary
    admin = admin_server(broker, server, lambda: session.alive)
    membership = BrokerMembership(store, keys, session, host=config.advertised[0], port=config.advertised[1],
                                  node_id=node_id, listeners=listeners.advertised)
    started: list[object] = []
    try:
        await broker.start()  # topics, the offsets topic (created by the first broker), no partition loaded
        started.append(broker)
        await live.start()
        await owners.start()
        await controller.start()
        started.append(controller)
        broker.topics.follow(controller.topics)
        if config.admin_listen:
            admin_host, admin_port = parse_hostport(config.admin_listen, "admin.listen")
            try:
                await admin.start(admin_host, admin_port)
            except OSError as e:
                raise ConfigError(f"admin.listen {config.admin_listen}: {e}") from None
        port = (await listeners.start())[0]
        try:
            await membership.join()
        except DuplicateNodeId as e:
            raise ClusterStartError(str(e)) from None
        membership.guard(live)
        await follower.start()
        log.info("broker %d listening on %s:%d (cluster %s, advertised %s:%d)", node_id, config.host, port,
                 broker.cluster_id, *config.advertised)
        settle_gc()
        if ready is not None:
            ready.set()
        await stop.wait()
        await _drain(node_id, keys, session, live, controller, follower, config.controlled_shutdown_timeout_ms)
    finally:
        await admin.stop()
        await listeners.stop()
        await follower.stop()
        if controller in started:
            await controller.stop()
        await host.release_all()  # closed cleanly before the lease goes: the next owners recover nothing
        if broker in started:
            await broker.stop()
        await owners.stop()
        await live.stop()


async def _drain(
    node_id: int, keys: Keys, session: LeasedSession, live: LiveBrokers, controller: Controller,
    follower: Follower, timeout_ms: int,
) -> None:
    """Controlled shutdown: ask the controller to move every partition away, and wait until they are gone."""
    started = time.monotonic()
    try:
        await session.register(keys.draining(node_id), b"")
    except MetadataError as e:
        log.warning("controlled shutdown: could not mark broker %d draining (%r); closing at once", node_id, e)
        return
    log.info("controlled shutdown: broker %d is draining %d partitions", node_id, len(follower.owned()))
    deadline = started + timeout_ms / 1000
    while follower.owned() and time.monotonic() < deadline and session.alive:
        draining = set(controller.draining.items.values()) | {node_id}
        if not any(b not in draining for b in live.brokers):
            log.info("controlled shutdown: no other broker can take the partitions; closing at once")
            return
        await asyncio.sleep(DRAIN_POLL_S)
    left = follower.owned()
    log.info("controlled shutdown of broker %d: %d partitions left after %.1f s", node_id, len(left),
             time.monotonic() - started)
