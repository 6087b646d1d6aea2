"""Raw-wire helpers for the transaction coordinator's tests (tests/e2e, tests/cluster): each request is built
with kio's classes and sent over brokers/cli/client.py's ``Connection``, so a test picks the exact API version a
client would send and sees that version's fields and error codes."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module
from brokers.groups.records import partition_for
from brokers.handlers.base import make, ms

from . import kafka_wire as kw

FIND_COORDINATOR, INIT_PRODUCER_ID, ADD_PARTITIONS, ADD_OFFSETS, END_TXN = 10, 22, 24, 25, 26
DESCRIBE_TXNS, LIST_TXNS, METADATA = 65, 66, 3
RETRIABLE = {ErrorCode.coordinator_load_in_progress, ErrorCode.coordinator_not_available,
             ErrorCode.concurrent_transactions, ErrorCode.not_coordinator}
WAIT_S = 60.0  # a hang guard for polling loops, never a timing assertion
CONTROL = 0x20
TRANSACTIONAL = 0x10
COMMIT, ABORT = 1, 0


def run(bootstrap: str, body: Callable[[Connection], Awaitable[None]]) -> None:
    async def main() -> None:
        host, port = bootstrap.split(":")
        conn = await Connection.open(host, int(port))
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


async def send(conn: Connection, api_key: int, version: int, cls: str, **fields: Any) -> Any:
    mod = request_module(api_key, version)
    return await conn.send(make(getattr(mod, cls), **fields))


async def until(call: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """Repeat ``call`` until ``done(answer)`` (retriable coordinator answers, background completion)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = await call()
        if done(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def init(conn: Connection, txn_id: str, timeout_ms: int = 60_000, version: int = 4,
                pid: int = -1, epoch: int = -1) -> Any:
    return await until(
        lambda: send(conn, INIT_PRODUCER_ID, version, "InitProducerIdRequest", transactional_id=txn_id,
                      transaction_timeout=ms(timeout_ms), producer_id=pid, producer_epoch=epoch),
        lambda r: r.error_code not in RETRIABLE,
    )


async def add(conn: Connection, txn_id: str, pid: int, epoch: int, topic: str, partitions: tuple[int, ...],
               version: int = 3) -> dict[int, ErrorCode]:
    mod = request_module(ADD_PARTITIONS, version)
    resp = await until(
        lambda: conn.send(make(
            mod.AddPartitionsToTxnRequest, v3_and_below_transactional_id=txn_id, v3_and_below_producer_id=pid,
            v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=(make(mod.AddPartitionsToTxnTopic, name=topic, partitions=partitions),),
        )),
        lambda r: not any(p.partition_error_code in RETRIABLE for t in r.results_by_topic_v3_and_below
                          for p in t.results_by_partition),
    )
    return {int(p.partition_index): p.partition_error_code for t in resp.results_by_topic_v3_and_below
            for p in t.results_by_partition}


async def end(conn: Connection, txn_id: str, pid: int, epoch: int, commit: bool, version: int = 3) -> ErrorCode:
    resp = await until(
        lambda: send(conn, END_TXN, version, "EndTxnRequest", transactional_id=txn_id, producer_id=pid,
                      producer_epoch=epoch, committed=commit),
        lambda r: r.error_code not in RETRIABLE,
    )
    code: ErrorCode = resp.error_code
    return code


async def describe(conn: Connection, txn_id: str) -> Any:
    resp = await send(conn, DESCRIBE_TXNS, 0, "DescribeTransactionsRequest", transactional_ids=(txn_id,))
    return resp.transaction_states[0]


async def settled(conn: Connection, txn_id: str, state: str) -> Any:
    return await until(lambda: describe(conn, txn_id), lambda s: s.transaction_state == state)


async def txn_partition_epoch(conn: Connection, txn_id: str, partitions: int) -> int:
    """The leader epoch of the id's ``__transaction_state`` partition, from Metadata."""
    partition = partition_for(txn_id, partitions)
    mod = request_module(METADATA, 9)
    wanted = (make(mod.MetadataRequestTopic, name="__transaction_state"),)
    resp = await conn.send(make(mod.MetadataRequest, topics=wanted, allow_auto_topic_creation=False,
                                include_cluster_authorized_operations=False,
                                include_topic_authorized_operations=False))
    (topic,) = resp.topics
    (p,) = [p for p in topic.partitions if p.partition_index == partition]
    return int(p.leader_epoch)


def control_markers(bootstrap: str, topic: str, partition: int) -> list[tuple[int, int, int, int]]:
    """(producer id, producer epoch, marker type, coordinator epoch) of every control batch on the partition."""
    out = []
    for b in kw.fetch_all_batches(bootstrap, topic, partition):
        if b.attributes & CONTROL:
            assert b.attributes & TRANSACTIONAL and b.base_sequence == -1
            ((_, _, key, value, _),) = b.records
            assert key is not None and value is not None
            _, kind = struct.unpack(">hh", key)
            _, coordinator_epoch = struct.unpack(">hi", value)
            out.append((b.producer_id, b.producer_epoch, kind, coordinator_epoch))
    return out
