"""KIP-848 consumer groups inside one ``__consumer_offsets`` shard: replay, heartbeats, timers.

``ConsumerGroups`` is the shard's extension for key versions 3..8 (shard.py ``ShardExtension``): it
replays those records into ``ConsumerGroup`` objects, which are also the live groups the shard serves
(``shard.groups``). A heartbeat runs under its group's lock: compute (consumer_heartbeat.py), write the
records through the shard (applied once durable), then arm the member's timers:

* session timeout (``group.consumer.session.timeout.ms``): a member that stops heartbeating is removed;
* rebalance timeout (the member's own): a member asked to revoke partitions that has not done so in time
  is removed, so its partitions can move on.

KIP-848 online migration (consumer_classic.py has the rules): a consumer-protocol heartbeat joining a
non-empty classic group converts it when ``group.consumer.migration.policy`` allows (else
GROUP_ID_NOT_FOUND, Kafka's answer); an empty classic group (e.g. offsets only) is always converted.
Classic members of a consumer group are served here too (``classic_join``/``classic_sync``/
``classic_heartbeat``/``classic_leave``), with Kafka's timers for them: their own session timeout, a join
timer (rebalance timeout) once told to rejoin, a sync timer after their JoinGroup. When the last
consumer-protocol member leaves or is fenced and the rest are classic, the group becomes a classic group
again: its records are tombstoned, the classic group's metadata written, and the ``ClassicGroup`` installed
in the same synchronous replay step that removes the consumer group, so no request sees neither.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.assignors import TopicInfo
from brokers.groups.base import CONSUMER, GroupError
from brokers.groups.classic import ClassicGroup
from brokers.groups.consumer import (
    LEAVE_EPOCH,
    ConsumerGroup,
    ConsumerGroupConfig,
    ConsumerMember,
    Heartbeat,
    MemberState,
    Outcome,
)
from brokers.groups.consumer_classic import (
    can_downgrade,
    can_upgrade,
    check_join,
    classic_join,
    classic_protocol_name,
    downgrade,
    must_rejoin,
    sync_assignment,
    upgrade_records,
)
from brokers.groups.consumer_heartbeat import heartbeat, remove_members
from brokers.groups.consumer_records import KEY_VERSIONS, ConsumerRecord, GroupEpochRecord, decode, encode, is_tombstone
from brokers.groups.member import ClassicMember, JoinRequest, JoinResult, SyncResult

if TYPE_CHECKING:
    from brokers.config import BrokerConfig
    from brokers.groups.shard import GroupShard, Records
    from brokers.topics import TopicRegistry

log = logging.getLogger(__name__)
SESSION, REBALANCE, JOIN, SYNC = "session", "rebalance", "join", "sync"
_tokens = itertools.count()


class BrokerView(Protocol):
    """What consumer groups take from the broker: its settings and its topics (not the whole Broker)."""

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def topics(self) -> TopicRegistry: ...


class ShardLookup(Protocol):
    def shard_for(self, group_id: str) -> GroupShard: ...


class CoordinatorView(Protocol):
    """What the handlers reach consumer groups through: the group coordinator's shard lookup."""

    @property
    def groups(self) -> ShardLookup: ...


class RegistryTopics:
    """The broker's topic registry as consumer groups see it."""

    def __init__(self, registry: TopicRegistry) -> None:
        self._registry = registry

    @property
    def generation(self) -> int:
        return self._registry.generation

    def topic(self, name: str) -> TopicInfo | None:
        t = self._registry.get(name)
        return None if t is None else TopicInfo(t.topic_id, t.name, t.partitions)

    def names(self) -> Iterable[str]:
        return [t.name for t in self._registry.all()]


