"""The broker: one process's view of the cluster — topics, the partition logs it owns, producer ids."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.config import BrokerConfig
from brokers.dynamic_config import DynamicConfigs
from brokers.groups.consumer_shard import consumer_extension
from brokers.groups.coordinator import GroupCoordinator
from brokers.log.manager import LogManager
from brokers.log.partition import LogConfig, PartitionLog, Tiering
from brokers.log.types import LogError, NotLeader
from brokers.routing import Routing
from brokers.security.acl_store import AclStore
from brokers.security.authorizer import AclAuthorizer, AllowAll, Authorizer
from brokers.single_routing import SingleBroker
from brokers.topics import TopicError, TopicLimits, TopicRegistry
from brokers.transactions.coordinator import TransactionCoordinator
from metadata.api import Lease, MetadataError, MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import BrokerRecord, PartitionState, TopicRecord, decode_int, encode_int
from storage.ledger.api import LedgerClient, LedgerError, NoSuchLedger
from storage.objectstore.api import ObjectStore
from storage.offload.offloader import OffloadConfig, Offloader
from storage.offload.state import PartitionMoved
from storage.segment.cache import BlockCache
from storage.segment.format import partition_prefix

log = logging.getLogger(__name__)
PRODUCER_ID_BLOCK = 1000
WARM_UP_PAUSE_S = 0.005
"""Pause between two background loads after start (at most ~200 a second), so clients keep being served."""
WARM_UP_RETRY_S = 30.0
"""A partition whose background load failed (bookies down, say) is tried again after this long."""


class Broker:
    """Holds the broker's collaborators; handlers reach everything through it."""

    def __init__(
        self, config: BrokerConfig, store: MetadataStore, ledgers: LedgerClient, objects: ObjectStore | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.keys = Keys(config.cluster)
        self.dynamic = DynamicConfigs(store, self.keys, config, self._config_changed)
        """Dynamic broker configs (AlterConfigs); ``config`` is replaced by the effective one on every change."""
        self.acls = AclStore(store, self.keys)
        """The cluster's ACLs, followed by a watch (started only when an authorizer is configured)."""
        self.authorizer: Authorizer = (
            AclAuthorizer(self.acls, config.super_user_set, config.allow_everyone_if_no_acl_found)
            if config.authorizer_class_name else AllowAll()
        )
        self.ledgers = ledgers
        self.tiering: Tiering | None = None
        """Offloader, object store and block cache (None without an object store: ledgers only)."""
        if objects is not None:
            self.tiering = Tiering(
                objects,
                BlockCache(config.tiered_block_cache_bytes),
                Offloader(
                    store,
                    self.keys,
                    ledgers,
                    objects,
                    config=OffloadConfig(owner_bytes_max=config.offload_owner_bytes_max),
                ),
                offload=config.offload_enable,
                high_water_bytes=config.offload_high_water_bytes,
            )
        self.topics = TopicRegistry(
            store,
            self.keys,
            TopicLimits(config.max_partitions_per_topic, config.max_partitions_per_broker, config.max_topics),
        )
        self.logs = LogManager(
            store,
            self.keys,
            ledgers,
            LogConfig(
                rollover_bytes=config.ledger_rollover_bytes,
                rollover_ms=config.ledger_rollover_ms,
                ensemble_size=config.ledger_ensemble_size,
                write_quorum=config.ledger_write_quorum,
                ack_quorum=config.ledger_ack_quorum,
                tail_cache_bytes=config.tail_cache_bytes,
                tail_cache_total_bytes=config.tail_cache_total_bytes,
            ),
            self.tiering,
        )
        self.routing: Routing = SingleBroker(self)
        """Who leads what, which brokers are live, who the controller is (a cluster broker replaces it)."""
        self.groups = GroupCoordinator.for_broker(self)
        self.groups.extensions.append(consumer_extension(self))  # KIP-848 consumer groups
        self.transactions = TransactionCoordinator.for_broker(self)
        """Transactional ids on ``__transaction_state`` (brokers/transactions/), following ownership like groups."""
        self.cluster_id = ""
        self._lease: Lease | None = None
        self._pid_next = 0
        self._pid_end = 0
        self._pid_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Load cluster identity and topics, and register this broker under a lease.

        Partition logs are not loaded here: each is loaded (its tail recovered, fenced) when first used, so
        start-up time does not grow with idle partitions. Partitions whose stored state shows work to do
        are loaded in the background afterwards (``load_pending``)."""
        self.cluster_id = await self._cluster_id()
        await self.dynamic.start()
        if self.authorizer.enabled:
            await self.acls.start()
        await self.topics.load()
        await self.groups.start()
        await self.transactions.start()
        self._spawn(self.logs.run_age_rollover())
        if self.tiering is not None:
            self._spawn(self._run_retention())
            self._spawn(self._run_orphan_gc())
        if not self.logs.take_on_first_use:
            return  # a cluster broker (brokers/clustered.py): membership registers it, the follower loads logs
        self._spawn(self._run_load_pending())
        self._lease = await self.store.lease(10.0)
        host, port = self.config.advertised
        await self.store.put(
            self.keys.broker(self.config.node_id),
            BrokerRecord(self.config.node_id, host, port).encode(),
            lease=self._lease.id,
        )

    def _config_changed(self, config: BrokerConfig) -> None:
        """A dynamic broker config changed: readers of ``config`` see the new values from now on."""
        self.config = config

    async def _cluster_id(self) -> str:
        key = self.keys.cluster_id()
        found = await self.store.get(key)
        if found is not None:
            return found.value.decode()
        new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        try:
            await self.store.put(key, new.encode(), expected_version=0)
        except VersionConflict:
            found = await self.store.get(key)
            if found is None:
                raise RuntimeError("cluster id vanished while being created") from None
            return found.value.decode()
        return new

    async def stop(self) -> None:
        """Close every owned log cleanly, then leave the cluster."""
        for task in list(self._background):
            task.cancel()
        await self.transactions.stop()
        await self.groups.stop()
        await self.dynamic.stop()
        await self.acls.stop()
        await self.logs.close()
        if self.tiering is not None:
            await self.tiering.offloader.close()
            await self.tiering.cache.close()
        if self._lease is not None:
            await self._lease.revoke()
            self._lease = None

    # --- partition logs handlers serve ---------------------------------------------------------
    async def serving_log(self, topic_id: str, partition: int) -> PartitionLog:
        """The partition's log if this broker serves it now, else NotLeader naming the current leader.

        The one accessor handlers use. Embedded: the log, loaded on first use. Cluster
        (``logs.take_on_first_use`` off): only while routing says this broker serves the partition and its
        log is loaded (taken, not fenced)."""
        if not self.routing.serving(topic_id, partition):
            raise self.not_leader(topic_id, partition, "this broker does not lead the partition")
        try:
            return await self.logs.get(topic_id, partition)
        except NotLeader as e:
            if e.leader is not None:
                raise
            raise self.not_leader(topic_id, partition, str(e)) from None

    def not_leader(self, topic_id: str, partition: int, reason: str) -> NotLeader:
        """NOT_LEADER_OR_FOLLOWER with the partition's current leader and its endpoint, as routing knows them."""
        leader = self.routing.leader(topic_id, partition)
        endpoint = None if leader is None else self.routing.endpoint(leader.node_id)
        return NotLeader(reason, leader, endpoint)

    # --- producer ids ------------------------------------------------------------------------
    async def allocate_producer_id(self) -> int:
        """A cluster-unique producer id, taken from blocks reserved in metadata by compare-and-swap."""
        async with self._pid_lock:
            if self._pid_next >= self._pid_end:
                key = self.keys.counter("producer_id")
                while True:
                    found = await self.store.get(key)
                    start = decode_int(found.value) if found else 0
                    try:
                        await self.store.put(
                            key, encode_int(start + PRODUCER_ID_BLOCK), expected_version=found.version if found else 0
                        )
                    except VersionConflict:
                        continue
                    self._pid_next, self._pid_end = start, start + PRODUCER_ID_BLOCK
                    break
            pid = self._pid_next
            self._pid_next += 1
            return pid

    # --- topics ------------------------------------------------------------------------------
    async def topic_for_produce_or_fetch(self, name: str) -> TopicRecord | None:
        """The topic, auto-creating it when the broker allows that (None when it does not or refuses)."""
        topic = self.topics.get(name)
        if topic is None and self.config.auto_create_topics:
            try:
                topic = await self.auto_create_topic(name)
            except TopicError:
                topic = self.topics.get(name)
        return topic

    async def auto_create_topic(self, name: str) -> TopicRecord:
        """Create ``name`` with the broker's defaults (``num.partitions``, ``default.replication.factor``);
        raises TopicError when a limit or the name refuses it (a concurrent creation is not an error)."""
        try:
            config = self.config
            return await self.topics.create(name, config.num_partitions, config.default_replication_factor, {})
        except TopicError as e:
            found = self.topics.get(name)
            if found is None or e.code != ErrorCode.topic_already_exists:
                raise
            return found

    # --- background loading of partitions with work to do -------------------------------------
    async def load_pending(self, pause_s: float = WARM_UP_PAUSE_S) -> tuple[int, list[tuple[str, int]]]:
        """Load, one at a time, every partition whose stored state shows work only a loaded log does: an open
        ledger (recovered and closed now rather than at first use), and with tiered storage any data (closed
        ledgers to offload, segments retention may delete; orphan GC walks loaded logs too). Partitions never
        written stay unloaded. The embedded broker owns every partition; once partitions have owners (issue 10)
        this must load only this broker's. Returns (how many were loaded, the ones whose load failed)."""
        loaded, failed = 0, []
        for topic in self.topics.all():
            try:
                items = await self.store.list(self.keys.partitions_prefix(topic.topic_id))
            except MetadataError as e:
                log.warning("could not list the partitions of %s: %s", topic.name, e)
                continue
            prefix = len(self.keys.partitions_prefix(topic.topic_id))
            for item in items:
                partition = int(item.key[prefix:])
                if not self._has_pending_work(PartitionState.decode(item.value)):
                    continue
                if self.topics.by_id(topic.topic_id) is None:
                    break  # deleted meanwhile
                if self.logs.loaded(topic.topic_id, partition) is not None:
                    continue
                try:
                    await self.logs.get(topic.topic_id, partition)
                    loaded += 1
                except (LogError, MetadataError, LedgerError) as e:
                    log.warning("background load of %s/%d failed (retried later or at first use): %s",
                                topic.name, partition, e)
                    failed.append((topic.topic_id, partition))
                await asyncio.sleep(pause_s)
        return loaded, failed

    def _has_pending_work(self, state: PartitionState) -> bool:
        if any(not ref.closed for ref in state.ledgers):
            return True
        return self.tiering is not None and state.end_offset > state.log_start_offset

    async def _run_load_pending(self) -> None:
        """Background task after start: ``load_pending``, then retry the failed ones until none is left."""
        started = asyncio.get_running_loop().time()
        loaded, failed = await self.load_pending()
        log.info("loaded %d partitions with pending work in the background in %.1f s (%d of %d partitions "
                 "loaded; %d failed)", loaded, asyncio.get_running_loop().time() - started,
                 self.logs.loaded_count, self.topics.partition_count, len(failed))
        while failed:
            await asyncio.sleep(WARM_UP_RETRY_S)
            retry, failed = failed, []
            for topic_id, partition in retry:
                topic = self.topics.by_id(topic_id)
                if topic is None or partition >= topic.partitions or self.logs.loaded(topic_id, partition):
                    continue
                try:
                    await self.logs.get(topic_id, partition)
                except (LogError, MetadataError, LedgerError) as e:
                    log.warning("background load of %s/%d failed again: %s", topic.name, partition, e)
                    failed.append((topic_id, partition))

    async def delete_topic(self, name: str) -> TopicRecord:
        """Delete a topic: metadata first, then its logs; its ledgers and segments are deleted in the
        background."""
        topic, ledger_ids = await self.topics.delete(name)
        ledger_ids = sorted(set(ledger_ids) | set(await self.logs.drop_topic(topic.topic_id)))
        self._spawn(self._delete_ledgers(ledger_ids))
        if self.tiering is not None:
            self._spawn(self._delete_segments(topic))
        return topic

    async def _delete_segments(self, topic: TopicRecord) -> None:
        """A deleted topic's segment and offload-intent keys, then every object under its partitions."""
        if self.tiering is None:
            return
        for p in range(topic.partitions):
            try:
                for prefix in (
                    self.keys.segments_prefix(topic.topic_id, p),
                    self.keys.offload_intents_prefix(topic.topic_id, p),
                ):
                    for found in await self.store.list(prefix):
                        await self.store.delete(found.key)
                objects = self.tiering.objects
                names = [m.key for m in await objects.list(partition_prefix(self.keys.cluster, topic.topic_id, p))]
                await objects.delete(names)
            except Exception:
                log.exception("could not delete the segments of %s/%d; orphan GC removes them", topic.name, p)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delete_ledgers(self, ledger_ids: list[int]) -> None:
        for ledger_id in ledger_ids:
            try:
                await self.ledgers.delete_ledger(ledger_id)
            except NoSuchLedger:
                pass  # offloaded (and deleted) already
            except LedgerError as e:
                log.warning("could not delete ledger %d: %s", ledger_id, e)

    # --- retention -----------------------------------------------------------------------------
    async def enforce_retention(self) -> int:
        """One retention pass over the owned logs (retention.ms, retention.bytes, the log start offset);
        returns how many segments were deleted."""
        deleted = 0
        for plog in self.logs.all():
            topic = self.topics.by_id(plog.topic_id)
            if topic is None:
                continue
            configs = self.dynamic.topic_configs(topic.configs)  # the topic's, else the broker's (live)
            delete = "delete" in configs["cleanup.policy"]
            try:
                result = await plog.enforce_retention(
                    retention_ms=int(configs["retention.ms"]) if delete else -1,
                    retention_bytes=int(configs["retention.bytes"]) if delete else -1,
                )
            except Exception:
                log.exception("retention of %s/%d failed", topic.name, plog.partition)
                continue
            deleted += 0 if result is None else len(result.removed)
        return deleted

    async def _run_retention(self) -> None:
        """Background task: a retention pass every ``log.retention.check.interval.ms``."""
        while True:
            await asyncio.sleep(self.config.retention_check_interval_ms / 1000)
            await self.enforce_retention()

    # --- orphan GC -----------------------------------------------------------------------------
    async def collect_orphans(self) -> int:
        """One orphan-GC pass over the owned logs (objects no segment key or live intent names, left by
        crashes); returns how many objects were deleted."""
        if self.tiering is None:
            return 0
        deleted = 0
        for plog in self.logs.all():
            try:
                deleted += len(await self.tiering.offloader.collect_orphans(plog.topic_id, plog.partition))
            except PartitionMoved:
                continue  # taken over meanwhile: the new owner collects
            except Exception:
                log.exception("orphan GC of %s/%d failed", plog.topic_id, plog.partition)
        return deleted

    async def _run_orphan_gc(self) -> None:
        """Background task: an orphan-GC pass every ``offload.gc.interval.ms``."""
        while True:
            await asyncio.sleep(self.config.offload_gc_interval_ms / 1000)
            await self.collect_orphans()
