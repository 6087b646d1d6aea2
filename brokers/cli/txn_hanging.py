"""Finding hanging transactions, as ``kafka-transactions.sh find-hanging`` does.

A transaction *hangs* on a partition when the partition holds it open (DescribeProducers shows its start offset)
but no coordinator will ever end it there, so the partition's last stable offset stays behind it for good.
Candidates are the open transactions whose producer last wrote to the partition longer ago than the longest
transaction timeout allowed (``--max-transaction-timeout``, Kafka's ``transaction.max.timeout.ms``, 15 minutes):
a live transaction would have been ended or aborted by then. Each candidate's producer id is looked up on every
broker (ListTransactions filtered by producer id) and its transactional id described at its coordinator; the
candidate is hanging unless that coordinator still has this producer's transaction open (or being completed)
with this partition in it. ``tidelog transactions abort`` then ends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, KafkaClient, KafkaError
from brokers.cli.txn_admin import (
    ProducerDescription,
    TransactionDescription,
    describe_producers_led_by,
    describe_transaction,
    list_transactions,
)

LIVE_STATES = frozenset({"Ongoing", "PrepareCommit", "PrepareAbort"})
"""Coordinator states in which the transaction's partitions will still get their marker."""


@dataclass(frozen=True, slots=True)
class OpenTransaction:
    """A transaction a partition holds open, with the producer that opened it."""

    topic: str
    partition: int
    producer: ProducerDescription


@dataclass(frozen=True, slots=True)
class HangingTransaction:
    """An open transaction no coordinator will end on its partition, and why."""

    open: OpenTransaction
    transactional_id: str | None
    reason: str


def candidates(
    found: dict[tuple[str, int], list[ProducerDescription]], now_ms: int, max_timeout_ms: int
) -> list[OpenTransaction]:
    """Open transactions whose producer has not written to the partition for longer than ``max_timeout_ms``
    (a last timestamp of -1, unknown since a restart, counts as long ago)."""
    out = [
        OpenTransaction(topic, partition, p)
        for (topic, partition), producers in sorted(found.items())
        for p in producers
        if p.txn_start_offset >= 0 and now_ms - p.last_timestamp > max_timeout_ms
    ]
    return out


def why_hanging(txn: OpenTransaction, described: TransactionDescription | None) -> str | None:
    """Why the coordinator will never end ``txn`` on its partition; None if it will."""
    if described is None:
        return "no transactional id has this producer id"
    if described.producer_id != txn.producer.producer_id:
        return f"its transactional id now has producer id {described.producer_id}"
    if described.state not in LIVE_STATES:
        return f"its coordinator's transaction is {described.state}"
    if (txn.topic, txn.partition) not in described.partitions:
        return "the partition is not in its coordinator's open transaction"
    return None


async def find_hanging(
    client: KafkaClient, partitions: Sequence[tuple[str, int]], now_ms: int, max_timeout_ms: int
) -> tuple[list[HangingTransaction], list[str]]:
    """The hanging transactions on ``partitions``, and the partitions or brokers that could not be checked."""
    leaders = await client.partitions({t for t, _ in partitions})
    by_leader: dict[int, list[tuple[str, int]]] = {}
    problems: list[str] = []
    for topic, partition in partitions:
        leader = leaders.get(topic, {}).get(partition, -1)
        if leader < 0:
            problems.append(f"{topic}:{partition}: no leader")
        else:
            by_leader.setdefault(leader, []).append((topic, partition))
    described = await describe_producers_led_by(client, by_leader)
    found: dict[tuple[str, int], list[ProducerDescription]] = {}
    for tp, answer in described.items():
        if isinstance(answer, ClientError):
            problems.append(str(answer))
        else:
            found[tp] = answer
    open_txns = candidates(found, now_ms, max_timeout_ms)
    if not open_txns:
        return [], problems
    listed, failed = await list_transactions(client, producer_ids=sorted({t.producer.producer_id for t in open_txns}))
    problems.extend(f"broker {node}: {why}" for node, why in failed.items())
    ids = {t.producer_id: t.transactional_id for t in listed}
    descriptions: dict[str, TransactionDescription | None] = {}
    unchecked: set[str] = set()
    for tid in sorted(set(ids.values())):
        try:
            descriptions[tid] = await describe_transaction(client, tid)
        except KafkaError as e:
            if e.code != ErrorCode.transactional_id_not_found:
                problems.append(f"transactional id {tid!r}: {e}")
                unchecked.add(tid)
            descriptions[tid] = None  # gone since it was listed: nobody will end its transactions
        except ClientError as e:
            problems.append(f"transactional id {tid!r}: {e}")
            unchecked.add(tid)
    hanging: list[HangingTransaction] = []
    for txn in open_txns:
        owner = ids.get(txn.producer.producer_id)
        if owner in unchecked:
            continue  # could not be described: reported as a problem, not guessed at
        reason = why_hanging(txn, None if owner is None else descriptions[owner])
        if reason is not None:
            hanging.append(HangingTransaction(txn, owner, reason))
    return hanging, problems
