"""ElectLeaders (API 43): preferred and unclean leader elections, mapped onto ownership.

A partition has one replica here, its owner (the bookies replicate the log), so Kafka's rules for a
partition are applied to that one replica (ReplicationControlManager.electLeader):

* The *preferred* leader is the broker the partition should be on: the target of a pending move
  (``keys.reassignment``, AlterPartitionReassignments) if there is one, else the controller's assignment
  (``keys.assignment``), else the current owner (the embedded broker, which has no assignment).
* PREFERRED: the owner is the preferred broker -> ELECTION_NOT_NEEDED. Otherwise, if the preferred broker is
  live, a move pin to it is written (what AlterPartitionReassignments writes; the controller honours it and
  clears it once the target owns the partition) and the answer waits, up to the request's timeout, until
  routing shows the preferred broker leading: NONE, or REQUEST_TIMED_OUT if the move is still under way (it
  carries on). A preferred broker that is not live -> PREFERRED_LEADER_NOT_AVAILABLE.
* UNCLEAN: a partition with a leader -> ELECTION_NOT_NEEDED (as Kafka: unclean elections only fill an empty
  leadership). Without one, the preferred broker is pinned and waited for as above, or
  ELIGIBLE_LEADERS_NOT_AVAILABLE when it is not live. Nothing is ever lost by an "unclean" election here:
  the new owner recovers the log from the bookies.
* A null partition list means every partition; then, as KRaft does, partitions answered
  ELECTION_NOT_NEEDED are left out of the answer.

Unknown topics or partitions are UNKNOWN_TOPIC_OR_PARTITION; an unknown election type INVALID_REQUEST.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.routing import NO_LEADER
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from metadata.api import MetadataError
from metadata.models import Reassignment, TopicAssignment

API_KEY = 43
MIN_VERSION = 0
MAX_VERSION = 2
PREFERRED, UNCLEAN = 0, 1
MAX_WAIT_S = 60.0
"""Longest wait for elected leaders to take over, whatever the request's timeout says."""
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: ErrorCode
    message: str | None = None
    target: int | None = None
    """The broker the partition is being moved to (wait for it), or None."""


class _Election:
    """One request's elections: the pins and assignments it reads once, the pins it writes."""

    def __init__(self, ctx: RequestContext, kind: int) -> None:
        self._broker = ctx.broker
        self._kind = kind
        self._pins: dict[tuple[str, int], int] = {}
        self._assignments: dict[str, TopicAssignment | None] = {}

    async def load_pins(self) -> None:
        broker = self._broker
        for item in await broker.store.list(broker.keys.reassignments_prefix()):
            try:
                pin = Reassignment.decode(item.value)
            except (ValueError, KeyError, TypeError):
                continue
            self._pins[(pin.topic_id, pin.partition)] = pin.target

    async def _assigned(self, topic_id: str, partition: int) -> int | None:
        if topic_id not in self._assignments:
            found = await self._broker.store.get(self._broker.keys.assignment(topic_id))
            try:
                self._assignments[topic_id] = None if found is None else TopicAssignment.decode(found.value)
            except (ValueError, KeyError, TypeError):
                self._assignments[topic_id] = None
        assignment = self._assignments[topic_id]
        if assignment is None or partition >= len(assignment.owners):
            return None
        return assignment.owners[partition]

    async def elect(self, topic_id: str, partition: int) -> _Outcome:
        broker = self._broker
        leader = broker.routing.leader(topic_id, partition)
        current = None if leader is None or leader.node_id == NO_LEADER else leader.node_id
        preferred = self._pins.get((topic_id, partition))
        if preferred is None:
            preferred = await self._assigned(topic_id, partition)
        if preferred is None:
            preferred = current
        if self._kind == UNCLEAN and current is not None:
            return _Outcome(ErrorCode.election_not_needed, "The partition has a leader.")
        if current is not None and current == preferred:
            return _Outcome(ErrorCode.election_not_needed, "The preferred leader is already the leader.")
        unavailable = (
            ErrorCode.preferred_leader_not_available if self._kind == PREFERRED
            else ErrorCode.eligible_leaders_not_available
        )  # fmt: skip
        if preferred is None or broker.routing.endpoint(preferred) is None:
            return _Outcome(unavailable, f"The preferred leader {preferred} is not a live broker.")
        if self._pins.get((topic_id, partition)) != preferred:
            pin = Reassignment(topic_id, partition, preferred)
            await broker.store.put(broker.keys.reassignment(topic_id, partition), pin.encode())
            self._pins[(topic_id, partition)] = preferred
        return _Outcome(ErrorCode.none, None, preferred)


