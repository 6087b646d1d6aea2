"""Transaction admin operations over the Kafka protocol, as kafka-transactions.sh (KIP-664) performs them.

``list_transactions`` asks every broker (ListTransactions: each coordinator knows only its own transactional
ids), ``describe_transaction`` asks the id's coordinator (FindCoordinator key type 1, DescribeTransactions),
``describe_producers`` asks a partition's leader (DescribeProducers), and ``abort_transaction`` writes an ABORT
marker for one producer on one partition by sending WriteTxnMarkers to the partition's leader — what an operator
does to a hanging transaction, one the coordinator no longer knows and so never ends, which holds the
partition's last stable offset (and every read_committed consumer) back.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import (
    COORDINATOR_MOVED,
    TRANSACTION_KEY,
    BrokerUnreachable,
    ClientError,
    KafkaClient,
    KafkaError,
    Node,
    error_name,
    request_module,
)
from brokers.handlers.base import make

DESCRIBE_PRODUCERS, DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS, WRITE_TXN_MARKERS = 61, 65, 66, 27
NO_START = datetime.datetime.fromtimestamp(0, datetime.UTC)


@dataclass(frozen=True, slots=True)
class ListedTransaction:
    """One transactional id as ListTransactions reports it, with the broker that coordinates it."""

    transactional_id: str
    producer_id: int
    state: str
    coordinator: int


@dataclass(frozen=True, slots=True)
class TransactionDescription:
    """DescribeTransactions of one transactional id (start -1: no transaction open)."""

    transactional_id: str
    coordinator: Node
    state: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    start_ms: int
    partitions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ProducerDescription:
    """One producer a partition remembers (DescribeProducers); ``txn_start_offset`` -1: no open transaction."""

    producer_id: int
    producer_epoch: int
    last_sequence: int
    last_timestamp: int
    coordinator_epoch: int
    txn_start_offset: int


async def list_transactions(
    client: KafkaClient, states: Sequence[str] = (), producer_ids: Sequence[int] = (), duration_ms: int = -1
) -> tuple[list[ListedTransaction], dict[int, str]]:
    """Every broker's transactions (filtered as asked) and the brokers that could not answer (id -> why)."""
    await client.metadata([])
    found: list[ListedTransaction] = []
    failed: dict[int, str] = {}
    for node_id in sorted(client.nodes):
        try:
            conn = await client.node(node_id)
            version = conn.version(LIST_TRANSACTIONS, 0, 1)
            if duration_ms >= 0 and version < 1:
                raise ClientError(f"broker {node_id} cannot filter by duration (ListTransactions v1)")
            mod = request_module(LIST_TRANSACTIONS, version)
            resp: Any = await conn.send(make(
                mod.ListTransactionsRequest, state_filters=tuple(states), producer_id_filters=tuple(producer_ids),
                duration_filter=duration_ms,
            ))
        except ClientError as e:
            failed[node_id] = str(e)
            continue
        if resp.error_code != ErrorCode.none:
            failed[node_id] = error_name(resp.error_code)
            continue
        found.extend(
            ListedTransaction(t.transactional_id, int(t.producer_id), t.transaction_state, node_id)
            for t in resp.transaction_states
        )
    found.sort(key=lambda t: t.transactional_id)
    return found, failed


async def describe_transaction(client: KafkaClient, transactional_id: str) -> TransactionDescription:
    """The transactional id's state at its coordinator; retried while the coordinator moves or loads.

    Raises KafkaError (TRANSACTIONAL_ID_NOT_FOUND for an id the coordinator does not know, ...)."""
    deadline = time.monotonic() + client.timeout
    delay = 0.05
    while True:
        try:
            node = (await client.find_coordinators([transactional_id], TRANSACTION_KEY))[transactional_id]
            conn = await client.connect(node.host, node.port)
            mod = request_module(DESCRIBE_TRANSACTIONS, conn.version(DESCRIBE_TRANSACTIONS, 0, 0))
            resp: Any = await conn.send(make(mod.DescribeTransactionsRequest, transactional_ids=(transactional_id,)))
            (state,) = resp.transaction_states
            code = state.error_code
        except BrokerUnreachable:
            code = ErrorCode.coordinator_not_available
        if code == ErrorCode.none:
            start = state.transaction_start_time
            return TransactionDescription(
                transactional_id, node, state.transaction_state, int(state.producer_id), int(state.producer_epoch),
                int(state.transaction_timeout.total_seconds() * 1000),
                -1 if start is None or start <= NO_START else int(start.timestamp() * 1000),
                tuple((t.topic, int(p)) for t in state.topics for p in t.partitions),
            )
        if code not in COORDINATOR_MOVED or time.monotonic() + delay > deadline:
            raise KafkaError(code, f"transactional id {transactional_id!r}: {error_name(code)}")
        client.forget_coordinator(transactional_id, TRANSACTION_KEY)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _leader(client: KafkaClient, topic: str, partition: int) -> int:
    leaders = (await client.partitions([topic])).get(topic)
    if leaders is None:
        raise KafkaError(ErrorCode.unknown_topic_or_partition, f"topic '{topic}' does not exist")
    if partition not in leaders:
        raise KafkaError(ErrorCode.unknown_topic_or_partition, f"topic '{topic}' has no partition {partition}")
    leader = leaders[partition]
    if leader < 0:
        raise KafkaError(ErrorCode.leader_not_available, f"{topic}:{partition} has no leader now")
    return leader


