"""KIP-848 consumer groups inside one ``__consumer_offsets`` shard: replay, heartbeats, timers.

``ConsumerGroups`` is the shard's extension for key versions 3..8 (shard.py ``ShardExtension``): it
replays those records into ``ConsumerGroup`` objects, which are also the live groups the shard serves
(``shard.groups``). A heartbeat runs under its group's lock: compute (consumer_heartbeat.py), write the
records through the shard (applied once durable), then arm the member's timers:

* session timeout (``group.consumer.session.timeout.ms``): a member that stops heartbeating is removed;
* rebalance timeout (the member's own): a member asked to revoke partitions that has not done so in time
  is removed, so its partitions can move on.

A classic group and a consumer group cannot share an id: a heartbeat for the id of a classic group with
members gets GROUP_ID_NOT_FOUND (Kafka's answer); an empty classic group (e.g. offsets only) is converted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.assignors import TopicInfo
from brokers.groups.base import GroupError
from brokers.groups.consumer import LEAVE_EPOCH, ConsumerGroup, ConsumerGroupConfig, Heartbeat, MemberState, Outcome
from brokers.groups.consumer_heartbeat import heartbeat, remove_members
from brokers.groups.consumer_records import KEY_VERSIONS, ConsumerRecord, GroupEpochRecord, decode, encode, is_tombstone

if TYPE_CHECKING:
    from brokers.broker import Broker
    from brokers.groups.shard import GroupShard, Records
    from brokers.topics import TopicRegistry

log = logging.getLogger(__name__)
SESSION, REBALANCE = "session", "rebalance"


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


def consumer_extension(broker: Broker) -> Callable[[GroupShard], ConsumerGroups]:
    """The factory the group coordinator calls for each shard it loads."""
    c = broker.config
    config = ConsumerGroupConfig(c.consumer_heartbeat_interval_ms, c.consumer_session_timeout_ms, c.consumer_max_size)
    topics = RegistryTopics(broker.topics)
    return lambda shard: ConsumerGroups(shard, config, topics)


def consumer_groups_for(broker: Broker, group_id: str) -> ConsumerGroups:
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
                if self.shard.groups.get(group_id) is group:
                    del self.shard.groups[group_id]
            return
        if group is None:
            if is_tombstone(record):
                return
            group = self.groups[group_id] = ConsumerGroup(group_id)
        group.replay(record)
        if self._loaded and self.shard.groups.get(group_id) is not group:
            previous = self.shard.groups.get(group_id)
            if previous is not None:  # an empty classic group converted into this one
                previous.shutdown()
            self.shard.groups[group_id] = group

    def snapshot_records(self) -> Records:
        return [encode(r) for group in self.groups.values() if not group.dead for r in group.snapshot()]

    def loaded(self) -> None:
        self._loaded = True
        for group_id, group in self.groups.items():
            self.shard.groups[group_id] = group
            for member_id, member in group.members.items():  # every timer starts again on takeover, as in Kafka
                self._arm(group, member_id, SESSION, self.config.session_timeout_ms)
                if member.state == MemberState.UNREVOKED_PARTITIONS:
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
            group = self.groups.get(group_id)
            if group is not None and group.dead:
                if self.shard.groups.get(group_id) is group:
                    raise GroupError(ErrorCode.coordinator_not_available, f"group {group_id!r} is being deleted")
                # Dropped by the coordinator (deleted or expired) but its records were not removed: do it now.
                pre, group = group.delete_records(), None
            other = self.shard.groups.get(group_id)
            if group is None and other is not None:
                if not other.is_empty() or hb.member_epoch != 0:
                    raise GroupError(ErrorCode.group_id_not_found, f"group {group_id!r} is not a consumer group")
                pre += other.delete_records()  # an empty classic group becomes a consumer group (as Kafka does)
            if group is None:
                if hb.member_epoch != 0:
                    raise GroupError(ErrorCode.group_id_not_found, f"consumer group {group_id!r} does not exist")
                group = ConsumerGroup(group_id)
            outcome = heartbeat(group, hb, self.topics, self.config, new_member_id=str(uuid.uuid4()))
            if outcome.records or pre:
                await self.shard.write(pre + [encode(r) for r in outcome.records])
            live = self.groups.get(group_id)
            if live is not None:
                self._after(live, outcome)
            return outcome

    def _after(self, group: ConsumerGroup, outcome: Outcome) -> None:
        member_id = outcome.member_id
        if outcome.member_epoch == LEAVE_EPOCH or member_id not in group.members:
            self._disarm(group, member_id)
            return
        self._arm(group, member_id, SESSION, self.config.session_timeout_ms)
        if not outcome.revoking:
            self._cancel(group, member_id, REBALANCE)
        elif (member_id, REBALANCE) not in group.timers:
            self._arm(group, member_id, REBALANCE, max(outcome.rebalance_timeout_ms, 0), outcome.member_epoch)

    # --- timers ------------------------------------------------------------------------------------
    def _arm(self, group: ConsumerGroup, member_id: str, kind: str, delay_ms: int, epoch: int = 0) -> None:
        self._cancel(group, member_id, kind)
        loop = asyncio.get_running_loop()
        group.timers[(member_id, kind)] = loop.call_later(
            delay_ms / 1000, self._expired, group.group_id, member_id, kind, epoch
        )

    def _cancel(self, group: ConsumerGroup, member_id: str, kind: str) -> None:
        handle = group.timers.pop((member_id, kind), None)
        if handle is not None:
            handle.cancel()

    def _disarm(self, group: ConsumerGroup, member_id: str) -> None:
        self._cancel(group, member_id, SESSION)
        self._cancel(group, member_id, REBALANCE)

    def _expired(self, group_id: str, member_id: str, kind: str, epoch: int) -> None:
        group = self.groups.get(group_id)
        if group is not None:
            group.timers.pop((member_id, kind), None)
            self.shard.spawn(self._fence(group_id, member_id, kind, epoch))

    async def _fence(self, group_id: str, member_id: str, kind: str, epoch: int) -> None:
        async with self.lock(group_id):
            group = self.groups.get(group_id)
            member = group.members.get(member_id) if group is not None else None
            if group is None or member is None:
                return
            if kind == SESSION and (member_id, SESSION) in group.timers:
                return  # it heartbeated meanwhile
            if kind == REBALANCE and (member.state != MemberState.UNREVOKED_PARTITIONS or member.epoch != epoch):
                return  # it revoked in time
            log.info("consumer group %s: member %s removed (%s timeout)", group_id, member_id, kind)
            records = remove_members(group, [member_id], self.topics)
            try:
                await self.shard.write([encode(r) for r in records])
            except GroupError as e:
                log.warning("consumer group %s: could not remove member %s: %s", group_id, member_id, e)
                return
            self._disarm(group, member_id)

