"""The group coordinator: groups mapped to ``__consumer_offsets`` partitions, one shard per owned partition.

A group's partition is Kafka's (``Utils.abs(groupId.hashCode) % partitions``) and its coordinator is that
partition's owner — in embedded mode this broker, for every partition. The topic is created at start-up
if missing; each owned partition is then replayed in the background, and until its shard is loaded the
group APIs answer COORDINATOR_LOAD_IN_PROGRESS (NOT_COORDINATOR for partitions owned elsewhere).

In a cluster (``routing`` set by the composition root) the shards follow partition ownership instead:
``start`` loads nothing, ``on_taken(p)`` loads the shard of a partition this broker has just taken,
``on_released(p)`` closes it, and the coordinator of a group is the owner of its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from brokers.groups import offsets
from brokers.groups.base import Group, GroupConfig, GroupDescription, GroupError, now_ms
from brokers.groups.classic import ClassicGroup
from brokers.groups.consumer import ConsumerGroup
from brokers.groups.consumer_shard import ConsumerGroups
from brokers.groups.member import JoinRequest, JoinResult, SyncResult
from brokers.groups.records import encode_offset_key, partition_for
from brokers.groups.shard import GroupShard, ShardExtension
from brokers.log.partition import LogError
from brokers.topics import TopicError
from metadata.api import MetadataError
from storage.ledger.api import LedgerError

if TYPE_CHECKING:
    from brokers.broker import Broker
    from brokers.routing import Routing

log = logging.getLogger(__name__)
OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_TOPIC_CONFIGS = {"cleanup.policy": "compact", "compression.type": "producer", "segment.bytes": "104857600"}
LOAD_RETRY_MAX_S = 5.0
REROUTES = 3
"""A classic request re-routed this many times at most (a group converting between protocols meanwhile)."""


@dataclass(frozen=True, slots=True)
class ListedGroup:
    """A group as ListGroups reports it."""

    group_id: str
    protocol_type: str
    state: str
    group_type: str


class GroupCoordinator:
    """Routes group requests to the shard of the group's offsets partition."""

    def __init__(self, broker: Broker, config: GroupConfig, num_partitions: int) -> None:
        self._broker = broker
        self.config = config
        self._wanted_partitions = num_partitions
        self.partitions = 0
        """The offsets topic's partition count (fixed once the topic exists)."""
        self.shards: dict[int, GroupShard] = {}
        self.extensions: list[Callable[[GroupShard], ShardExtension]] = []
        """Per-shard extensions for other group types (KIP-848 registers its record types here)."""
        self._topic_id = ""
        self._loading: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.routing: Routing | None = None
        """Cluster mode: shards follow ownership (on_taken/on_released); None: this broker owns them all."""

    @classmethod
    def for_broker(cls, broker: Broker) -> GroupCoordinator:
        """A coordinator configured from the broker's settings."""
        c = broker.config
        config = GroupConfig(
            initial_rebalance_delay_ms=c.group_initial_rebalance_delay_ms,
            min_session_timeout_ms=c.group_min_session_timeout_ms,
            max_session_timeout_ms=c.group_max_session_timeout_ms,
            max_size=c.group_max_size,
            offset_metadata_max_bytes=c.offset_metadata_max_bytes,
            offsets_retention_ms=c.offsets_retention_minutes * 60_000,
            offsets_retention_check_interval_ms=c.offsets_retention_check_interval_ms,
            snapshot_records=c.offsets_snapshot_records,
        )
        return cls(broker, config, c.offsets_topic_num_partitions)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the offsets topic if missing and start loading every partition this broker owns."""
        topics = self._broker.topics
        topic = topics.get(OFFSETS_TOPIC)
        if topic is None:
            try:
                topic = await topics.create(
                    OFFSETS_TOPIC, self._wanted_partitions, self._broker.config.default_replication_factor,
                    dict(OFFSETS_TOPIC_CONFIGS),
                )
                log.info("created %s with %d partitions", OFFSETS_TOPIC, topic.partitions)
            except TopicError:
                topic = topics.get(OFFSETS_TOPIC)
                if topic is None:
                    raise
        self.partitions = topic.partitions
        self._topic_id = topic.topic_id
        if self.routing is None:
            for p in range(self.partitions):
                if self.owns(p):
                    self._loading[p] = self._spawn(self._load(p))
        self._spawn(self._expire_offsets_periodically())

    @property
    def topic_id(self) -> str:
        """The offsets topic's id ("" before start)."""
        return self._topic_id

    def on_taken(self, partition: int) -> None:
        """Cluster mode: this broker took offsets partition ``partition``; replay its shard in the background."""
        if partition in self.shards or partition in self._loading:
            return
        self._loading[partition] = self._spawn(self._load(partition))

    async def on_released(self, partition: int) -> None:
        """Cluster mode: the partition is being handed over (or this broker fenced itself); close its shard."""
        task = self._loading.pop(partition, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        shard = self.shards.pop(partition, None)
        if shard is not None:
            await shard.close()

    async def _load(self, partition: int) -> None:
        backoff = 0.1
        while True:
            try:
                plog = await self._broker.logs.get(self._topic_id, partition)
                shard = GroupShard(partition, plog, self.config, self._delete_ledgers, self.extensions)
                await shard.load()
            except Exception as e:  # storage trouble, or a bug: neither may leave the partition unloaded for good
                expected = isinstance(e, (LogError, LedgerError, MetadataError, OSError))
                log.warning(
                    "loading offsets partition %d failed (retrying in %.1fs): %s", partition, backoff, e,
                    exc_info=not expected,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LOAD_RETRY_MAX_S)
                continue
            self.shards[partition] = shard
            self._loading.pop(partition, None)
            return

    async def wait_loaded(self) -> None:
        """Until every owned partition is loaded (tests, benchmarks)."""
        while self._loading:
            await asyncio.wait(list(self._loading.values()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for shard in self.shards.values():
            await shard.close()
        self.shards.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _delete_ledgers(self, ledger_ids: list[int]) -> None:
        """Ledgers a snapshot dropped from an offsets partition: deleted from the bookies in the background."""
        self._spawn(self._delete_ledgers_now(ledger_ids))

    async def _delete_ledgers_now(self, ledger_ids: list[int]) -> None:
        for ledger_id in ledger_ids:
            try:
                await self._broker.ledgers.delete_ledger(ledger_id)
            except LedgerError as e:
                log.warning("could not delete ledger %d: %s", ledger_id, e)

    # --- routing -------------------------------------------------------------------------------
    def owns(self, partition: int) -> bool:
        """Whether this broker owns the offsets partition (embedded mode: all of them)."""
        if self.routing is not None:
            return 0 <= partition < self.partitions and self.routing.serving(self._topic_id, partition)
        return 0 <= partition < self.partitions

    def partition_for(self, group_id: str) -> int:
        return partition_for(group_id, self.partitions)

    def shard_for(self, group_id: str) -> GroupShard:
        """The shard of ``group_id``; raises GroupError (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS)."""
        if self.partitions == 0:
            raise GroupError(ErrorCode.coordinator_not_available, "the group coordinator is starting")
        partition = self.partition_for(group_id)
        shard = self.shards.get(partition)
        if shard is not None and shard.active:
            return shard
        if partition in self._loading:
            raise GroupError(ErrorCode.coordinator_load_in_progress, f"offsets partition {partition} is loading")
        raise GroupError(ErrorCode.not_coordinator, f"offsets partition {partition} is not owned here")

    def coordinator_for(self, group_id: str) -> tuple[int, str, int] | None:
        """(node id, host, port) of the group's coordinator, or None while there is none."""
        if self.partitions == 0:
            return None
        partition = self.partition_for(group_id)
        if self.routing is not None:
            leader = self.routing.leader(self._topic_id, partition)
            endpoint = None if leader is None else self.routing.endpoint(leader.node_id)
            return None if endpoint is None else (endpoint.node_id, endpoint.host, endpoint.port)
        if not self.owns(partition):
            return None
        host, port = self._broker.config.advertised
        return self._broker.config.node_id, host, port

    def partition_exists(self, topic: str, partition: int) -> bool:
        record = self._broker.topics.get(topic)
        return record is not None and 0 <= partition < record.partitions

    def group(self, group_id: str) -> Group | None:
        """The live group, if its shard is loaded here and it exists."""
        try:
            return self.shard_for(group_id).groups.get(group_id)
        except GroupError:
            return None

    # --- classic protocol ----------------------------------------------------------------------
    def _classic(
        self, group_id: str, create: bool, other_type: ErrorCode = ErrorCode.inconsistent_group_protocol
    ) -> ClassicGroup | None:
        shard = self.shard_for(group_id)
        group = shard.groups.get(group_id)
        if group is None:
            if not create:
                return None
            group = ClassicGroup(group_id, shard)
            shard.groups[group_id] = group
        if not isinstance(group, ClassicGroup):
            raise GroupError(other_type, f"group {group_id!r} uses another protocol")
        return group

    async def _convert_empty_group(self, group_id: str) -> None:
        """A classic join for the id of an empty group of another type replaces it (as Kafka converts).

        The other group's records are tombstoned first, so a replay never sees both; its offsets stay.
        """
        shard = self.shard_for(group_id)
        group = shard.groups.get(group_id)
        if group is None or isinstance(group, ClassicGroup) or not group.is_empty():
            return
        records = group.delete_records()
        group.mark_dead()
        if shard.groups.get(group_id) is group:
            del shard.groups[group_id]
        if records:
            await shard.write(records)
        log.info("group %s: empty %s group converted to a classic group", group_id, group.group_type)

    async def _route(self, group_id: str) -> ConsumerGroups | None:
        """Where a classic request for ``group_id`` goes (KIP-848 online migration): the consumer groups of
        its shard when the id is a non-empty consumer group, else None (the classic path). Waits out an
        upgrade being written; raises GroupError (NOT_COORDINATOR, ...)."""
        shard = self.shard_for(group_id)
        group = shard.groups.get(group_id)
        if isinstance(group, ClassicGroup) and group.converting is not None:
            await group.wait_converted()
            group = shard.groups.get(group_id)
        if isinstance(group, ConsumerGroup) and not group.is_empty():
            for ext in shard.extensions:
                if isinstance(ext, ConsumerGroups):
                    return ext
        return None

    async def join(self, req: JoinRequest, supports_skip_assignment: bool) -> JoinResult:
        if not self.config.min_session_timeout_ms <= req.session_timeout_ms <= self.config.max_session_timeout_ms:
            return JoinResult(ErrorCode.invalid_session_timeout, req.member_id)
        try:
            for _ in range(REROUTES):
                consumer = await self._route(req.group_id)
                if consumer is None:
                    break
                answer = await consumer.classic_join(req)
                if answer is not None:
                    return answer
            if not req.member_id:
                await self._convert_empty_group(req.group_id)
            group = self._classic(req.group_id, create=not req.member_id)
        except GroupError as e:
            return JoinResult(e.code, req.member_id)
        if group is None:
            return JoinResult(ErrorCode.unknown_member_id, req.member_id)
        result = await group.join(req, supports_skip_assignment)
        self._forget_if_unused(group)
        return result

    async def sync(
        self, group_id: str, member_id: str, instance_id: str | None, generation: int,
        protocol_type: str | None, protocol_name: str | None, assignments: dict[str, bytes],
    ) -> SyncResult:
        try:
            for _ in range(REROUTES):
                consumer = await self._route(group_id)
                if consumer is None:
                    break
                answer = await consumer.classic_sync(
                    group_id, member_id, instance_id, generation, protocol_type, protocol_name
                )
                if answer is not None:
                    return answer
            group = self._classic(group_id, create=False, other_type=ErrorCode.unknown_member_id)
        except GroupError as e:
            return SyncResult(e.code)
        if group is None:
            return SyncResult(ErrorCode.unknown_member_id)
        return await group.sync(member_id, instance_id, generation, protocol_type, protocol_name, assignments)

    async def heartbeat(self, group_id: str, member_id: str, instance_id: str | None, generation: int) -> ErrorCode:
        try:
            for _ in range(REROUTES):
                consumer = await self._route(group_id)
                if consumer is None:
                    break
                answer = await consumer.classic_heartbeat(group_id, member_id, instance_id, generation)
                if answer is not None:
                    return answer
            group = self._classic(group_id, create=False, other_type=ErrorCode.unknown_member_id)
        except GroupError as e:
            return e.code
        if group is None:
            return ErrorCode.unknown_member_id
        return group.heartbeat(member_id, instance_id, generation)

    async def leave(self, group_id: str, members: list[tuple[str, str | None]]) -> list[ErrorCode]:
        """One error per member; raises GroupError for group-level errors."""
        for _ in range(REROUTES):
            consumer = await self._route(group_id)
            if consumer is None:
                break
            answer = await consumer.classic_leave(group_id, members)
            if answer is not None:
                return answer
        group = self._classic(group_id, create=False, other_type=ErrorCode.unknown_member_id)
        if group is None:
            raise GroupError(ErrorCode.unknown_member_id, f"group {group_id!r} does not exist")
        return group.leave(members)

    def _forget_if_unused(self, group: ClassicGroup) -> None:
        """A group created by a join that never got a member (and has no offsets) is not kept."""
        shard = self.shards.get(self.partition_for(group.group_id))
        if (
            shard is not None and group.is_empty() and not group.members and not group.pending_members
            and group.generation == 0 and group.group_id not in shard.offsets
            and group.group_id not in shard.classic_values and shard.groups.get(group.group_id) is group
        ):
            del shard.groups[group.group_id]

    # --- offsets -------------------------------------------------------------------------------
    async def commit_offsets(
        self, group_id: str, member_id: str, instance_id: str | None, generation: int,
        partitions: Sequence[offsets.CommitRequest], api_version: int, retention_ms: int = -1,
    ) -> list[ErrorCode]:
        try:
            shard = self.shard_for(group_id)
        except GroupError as e:
            return [e.code] * len(partitions)
        return await offsets.commit(
            shard, group_id, member_id, instance_id, generation, partitions, self.partition_exists,
            api_version, retention_ms,
        )

    async def fetch_offsets(
        self, group_id: str, topics: Sequence[tuple[str, Sequence[int]]] | None,
        member_id: str | None = None, member_epoch: int = -1, require_stable: bool = False,
    ) -> list[offsets.FetchedOffset]:
        """Raises GroupError for the whole group."""
        return await offsets.fetch(
            self.shard_for(group_id), group_id, topics, member_id, member_epoch, require_stable
        )

    async def commit_txn_offsets(
        self, group_id: str, member_id: str, instance_id: str | None, generation: int,
        producer: tuple[int, int], partitions: Sequence[offsets.CommitRequest], api_version: int,
        verify: offsets.Verify | None = None,
    ) -> list[ErrorCode]:
        """TxnOffsetCommit: offsets pending in ``producer``'s (id, epoch) transaction; one error per partition.
        NOT_COORDINATOR and the like come before ``verify`` (KIP-890) is asked, so the client looks again."""
        try:
            shard = self.shard_for(group_id)
        except GroupError as e:
            return [e.code] * len(partitions)
        return await offsets.txn_commit(
            shard, group_id, member_id, instance_id, generation, producer, partitions, self.partition_exists,
            api_version, verify,
        )

    async def complete_transaction(self, partition: int, producer_id: int, commit: bool) -> None:
        """A transaction marker of ``producer_id`` is durable on offsets partition ``partition``: apply (commit)
        or drop (abort) that producer's pending offsets there (brokers/txn_markers.py calls this).

        A shard still loading is waited for: its replay may have stopped short of the marker, and completing
        an already-completed transaction does nothing. A partition not served here has nothing to do — its
        owner's replay reads the marker.
        """
        task = self._loading.get(partition)
        if task is not None:
            await asyncio.wait([task])
        shard = self.shards.get(partition)
        if shard is None:
            log.debug("offsets partition %d is not loaded here: transaction marker left to replay", partition)
            return
        shard.complete_transaction(producer_id, commit)

    async def delete_offsets(self, group_id: str, partitions: Sequence[tuple[str, int]]) -> list[ErrorCode]:
        """Raises GroupError for the whole group."""
        return await offsets.delete(self.shard_for(group_id), group_id, partitions, self.partition_exists)

    # --- admin ---------------------------------------------------------------------------------
    def list_groups(self, states: Sequence[str] = (), types: Sequence[str] = ()) -> tuple[ErrorCode, list[ListedGroup]]:
        wanted_states = {s.lower() for s in states}
        wanted_types = {t.lower() for t in types}
        out: list[ListedGroup] = []
        for shard in self.shards.values():
            if not shard.active:
                continue
            for group in shard.groups.values():
                if wanted_states and group.state_name.lower() not in wanted_states:
                    continue
                if wanted_types and group.group_type.lower() not in wanted_types:
                    continue
                out.append(ListedGroup(group.group_id, group.protocol_type, group.state_name, group.group_type))
        out.sort(key=lambda g: g.group_id)
        return (ErrorCode.coordinator_load_in_progress if self._loading else ErrorCode.none), out

    def describe(self, group_id: str) -> GroupDescription | None:
        """Raises GroupError if the shard is not here; None if the group does not exist."""
        group = self.shard_for(group_id).groups.get(group_id)
        return None if group is None else group.describe()

    async def delete_group(self, group_id: str) -> ErrorCode:
        """DeleteGroups for one group: its metadata and offsets, once it has no members."""
        try:
            shard = self.shard_for(group_id)
        except GroupError as e:
            return e.code
        group = shard.groups.get(group_id)
        if group is None or group.state_name == "Dead":
            return ErrorCode.group_id_not_found
        if not group.is_empty():
            return ErrorCode.non_empty_group
        group.mark_dead()
        committed = shard.offsets.get(group_id, {})
        pending = [tp for tp in shard.pending_txn.pending_of(group_id) if tp not in committed]
        records = group.delete_records() + [
            (encode_offset_key(group_id, t, p), None) for t, p in [*committed, *pending]
        ]
        if shard.groups.get(group_id) is group:
            del shard.groups[group_id]
        try:
            await shard.write(records)
        except GroupError as e:
            return e.code
        return ErrorCode.none

    # --- offset retention ----------------------------------------------------------------------
    async def _expire_offsets_periodically(self) -> None:
        interval = self.config.offsets_retention_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.expire_offsets()

    async def expire_offsets(self) -> int:
        """Write tombstones for offsets past offsets.retention.minutes; returns how many records."""
        written = 0
        for shard in list(self.shards.values()):
            if not shard.active:
                continue
            records = shard.expired_offsets(now_ms(), self.config.offsets_retention_ms)
            if not records:
                continue
            try:
                await shard.write(records)
            except GroupError as e:
                log.warning("offsets partition %d: expiring offsets failed: %s", shard.partition, e)
                continue
            written += len(records)
            for group_id, group in list(shard.groups.items()):
                if group.is_empty() and group_id not in shard.offsets and group_id not in shard.classic_values:
                    group.mark_dead()
                    del shard.groups[group_id]
        return written