async def describe_producers(client: KafkaClient, topic: str, partition: int) -> list[ProducerDescription]:
    """The producers the partition's leader remembers. Raises KafkaError."""
    leader = await _leader(client, topic, partition)
    found = (await _describe_at(client, leader, [(topic, partition)]))[(topic, partition)]
    if isinstance(found, KafkaError):
        raise found
    return found


async def describe_producers_led_by(
    client: KafkaClient, by_leader: dict[int, list[tuple[str, int]]]
) -> dict[tuple[str, int], list[ProducerDescription] | KafkaError]:
    """DescribeProducers for many partitions: one request per leader (``by_leader``: leader -> partitions)."""
    out: dict[tuple[str, int], list[ProducerDescription] | KafkaError] = {}
    for leader, tps in sorted(by_leader.items()):
        out.update(await _describe_at(client, leader, tps))
    return out


async def _describe_at(
    client: KafkaClient, leader: int, tps: list[tuple[str, int]]
) -> dict[tuple[str, int], list[ProducerDescription] | KafkaError]:
    conn = await client.node(leader)
    mod = request_module(DESCRIBE_PRODUCERS, conn.version(DESCRIBE_PRODUCERS, 0, 0))
    by_topic: dict[str, list[int]] = {}
    for topic, partition in tps:
        by_topic.setdefault(topic, []).append(partition)
    resp: Any = await conn.send(make(mod.DescribeProducersRequest, topics=tuple(
        make(mod.TopicRequest, name=t, partition_indexes=tuple(ps)) for t, ps in by_topic.items()
    )))
    out: dict[tuple[str, int], list[ProducerDescription] | KafkaError] = {
        tp: KafkaError(ErrorCode.unknown_server_error, f"{tp[0]}:{tp[1]}: the leader's answer left it out")
        for tp in tps
    }
    for t in resp.topics:
        for p in t.partitions:
            tp = (t.name, int(p.partition_index))
            if tp not in out:
                continue
            if p.error_code != ErrorCode.none:
                detail = f" ({p.error_message})" if p.error_message else ""
                out[tp] = KafkaError(p.error_code, f"{tp[0]}:{tp[1]}: {error_name(p.error_code)}{detail}")
                continue
            out[tp] = [
                ProducerDescription(int(s.producer_id), int(s.producer_epoch), int(s.last_sequence),
                                    int(s.last_timestamp), int(s.coordinator_epoch), int(s.current_txn_start_offset))
                for s in p.active_producers
            ]
    return out


async def producer_at(client: KafkaClient, topic: str, partition: int, start_offset: int) -> ProducerDescription:
    """The producer whose open transaction on the partition starts at ``start_offset`` (kafka-transactions'
    ``abort --start-offset``). Raises ClientError when there is none."""
    for p in await describe_producers(client, topic, partition):
        if p.txn_start_offset == start_offset:
            return p
    raise ClientError(f"no open transaction starts at offset {start_offset} of {topic}:{partition}")


async def abort_transaction(
    client: KafkaClient, topic: str, partition: int, producer_id: int, producer_epoch: int, coordinator_epoch: int
) -> ErrorCode:
    """WriteTxnMarkers(ABORT) for one producer on one partition, sent to its leader; the partition's answer."""
    conn = await client.node(await _leader(client, topic, partition))
    mod = request_module(WRITE_TXN_MARKERS, conn.version(WRITE_TXN_MARKERS, 1, 1))
    marker = make(
        mod.WritableTxnMarker, producer_id=producer_id, producer_epoch=producer_epoch, transaction_result=False,
        coordinator_epoch=max(coordinator_epoch, 0),
        topics=(make(mod.WritableTxnMarkerTopic, name=topic, partition_indexes=(partition,)),),
    )
    resp: Any = await conn.send(make(mod.WriteTxnMarkersRequest, markers=(marker,)))
    for m in resp.markers:
        for t in m.topics:
            for p in t.partitions:
                if t.name == topic and int(p.partition_index) == partition:
                    code: ErrorCode = p.error_code
                    return code
    return ErrorCode.unknown_server_error
