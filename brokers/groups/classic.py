"""The classic group protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup), as Kafka's coordinator runs it.

States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable (and back), Dead once deleted. The
leader receives every member's metadata and assigns client-side; the broker only relays, so every
client-side assignor (range, roundrobin, sticky, cooperative-sticky) works. Timers are asyncio timer
handles, never polling: a session timer per member, the join timer (rebalance timeout, or the initial
rebalance delay of a group leaving Empty), and the sync timer that drops members that never sync.
Group metadata is persisted (and applied) only once durable, after each completed rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Self

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError, GroupStore
from brokers.groups.classic_base import ClassicGroupBase, GroupState, subscribed_topics
from brokers.groups.member import ClassicMember, JoinRequest, JoinResult, SyncResult

__all__ = ["ClassicGroup", "GroupState", "subscribed_topics"]
log = logging.getLogger(__name__)


class ClassicGroup(ClassicGroupBase):
    """One classic-protocol group (also the "simple" group of assign() consumers that only commit)."""

    # --- JoinGroup ------------------------------------------------------------------------------------
    async def join(self, req: JoinRequest, supports_skip_assignment: bool = False) -> JoinResult:
        """Handle a JoinGroup; may wait until the rebalance completes."""
        if self.state is GroupState.DEAD:
            return JoinResult(ErrorCode.coordinator_not_available, req.member_id)
        if not req.member_id:
            return await self._join_new(req, supports_skip_assignment)
        return await self._join_known(req)

    async def _join_new(self, req: JoinRequest, supports_skip_assignment: bool) -> JoinResult:
        if not self._supports(req.protocol_type, req.protocols, exclude=None):
            return JoinResult(ErrorCode.inconsistent_group_protocol)
        if req.group_instance_id is not None and req.group_instance_id in self.static_members:
            return await self._rejoin_static(req, supports_skip_assignment)
        if len(self.members) + len(self.pending_members) >= self._config.max_size:
            return JoinResult(ErrorCode.group_max_size_reached)
        member_id = f"{req.group_instance_id or req.client_id}-{uuid.uuid4()}"
        if req.group_instance_id is None and req.require_known_member_id:
            loop = asyncio.get_running_loop()
            self.pending_members[member_id] = loop.call_later(
                req.session_timeout_ms / 1000, self._expire_pending, member_id
            )
            return JoinResult(ErrorCode.member_id_required, member_id)
        return await self._add_member_and_rebalance(member_id, req)

    async def _join_known(self, req: JoinRequest) -> JoinResult:
        member_id = req.member_id
        pending = self.pending_members.pop(member_id, None)
        if pending is not None:
            pending.cancel()
            if not self._supports(req.protocol_type, req.protocols, exclude=None):
                return JoinResult(ErrorCode.inconsistent_group_protocol, member_id)
            return await self._add_member_and_rebalance(member_id, req)
        try:
            member = self._validate_member(member_id, req.group_instance_id)
        except GroupError as e:
            return JoinResult(e.code, member_id)
        if not self._supports(req.protocol_type, req.protocols, exclude=member_id):
            return JoinResult(ErrorCode.inconsistent_group_protocol, member_id)
        self._schedule_expiry(member)
        if self.state is GroupState.PREPARING_REBALANCE:
            return await self._update_member_and_rebalance(member, req)
        if self.state is GroupState.COMPLETING_REBALANCE:
            if member.same_protocols(req.protocols):  # it lost our answer: send it again
                return self._current_join_result(member, leader_view=member_id == self.leader_id)
            return await self._update_member_and_rebalance(member, req)
        if self.state is GroupState.STABLE:
            if member_id == self.leader_id or not member.same_protocols(req.protocols):
                return await self._update_member_and_rebalance(member, req)
            return self._current_join_result(member, leader_view=False)
        return JoinResult(ErrorCode.unknown_member_id, member_id)

    async def _add_member_and_rebalance(self, member_id: str, req: JoinRequest) -> JoinResult:
        member = ClassicMember(
            member_id, req.group_instance_id, req.client_id, req.client_host, req.rebalance_timeout_ms,
            req.session_timeout_ms, req.protocol_type, req.protocols,
        )
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = future
        if not self.members:
            self._protocol_type = req.protocol_type
        self.members[member_id] = member
        if req.group_instance_id is not None:
            self.static_members[req.group_instance_id] = member_id
        if self.leader_id is None:
            self.leader_id = member_id
        self._new_member_added = True
        self._schedule_expiry(member)
        self._rebalance_or_check(f"member {member_id} joined")
        return await future

    async def _update_member_and_rebalance(self, member: ClassicMember, req: JoinRequest) -> JoinResult:
        member.protocols = req.protocols
        member.protocol_type = req.protocol_type
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.client_id, member.client_host = req.client_id, req.client_host
        member.answer_join(JoinResult(ErrorCode.rebalance_in_progress, member.member_id))  # superseded join
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = future
        self._rebalance_or_check(f"member {member.member_id} rejoined")
        return await future

    async def _rejoin_static(self, req: JoinRequest, supports_skip_assignment: bool) -> JoinResult:
        """A known group.instance.id with a new member id: replace the old member (KIP-345)."""
        instance_id = req.group_instance_id or ""
        old_id = self.static_members[instance_id]
        old = self.members[old_id]
        old_leader = self.leader_id
        new_id = f"{instance_id}-{uuid.uuid4()}"
        old.cancel_expiry()
        old.answer_join(JoinResult(ErrorCode.fenced_instance_id, old_id))
        old.answer_sync(SyncResult(ErrorCode.fenced_instance_id))
        member = ClassicMember(
            new_id, instance_id, req.client_id, req.client_host, req.rebalance_timeout_ms, req.session_timeout_ms,
            req.protocol_type, req.protocols, old.assignment,
        )
        self._replace_member(old_id, member)
        self._schedule_expiry(member)
        if self.state is GroupState.STABLE:
            if self._select_protocol() == self.protocol_name:
                try:
                    await self._shard.write([self._metadata_record()])
                except GroupError as e:
                    if self.members.get(new_id) is member:  # undo: the old member id stays
                        self._replace_member(new_id, old)
                        self._schedule_expiry(old)
                    return JoinResult(e.code, "")
                is_leader = self.leader_id == new_id
                if is_leader and supports_skip_assignment:
                    return self._current_join_result(member, leader_view=True, skip=True)
                # Older clients are told the old leader id, so a rejoining leader runs no assignment.
                result = self._current_join_result(member, leader_view=False)
                return result if not is_leader else JoinResult(
                    result.error, new_id, result.generation, result.protocol_type, result.protocol_name,
                    old_leader or "",
                )
            self._prepare_rebalance(f"static member {instance_id} rejoined with other protocols")
        elif self.state is GroupState.COMPLETING_REBALANCE:
            self._prepare_rebalance(f"static member {instance_id} rejoined while completing a rebalance")
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = future
        self._check_join_complete()
        return await future

    # --- rebalancing ----------------------------------------------------------------------------------
    def _rebalance_or_check(self, reason: str) -> None:
        if self.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY):
            self._prepare_rebalance(reason)
        elif self.state is GroupState.PREPARING_REBALANCE:
            self._check_join_complete()

    def _prepare_rebalance(self, reason: str) -> None:
        if self.state is GroupState.COMPLETING_REBALANCE:
            for member in self.members.values():
                member.assignment = b""
                member.answer_sync(SyncResult(ErrorCode.rebalance_in_progress))
        self._cancel_sync_timer()
        self.pending_sync.clear()
        loop = asyncio.get_running_loop()
        timeout = self._rebalance_timeout_ms()
        if self.state is GroupState.EMPTY and self._config.initial_rebalance_delay_ms > 0:
            delay = min(self._config.initial_rebalance_delay_ms, timeout)
            self._in_initial_delay = True
            self._initial_remaining_ms = max(timeout - self._config.initial_rebalance_delay_ms, 0)
            self._new_member_added = False
        else:
            delay = timeout
            self._in_initial_delay = False
        if self._join_timer is not None:
            self._join_timer.cancel()
        self._join_timer = loop.call_later(delay / 1000, self._on_join_timer)
        log.info("group %s: preparing rebalance (generation %d): %s", self.group_id, self.generation, reason)
        self._set_state(GroupState.PREPARING_REBALANCE)
        self._check_join_complete()

    def _on_join_timer(self) -> None:
        self._join_timer = None
        if self.state is not GroupState.PREPARING_REBALANCE:
            return
        if self._in_initial_delay and self._new_member_added and self._initial_remaining_ms > 0:
            delay = min(self._config.initial_rebalance_delay_ms, self._initial_remaining_ms)
            self._initial_remaining_ms = max(self._initial_remaining_ms - self._config.initial_rebalance_delay_ms, 0)
            self._new_member_added = False
            self._join_timer = asyncio.get_running_loop().call_later(delay / 1000, self._on_join_timer)
            return
        self._complete_join()

    def _check_join_complete(self) -> None:
        if self.state is not GroupState.PREPARING_REBALANCE or self._in_initial_delay:
            return
        if not self.pending_members and all(m.awaiting_join for m in self.members.values()):
            self._complete_join()

    def _complete_join(self) -> None:
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
        self._in_initial_delay = False
        for member in list(self.members.values()):
            if not member.awaiting_join and member.group_instance_id is None:
                self._remove_member(member.member_id, ErrorCode.unknown_member_id)
        if not self.members:
            self.generation += 1
            self.protocol_name = None
            self.leader_id = None
            self._set_state(GroupState.EMPTY)
            log.info("group %s: generation %d with no members", self.group_id, self.generation)
            self._shard.spawn(self._store_quietly())
            return
        leader = self.members.get(self.leader_id or "")
        if leader is None or not leader.awaiting_join:
            joined = next((m for m in self.members.values() if m.awaiting_join), None)
            if joined is None:  # only static members that never rejoined: wait for them (or their expiry)
                self._join_timer = asyncio.get_running_loop().call_later(
                    self._rebalance_timeout_ms() / 1000, self._on_join_timer
                )
                return
            self.leader_id = joined.member_id
        self.generation += 1
        self.protocol_name = self._select_protocol()
        self._set_state(GroupState.COMPLETING_REBALANCE)
        self.pending_sync = set(self.members)
        log.info(
            "group %s: generation %d, protocol %s, leader %s, %d members",
            self.group_id, self.generation, self.protocol_name, self.leader_id, len(self.members),
        )
        for member in self.members.values():
            if member.awaiting_join:
                member.answer_join(self._current_join_result(member, leader_view=member.member_id == self.leader_id))
            self._schedule_expiry(member)
        timeout = self._rebalance_timeout_ms()
        self._sync_timer = asyncio.get_running_loop().call_later(
            timeout / 1000, self._on_sync_timer, self.generation
        )

    def _on_sync_timer(self, generation: int) -> None:
        self._sync_timer = None
        if generation != self.generation or not self.pending_sync:
            return
        if self.state not in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            return
        missing = sorted(self.pending_sync)
        log.info("group %s: members %s did not sync within the rebalance timeout", self.group_id, missing)
        for member_id in missing:
            self._remove_member(member_id, ErrorCode.rebalance_in_progress)
        self.pending_sync.clear()
        self._prepare_rebalance("members did not sync")

    def _cancel_sync_timer(self) -> None:
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None

    # --- SyncGroup ------------------------------------------------------------------------------------
    async def sync(
        self,
        member_id: str,
        group_instance_id: str | None,
        generation: int,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: dict[str, bytes],
    ) -> SyncResult:
        """Handle a SyncGroup; followers wait for the leader's assignment to be stored."""
        if self.state is GroupState.DEAD:
            return SyncResult(ErrorCode.coordinator_not_available)
        try:
            member = self._validate_member(member_id, group_instance_id)
        except GroupError as e:
            return SyncResult(e.code)
        if generation != self.generation:
            return SyncResult(ErrorCode.illegal_generation)
        if (protocol_type is not None and protocol_type != self._protocol_type) or (
            protocol_name is not None and protocol_name != self.protocol_name
        ):
            return SyncResult(ErrorCode.inconsistent_group_protocol)
        if self.state is GroupState.PREPARING_REBALANCE:
            return SyncResult(ErrorCode.rebalance_in_progress)
        self._schedule_expiry(member)
        self.pending_sync.discard(member_id)
        if self.state is GroupState.STABLE:
            return SyncResult(ErrorCode.none, member.assignment, self._protocol_type, self.protocol_name)
        if self.state is not GroupState.COMPLETING_REBALANCE:
            return SyncResult(ErrorCode.unknown_member_id)
        member.answer_sync(SyncResult(ErrorCode.rebalance_in_progress))  # superseded sync
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        member.sync_future = future
        if member_id == self.leader_id and self._storing != self.generation:
            self._storing = self.generation
            self._shard.spawn(self._store_assignment(self.generation, assignments))
        return await future

    async def _store_assignment(self, generation: int, assignments: dict[str, bytes]) -> None:
        error = ErrorCode.none
        await self.wait_converted()
        if self.state is GroupState.DEAD:
            return  # converted into a consumer group meanwhile: its members were told to rejoin
        try:
            await self._shard.write([self._metadata_record(assignments)])
        except GroupError as e:
            error = e.code
        if self.state is not GroupState.COMPLETING_REBALANCE or generation != self.generation:
            return  # a new rebalance began meanwhile; its own store follows
        if error is not ErrorCode.none:
            for member in self.members.values():
                member.assignment = b""
                member.answer_sync(SyncResult(error))
            self._prepare_rebalance(f"storing the assignment failed: {error.name}")
            return
        for member in self.members.values():
            member.assignment = assignments.get(member.member_id, b"")
            member.answer_sync(SyncResult(ErrorCode.none, member.assignment, self._protocol_type, self.protocol_name))
        self._set_state(GroupState.STABLE)
        log.info("group %s: stable at generation %d", self.group_id, self.generation)

    async def _store_quietly(self) -> None:
        await self.wait_converted()
        if self.state is GroupState.DEAD:
            return
        try:
            await self._shard.write([self._metadata_record()])
        except GroupError as e:
            log.warning("group %s: storing generation %d failed: %s", self.group_id, self.generation, e)

    # --- Heartbeat and LeaveGroup ---------------------------------------------------------------------
    def heartbeat(self, member_id: str, group_instance_id: str | None, generation: int) -> ErrorCode:
        if self.state is GroupState.DEAD:
            return ErrorCode.coordinator_not_available
        try:
            member = self._validate_member(member_id, group_instance_id)
        except GroupError as e:
            return e.code
        if generation != self.generation:
            return ErrorCode.illegal_generation
        if self.state is GroupState.EMPTY:
            return ErrorCode.unknown_member_id
        self._schedule_expiry(member)
        if self.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(self, members: list[tuple[str, str | None]]) -> list[ErrorCode]:
        """Remove members (LeaveGroup); one error per member. Raises GroupError for the whole group."""
        if self.state is GroupState.DEAD:
            raise GroupError(ErrorCode.coordinator_not_available, "group is being deleted")
        results: list[ErrorCode] = []
        removed = False
        for member_id, instance_id in members:
            target = member_id
            if instance_id is not None:
                current = self.static_members.get(instance_id)
                if current is None:
                    results.append(ErrorCode.unknown_member_id)
                    continue
                if member_id and member_id != current:
                    results.append(ErrorCode.fenced_instance_id)
                    continue
                target = current
            elif member_id in self.pending_members:
                self.pending_members.pop(member_id).cancel()
                results.append(ErrorCode.none)
                removed = True
                continue
            if target not in self.members:
                results.append(ErrorCode.unknown_member_id)
                continue
            log.info("group %s: member %s left", self.group_id, target)
            self._remove_member(target, ErrorCode.unknown_member_id)
            results.append(ErrorCode.none)
            removed = True
        if removed:
            self._members_changed("members left")
        return results

    def _members_changed(self, reason: str) -> None:
        if self.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(reason)
        elif self.state is GroupState.PREPARING_REBALANCE:
            self._check_join_complete()

    # --- KIP-848 online migration -----------------------------------------------------------------------
    def metadata_record(self) -> tuple[bytes, bytes | None]:
        """The group's metadata record as it stands (members with their current assignments)."""
        return self._metadata_record()

    def begin_conversion(self) -> None:
        """An upgrade to a consumer group is being written: hold requests (and this group's own writes,
        which must not land after the conversion records) until ``converted`` or ``conversion_failed``."""
        if self.converting is None:
            self.converting = asyncio.get_running_loop().create_future()

    def conversion_failed(self) -> None:
        """The upgrade was not written: the group carries on as it was."""
        fut, self.converting = self.converting, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def converted(self) -> None:
        """The group is now a consumer group: members waiting on a join or sync are told to rejoin (they
        are then served as classic members of the consumer group), timers stop, this object is retired."""
        for member in self.members.values():
            member.answer_join(JoinResult(ErrorCode.rebalance_in_progress, member.member_id))
            member.answer_sync(SyncResult(ErrorCode.rebalance_in_progress))
        self.shutdown()
        self._set_state(GroupState.DEAD)
        log.info("group %s: converted to a consumer group at generation %d", self.group_id, self.generation)
        self.conversion_failed()  # releases the waiters; the group id now leads to the consumer group

    async def wait_converted(self) -> None:
        """Until a conversion in progress is over (either way)."""
        if self.converting is not None:
            await asyncio.shield(self.converting)

    @classmethod
    def downgraded(cls, group_id: str, shard: GroupStore, generation: int, members: list[ClassicMember]) -> Self:
        """The classic group a consumer group becomes when its last consumer-protocol member leaves (Kafka's
        ``ClassicGroup.fromConsumerGroup``): Stable at the consumer group's epoch, its members with every
        protocol they offered, the first one leader, the protocol chosen as a rebalance would. The caller sets
        each member's assignment, then ``start_after_downgrade`` once the records are durable."""
        group = cls(group_id, shard)
        group.generation = generation
        group._protocol_type = "consumer"
        group.state = GroupState.STABLE
        for member in members:
            group.members[member.member_id] = member
            if member.group_instance_id is not None:
                group.static_members[member.group_instance_id] = member.member_id
        group.leader_id = members[0].member_id if members else None
        group.protocol_name = group._select_protocol()
        return group

    def start_after_downgrade(self, rebalance: bool = True) -> None:
        """Installed in place of the consumer group: sessions start now and a rebalance begins, so every
        member rejoins and the leader assigns client-side again (not when a static member's replacement
        caused the downgrade: it takes over the old member's assignment, as in Kafka)."""
        for member in self.members.values():
            self._schedule_expiry(member)
        if rebalance:
            self._prepare_rebalance("converted from a consumer group")
        else:
            log.info("group %s: converted from a consumer group, stable at generation %d",
                     self.group_id, self.generation)