def consumer_extension(broker: BrokerView) -> Callable[[GroupShard], ConsumerGroups]:
    """The factory the group coordinator calls for each shard it loads."""
    c = broker.config
    config = ConsumerGroupConfig(
        c.consumer_heartbeat_interval_ms, c.consumer_session_timeout_ms, c.consumer_max_size,
        c.consumer_migration_policy, c.group_max_size,
    )
    topics = RegistryTopics(broker.topics)
    return lambda shard: ConsumerGroups(shard, config, topics)


def consumer_groups_for(broker: CoordinatorView, group_id: str) -> ConsumerGroups:
    """The consumer groups of ``group_id``'s shard; raises GroupError (NOT_COORDINATOR, LOAD_IN_PROGRESS...)."""
    shard = broker.groups.shard_for(group_id)
    for ext in shard.extensions:
        if isinstance(ext, ConsumerGroups):
            return ext
    raise GroupError(ErrorCode.coordinator_not_available, "consumer groups are not enabled on this coordinator")


class ConsumerGroups:
    """The consumer groups of one shard (its ShardExtension for record types 3..8)."""

    def __init__(self, shard: GroupShard, config: ConsumerGroupConfig, topics: RegistryTopics) -> None:
        self.shard = shard
        self.config = config
        self.topics = topics
        self.groups: dict[str, ConsumerGroup] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loaded = False
        self._pending_classic: dict[str, tuple[ClassicGroup, bool]] = {}
        """Downgrades being written: the classic group installed when the consumer group's tombstone applies."""
        self._timer_tokens: dict[tuple[str, str, str], int] = {}
        """(group, member, kind) -> token of the armed timer; a timer that fires checks it is still the one."""

    # --- ShardExtension ----------------------------------------------------------------------------
    def handles(self, key_version: int) -> bool:
        return key_version in KEY_VERSIONS

    def replay(self, key: rec.UnknownKey, value: bytes | None, log_offset: int) -> None:
        try:
            record = decode(key.data, value)
        except ValueError as e:
            raise rec.RecordFormatError(str(e)) from None
        self.apply(record)

    def apply(self, record: ConsumerRecord) -> None:
        """Replay one record into its group, creating the group on its first record."""
        group_id = record.group_id
        group = self.groups.get(group_id)
        if isinstance(record, GroupEpochRecord) and record.epoch is None:
            if group is not None:
                group.shutdown()
                del self.groups[group_id]
                for key in [k for k in self._timer_tokens if k[0] == group_id]:
                    del self._timer_tokens[key]
                if self.shard.groups.get(group_id) is group:
                    del self.shard.groups[group_id]
            pending = self._pending_classic.pop(group_id, None)
            if pending is not None and self._loaded:  # a downgrade: the classic group takes its place now
                classic, rebalance = pending
                self.shard.groups[group_id] = classic
                classic.start_after_downgrade(rebalance)
            return
        if group is None:
            if is_tombstone(record):
                return
            group = self.groups[group_id] = ConsumerGroup(group_id)
        group.replay(record)
        if self._loaded and self.shard.groups.get(group_id) is not group:
            previous = self.shard.groups.get(group_id)
            if isinstance(previous, ClassicGroup):  # a classic group converted into this one (upgrade)
                previous.converted()
            elif previous is not None:
                previous.shutdown()
            self.shard.groups[group_id] = group

    def snapshot_records(self) -> Records:
        return [encode(r) for group in self.groups.values() if not group.dead for r in group.snapshot()]

    def loaded(self) -> None:
        self._loaded = True
        for group_id, group in self.groups.items():
            self.shard.groups[group_id] = group
            for member_id, member in group.members.items():  # every timer starts again on takeover, as in Kafka
                self._arm(group, member_id, SESSION, self._session_ms(member))
                if member.state == MemberState.UNREVOKED_PARTITIONS and not member.uses_classic:
                    timeout = max(member.sub.rebalance_timeout_ms, 0)
                    self._arm(group, member_id, REBALANCE, timeout, member.epoch)

    # --- requests ----------------------------------------------------------------------------------
    def lock(self, group_id: str) -> asyncio.Lock:
        lock = self._locks.get(group_id)
        if lock is None:
            lock = self._locks[group_id] = asyncio.Lock()
        return lock

    async def heartbeat(self, group_id: str, hb: Heartbeat) -> Outcome:
        """Run one ConsumerGroupHeartbeat; raises GroupError."""
        async with self.lock(group_id):
            pre: Records = []
            upgrading: ClassicGroup | None = None
            group = self.groups.get(group_id)
            if group is not None and group.dead:
                if self.shard.groups.get(group_id) is group:
                    raise GroupError(ErrorCode.coordinator_not_available, f"group {group_id!r} is being deleted")
                # Dropped by the coordinator (deleted or expired) but its records were not removed: do it now.
                pre, group = group.delete_records(), None
            other = self.shard.groups.get(group_id)
            if group is None and other is not None:
                if other.is_empty() and hb.member_epoch == 0:
                    pre += other.delete_records()  # an empty classic group becomes a consumer group (as Kafka does)
                elif hb.member_epoch == 0 and isinstance(other, ClassicGroup) and can_upgrade(other, self.config):
                    conversion = upgrade_records(other, self.topics)  # KIP-848 online upgrade
                    pre += other.delete_records()
                    group = ConsumerGroup(group_id)
                    for record in conversion:
                        group.replay(record)
                    pre += [encode(r) for r in conversion]
                    upgrading = other
                else:
                    raise GroupError(ErrorCode.group_id_not_found, f"group {group_id!r} is not a consumer group")
            if group is None:
                if hb.member_epoch != 0:
                    raise GroupError(ErrorCode.group_id_not_found, f"consumer group {group_id!r} does not exist")
                group = ConsumerGroup(group_id)
            outcome = heartbeat(group, hb, self.topics, self.config, new_member_id=str(uuid.uuid4()))
            records = pre + [encode(r) for r in outcome.records]
            downgrading = (
                outcome.member_epoch == LEAVE_EPOCH and self.groups.get(group_id) is group
                and can_downgrade(group, outcome.member_id, self.config)
            )
            if downgrading:
                records = self._downgrade_records(group, outcome.member_id)
            if upgrading is not None:
                upgrading.begin_conversion()
            if upgrading is not None or downgrading:
                await self._write_conversion(group_id, records, upgrading)
            elif records:
                await self.shard.write(records)
            live = self.groups.get(group_id)
            if upgrading is not None and live is not None:
                log.info("group %s: classic group of %d members upgraded to a consumer group at epoch %d",
                         group_id, len(upgrading.members), upgrading.generation)
                for member_id, member in live.members.items():
                    if member.uses_classic:
                        self._arm(live, member_id, SESSION, self._session_ms(member))
            if live is not None:
                self._after(live, outcome)
            return outcome

    def _downgrade_records(self, group: ConsumerGroup, leaving: str) -> Records:
        """Records turning ``group`` back into a classic group without ``leaving``; the classic group is
        installed when they apply (``apply``)."""
        classic = downgrade(group, leaving, self.shard, group.topic_names())
        self._pending_classic[group.group_id] = (classic, True)
        log.info("group %s: last consumer-protocol member %s leaves: downgrading to a classic group of %d members",
                 group.group_id, leaving, len(classic.members))
        return [encode(r) for r in group.tombstones()] + [classic.metadata_record()]

    async def _remove(self, group: ConsumerGroup, member_id: str) -> None:
        """Fence one member (timeouts): removed, or the group downgraded if it was the last consumer-protocol
        member. Caller holds the group's lock; raises GroupError if the write fails."""
        if can_downgrade(group, member_id, self.config):
            await self._write_conversion(group.group_id, self._downgrade_records(group, member_id))
        else:
            await self.shard.write([encode(r) for r in remove_members(group, [member_id], self.topics)])
        self._disarm(group, member_id)

    async def _write_conversion(self, group_id: str, records: Records, upgrading: ClassicGroup | None = None) -> None:
        """Write an upgrade's or downgrade's records. If the write fails the conversion is undone — the classic
        group serves again, the pending classic group is dropped — even when the request that started it was
        cancelled meanwhile (a client disconnecting), so no classic request is left waiting on it."""
        pending = self._pending_classic.get(group_id)

        def undo(write: asyncio.Future[int]) -> None:
            if not write.cancelled() and write.exception() is None:
                return
            if upgrading is not None:
                upgrading.conversion_failed()
            if pending is not None and self._pending_classic.get(group_id) is pending:
                del self._pending_classic[group_id]

        write = asyncio.ensure_future(self.shard.write(records))
        write.add_done_callback(undo)
        await asyncio.shield(write)

    # --- classic members of a consumer group (KIP-848 online migration) ----------------------------
    def _serving(self, group_id: str) -> ConsumerGroup | None:
        """The live, non-empty consumer group of this id (else the classic path serves the request)."""
        group = self.groups.get(group_id)
        if group is None or group.dead or group.is_empty() or not self._installed(group):
            return None
        return group

    def _installed(self, group: ConsumerGroup) -> bool:
        """The group is the one the shard serves under its id (not one being replaced)."""
        return self.shard.groups.get(group.group_id) is group

    @staticmethod
    def _classic_member(group: ConsumerGroup, member_id: str, instance_id: str | None) -> ConsumerMember:
        """The classic member a SyncGroup/Heartbeat/LeaveGroup names; raises GroupError as Kafka does."""
        if instance_id is not None:
            current = group.static_members.get(instance_id)
            if current is None:
                raise GroupError(ErrorCode.unknown_member_id, f"instance id {instance_id!r} is unknown")
            if member_id and current != member_id:
                raise GroupError(ErrorCode.fenced_instance_id, f"instance {instance_id} is now {current}")
            member_id = current
        member = group.members.get(member_id)
        if member is None or not member.uses_classic:
            raise GroupError(
                ErrorCode.unknown_member_id, f"{member_id!r} is not a classic member of {group.group_id!r}"
            )
        return member

    async def classic_join(self, req: JoinRequest) -> JoinResult | None:
        """A classic JoinGroup to a non-empty consumer group; None: not one (any more), use the classic path.

        Answered once the member's records are durable: its generation is its member epoch, the protocol the
        first it offered, no leader (the coordinator assigns), so the client syncs for its assignment.
        """
        async with self.lock(req.group_id):
            group = self._serving(req.group_id)
            if group is None:
                return None
            member_id = req.member_id or str(uuid.uuid4())
            replaced = group.static_members.get(req.group_instance_id or "") if not req.member_id else None
            try:
                check_join(group, req, member_id, self.config)
                if not req.member_id and req.group_instance_id is None and req.require_known_member_id:
                    return JoinResult(ErrorCode.member_id_required, member_id)
                records, cur = classic_join(group, req, member_id, self.topics)
                if replaced is not None and can_downgrade(group, replaced, self.config, fenced=False):
                    return await self._replace_and_downgrade(group, replaced, member_id, req)
                if records:
                    await self.shard.write([encode(r) for r in records])
            except GroupError as e:
                return JoinResult(e.code, req.member_id)
            live = self.groups.get(req.group_id)
            if live is not None and member_id in live.members:
                self._cancel(live, member_id, JOIN)
                self._cancel(live, member_id, REBALANCE)
                self._arm(live, member_id, SESSION, req.session_timeout_ms)
                self._arm(live, member_id, SYNC, req.rebalance_timeout_ms)
            log.info("consumer group %s: classic member %s joined at epoch %d (%d partitions)",
                     req.group_id, member_id, cur.member_epoch, len(cur.assigned))
            protocol = req.protocols[0][0] if req.protocols else ""
            return JoinResult(ErrorCode.none, member_id, cur.member_epoch, CONSUMER, protocol)

    async def _replace_and_downgrade(
        self, group: ConsumerGroup, replaced: str, member_id: str, req: JoinRequest
    ) -> JoinResult:
        """A classic static member replacing the last consumer-protocol member (same group.instance.id): the
        group becomes classic with the newcomer holding the replaced member's assignment, no rebalance (Kafka's
        validateOnlineDowngradeWithReplacedMemberId). Caller holds the lock; raises GroupError."""
        joining = ClassicMember(
            member_id, req.group_instance_id, req.client_id, req.client_host, req.rebalance_timeout_ms,
            req.session_timeout_ms, req.protocol_type, req.protocols,
        )
        classic = downgrade(group, replaced, self.shard, group.topic_names(), joining)
        self._pending_classic[group.group_id] = (classic, False)
        log.info("group %s: static member %s replaces the last consumer-protocol member %s: downgrading",
                 group.group_id, req.group_instance_id, replaced)
        await self._write_conversion(
            group.group_id, [encode(r) for r in group.tombstones()] + [classic.metadata_record()]
        )
        return JoinResult(ErrorCode.none, member_id, classic.generation, CONSUMER, classic.protocol_name)

    async def classic_sync(
        self, group_id: str, member_id: str, instance_id: str | None, generation: int,
        protocol_type: str | None, protocol_name: str | None,
    ) -> SyncResult | None:
        """A classic member's SyncGroup: its current assignment (None: not a consumer group, use the classic path)."""
        async with self.lock(group_id):
            group = self._serving(group_id)
            if group is None:
                return None
            try:
                member = self._classic_member(group, member_id, instance_id)
                if generation != member.epoch:
                    raise GroupError(ErrorCode.illegal_generation, f"generation {generation} is not {member.epoch}")
                name = classic_protocol_name(member)
                if (protocol_type is not None and protocol_type != CONSUMER) or (
                    protocol_name is not None and protocol_name != name
                ):
                    raise GroupError(ErrorCode.inconsistent_group_protocol, "not the protocol of the join answer")
                if group.group_epoch > member.epoch and member.state != MemberState.UNREVOKED_PARTITIONS:
                    self._arm_if_absent(group, member.member_id, JOIN, member.sub.rebalance_timeout_ms)
                    raise GroupError(ErrorCode.rebalance_in_progress, "a new rebalance began: rejoin")
            except GroupError as e:
                return SyncResult(e.code)
            self._cancel(group, member.member_id, SYNC)
            self._arm(group, member.member_id, SESSION, self._session_ms(member))
            return SyncResult(ErrorCode.none, sync_assignment(member, group.topic_names()), CONSUMER, name)

    async def classic_heartbeat(self, group_id: str, member_id: str, instance_id: str | None,
                                generation: int) -> ErrorCode | None:
        """A classic member's Heartbeat: REBALANCE_IN_PROGRESS when it must rejoin (None: use the classic path)."""
        async with self.lock(group_id):
            group = self._serving(group_id)
            if group is None:
                return None
            try:
                member = self._classic_member(group, member_id, instance_id)
            except GroupError as e:
                return e.code
            if generation != member.epoch:
                return ErrorCode.illegal_generation
            self._arm(group, member.member_id, SESSION, self._session_ms(member))
            if must_rejoin(group, member):
                self._arm_if_absent(group, member.member_id, JOIN, member.sub.rebalance_timeout_ms)
                return ErrorCode.rebalance_in_progress
            return ErrorCode.none

    async def classic_leave(self, group_id: str, members: list[tuple[str, str | None]]) -> list[ErrorCode] | None:
        """A LeaveGroup for classic members of a consumer group (None: use the classic path); raises GroupError
        if the removal cannot be written."""
        async with self.lock(group_id):
            group = self._serving(group_id)
            if group is None:
                return None
            results: list[ErrorCode] = []
            leaving: list[str] = []
            for member_id, instance_id in members:
                try:
                    leaving.append(self._classic_member(group, member_id, instance_id).member_id)
                    results.append(ErrorCode.none)
                except GroupError as e:
                    results.append(e.code)
            if leaving:
                await self.shard.write([encode(r) for r in remove_members(group, leaving, self.topics)])
                for member_id in leaving:
                    log.info("consumer group %s: classic member %s left", group_id, member_id)
                    self._disarm(group, member_id)
            return results

    def _after(self, group: ConsumerGroup, outcome: Outcome) -> None:
        member_id = outcome.member_id
        if outcome.member_epoch == LEAVE_EPOCH or member_id not in group.members:
            self._disarm(group, member_id)
            return
        self._arm(group, member_id, SESSION, self.config.session_timeout_ms)
        self._cancel(group, member_id, JOIN)  # a classic member now speaking the consumer protocol
        self._cancel(group, member_id, SYNC)
        if not outcome.revoking:
            self._cancel(group, member_id, REBALANCE)
        elif (member_id, REBALANCE) not in group.timers:
            self._arm(group, member_id, REBALANCE, max(outcome.rebalance_timeout_ms, 0), outcome.member_epoch)

    # --- timers ------------------------------------------------------------------------------------
    def _session_ms(self, member: ConsumerMember) -> int:
        """A classic member's own session timeout; group.consumer.session.timeout.ms for the others."""
        classic = member.sub.classic
        return classic.session_timeout_ms if classic is not None else self.config.session_timeout_ms

    def _arm(self, group: ConsumerGroup, member_id: str, kind: str, delay_ms: int, epoch: int = 0) -> None:
        self._cancel(group, member_id, kind)
        token = next(_tokens)
        self._timer_tokens[(group.group_id, member_id, kind)] = token
        loop = asyncio.get_running_loop()
        group.timers[(member_id, kind)] = loop.call_later(
            max(delay_ms, 0) / 1000, self._expired, group.group_id, member_id, kind, epoch, token
        )

    def _arm_if_absent(self, group: ConsumerGroup, member_id: str, kind: str, delay_ms: int) -> None:
        if (member_id, kind) not in group.timers:
            self._arm(group, member_id, kind, delay_ms)

    def _cancel(self, group: ConsumerGroup, member_id: str, kind: str) -> None:
        self._timer_tokens.pop((group.group_id, member_id, kind), None)
        handle = group.timers.pop((member_id, kind), None)
        if handle is not None:
            handle.cancel()

    def _disarm(self, group: ConsumerGroup, member_id: str) -> None:
        for kind in (SESSION, REBALANCE, JOIN, SYNC):
            self._cancel(group, member_id, kind)

    def _expired(self, group_id: str, member_id: str, kind: str, epoch: int, token: int) -> None:
        group = self.groups.get(group_id)
        if group is not None:
            group.timers.pop((member_id, kind), None)
            self.shard.spawn(self._fence(group_id, member_id, kind, epoch, token))

    async def _fence(self, group_id: str, member_id: str, kind: str, epoch: int, token: int) -> None:
        async with self.lock(group_id):
            group = self.groups.get(group_id)
            member = group.members.get(member_id) if group is not None else None
            if group is None or member is None or not self._installed(group):
                return
            if self._timer_tokens.get((group_id, member_id, kind)) != token:
                return  # re-armed or cancelled meanwhile (it heartbeated, joined or synced)
            self._timer_tokens.pop((group_id, member_id, kind), None)
            if kind == REBALANCE and (member.state != MemberState.UNREVOKED_PARTITIONS or member.epoch != epoch):
                return  # it revoked in time
            log.info("consumer group %s: member %s removed (%s timeout)", group_id, member_id, kind)
            try:
                await self._remove(group, member_id)
            except GroupError as e:
                log.warning("consumer group %s: could not remove member %s: %s", group_id, member_id, e)