async def _wait(ctx: RequestContext, moving: dict[tuple[str, int], int], timeout_s: float) -> set[tuple[str, int]]:
    """Until routing shows every moving partition led by its target, or the timeout; the ones still moving."""
    deadline = time.monotonic() + min(max(timeout_s, 0.0), MAX_WAIT_S)
    routing = ctx.broker.routing
    left = dict(moving)
    while left:
        for key, target in list(left.items()):
            leader = routing.leader(*key)
            if leader is not None and leader.node_id == target:
                del left[key]
        if not left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    return set(left)


def _wanted(ctx: RequestContext, request: Any) -> list[tuple[str, list[int]]]:
    if request.topic_partitions is None:
        return [(t.name, list(range(t.partitions))) for t in sorted(ctx.broker.topics.all(), key=lambda t: t.name)]
    return [(t.topic, [int(p) for p in t.partitions]) for t in request.topic_partitions]


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    kind = int(getattr(request, "election_type", PREFERRED))
    everything = request.topic_partitions is None
    election = _Election(ctx, kind)
    top = ErrorCode.none
    outcomes: list[tuple[str, list[tuple[int, _Outcome]]]] = []
    if not ctx.allowed(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return make(mod.ElectLeadersResponse, throttle_time=NO_THROTTLE,
                    error_code=ErrorCode.cluster_authorization_failed, replica_election_results=())
    try:
        if kind not in (PREFERRED, UNCLEAN):
            raise ValueError(f"Unknown election type {kind}")
        await election.load_pins()
        for name, partitions in _wanted(ctx, request):
            record = ctx.broker.topics.get(name)
            results = []
            for p in partitions:
                if record is None or not 0 <= p < record.partitions:
                    outcome = _Outcome(
                        ErrorCode.unknown_topic_or_partition, "This server does not host this topic-partition."
                    )
                else:
                    outcome = await election.elect(record.topic_id, p)
                results.append((p, outcome))
            outcomes.append((name, results))
    except ValueError as e:
        top = ErrorCode.invalid_request
        outcomes = [
            (n, [(p, _Outcome(ErrorCode.invalid_request, str(e))) for p in ps]) for n, ps in _wanted(ctx, request)
        ]
    except MetadataError as e:
        top = ErrorCode.unknown_server_error
        outcomes = [(n, [(p, _Outcome(top, f"metadata store: {e}")) for p in ps]) for n, ps in _wanted(ctx, request)]
    moving = {}
    for name, results in outcomes:
        record = ctx.broker.topics.get(name)
        for p, outcome in results:
            if outcome.target is not None and record is not None:
                moving[(record.topic_id, p)] = outcome.target
    still = await _wait(ctx, moving, request.timeout.total_seconds()) if moving else set()
    topics = []
    for name, results in outcomes:
        record = ctx.broker.topics.get(name)
        parts = []
        for p, outcome in results:
            code, message = outcome.code, outcome.message
            if record is not None and (record.topic_id, p) in still:
                code, message = ErrorCode.request_timed_out, f"Moving to broker {outcome.target} is still under way."
            if everything and code == ErrorCode.election_not_needed:
                continue
            parts.append(make(mod.PartitionResult, partition_id=p, error_code=code, error_message=message))
        if parts or not everything:
            topics.append(make(mod.ReplicaElectionResult, topic=name, partition_result=tuple(parts)))
    return make(
        mod.ElectLeadersResponse, throttle_time=NO_THROTTLE, error_code=top, replica_election_results=tuple(topics)
    )
