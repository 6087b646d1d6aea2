"""Transaction markers on the partitions this broker leads: the partition side of a transaction's second phase.

``write_markers`` appends one COMMIT or ABORT control batch to each listed partition this broker serves and
waits until every one is durable; the coordinator (brokers/transactions) calls it for partitions it leads
itself and the WriteTxnMarkers handler (API 27) for requests from a coordinator elsewhere. For a
``__consumer_offsets`` partition the group coordinator then applies or drops the producer's pending
transactional offsets (``complete_transaction``) — only after the marker is durable, so a group coordinator
that moves replays the same outcome from the log.

The seams to the coordinators are Protocols here, so the partition side runs (and is tested) before and
without them: ``verifier_of`` is None on a broker with no transaction coordinator, and a group coordinator
without ``complete_transaction`` is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kio.schema.errors import ErrorCode

from brokers.log.types import LogError

if TYPE_CHECKING:
    import asyncio

    from brokers.broker import Broker
    from brokers.log.inflight import AppendResult

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"


@runtime_checkable
class PartitionVerifier(Protocol):
    """KIP-890 part 1: the transaction coordinator's answer to "is this partition in the producer's open
    transaction" (ErrorCode.none: yes); with ``add`` (part 2, a TV2 producer) the partition is added to it
    instead. ``broker.transactions`` satisfies it."""

    async def verify_partition(
        self, transactional_id: str, producer_id: int, producer_epoch: int, topic: str, partition: int,
        add: bool = False,
    ) -> ErrorCode: ...


@runtime_checkable
class TransactionCompleter(Protocol):
    """The group coordinator's end of a transaction on one offsets partition (``broker.groups``)."""

    async def complete_transaction(self, partition: int, producer_id: int, commit: bool) -> None: ...


def verifier_of(broker: Broker) -> PartitionVerifier | None:
    """The broker's transaction coordinator, if it has one (None: transactional writes are not verified)."""
    found = getattr(broker, "transactions", None)
    return found if isinstance(found, PartitionVerifier) else None


async def write_markers(
    broker: Broker,
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int,
    partitions: Sequence[tuple[str, int]],
) -> dict[tuple[str, int], ErrorCode]:
    """Write the marker to every listed partition this broker serves, wait until each is durable; the error of
    each partition (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, INVALID_PRODUCER_EPOCH for a marker
    older than the partition's producer epoch, NOT_ENOUGH_REPLICAS/KAFKA_STORAGE_ERROR while bookies cannot
    take it: the caller retries those)."""
    results: dict[tuple[str, int], ErrorCode] = {}
    pending: list[tuple[tuple[str, int], asyncio.Future[AppendResult]]] = []
    for name, index in partitions:
        key = (name, index)
        topic = broker.topics.get(name)
        if topic is None or not 0 <= index < topic.partitions:
            results[key] = ErrorCode.unknown_topic_or_partition
            continue
        try:
            plog = await broker.serving_log(topic.topic_id, index)
            pending.append((key, await plog.write_marker(producer_id, producer_epoch, commit, coordinator_epoch)))
        except LogError as e:
            results[key] = e.code
    groups = broker.groups
    for key, future in pending:
        try:
            await future
        except LogError as e:
            results[key] = e.code
            continue
        results[key] = ErrorCode.none
        if key[0] == OFFSETS_TOPIC and isinstance(groups, TransactionCompleter):
            try:
                await groups.complete_transaction(key[1], producer_id, commit)
            except Exception:  # the marker is durable: a replay of the offsets log applies it; retry meanwhile
                log.exception("completing producer %d's offsets on %s/%d failed", producer_id, *key)
                results[key] = ErrorCode.not_enough_replicas
    return results
