"""The transaction coordinator over real sockets, against a ``tidelog run`` process: every request is encoded by
kio (brokers/cli/client.py's Connection) exactly as a client sends it, so each API version's own fields and
error mapping are what is tested.

FindCoordinator key type 1, InitProducerId with a transactional id, AddPartitionsToTxn (v3 as clients send it, v4
batched with ``verify_only`` as brokers do), AddOffsetsToTxn, EndTxn; the markers land on the partitions as
control batches carrying the ``__transaction_state`` partition's leader epoch; zombie fencing (PRODUCER_FENCED,
and INVALID_PRODUCER_EPOCH for old versions); a transaction left open past its timeout is aborted by the
coordinator; DescribeTransactions / ListTransactions.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module
from brokers.groups.records import partition_for
from brokers.handlers.base import make, ms

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic

FIND_COORDINATOR, INIT_PRODUCER_ID, ADD_PARTITIONS, ADD_OFFSETS, END_TXN = 10, 22, 24, 25, 26
DESCRIBE_TXNS, LIST_TXNS, METADATA = 65, 66, 3
CONFIGS = {
    "transaction.state.log.num.partitions": "4",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "200",
    "transaction.max.timeout.ms": "300000",
}
RETRIABLE = {ErrorCode.coordinator_load_in_progress, ErrorCode.coordinator_not_available,
             ErrorCode.concurrent_transactions, ErrorCode.not_coordinator}
WAIT_S = 60.0  # a hang guard for polling loops, never a timing assertion
CONTROL = 0x20
TRANSACTIONAL = 0x10


@pytest.fixture(scope="module")
def txn_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("txn")) / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def _run(bootstrap: str, body: Callable[[Connection], Awaitable[None]]) -> None:
    async def main() -> None:
        host, port = bootstrap.split(":")
        conn = await Connection.open(host, int(port))
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


async def _send(conn: Connection, api_key: int, version: int, cls: str, **fields: Any) -> Any:
    mod = request_module(api_key, version)
    return await conn.send(make(getattr(mod, cls), **fields))


async def _until(call: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """Repeat ``call`` until ``done(answer)`` (retriable coordinator answers, background completion)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = await call()
        if done(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def _init(conn: Connection, txn_id: str, timeout_ms: int = 60_000, version: int = 4,
                pid: int = -1, epoch: int = -1) -> Any:
    return await _until(
        lambda: _send(conn, INIT_PRODUCER_ID, version, "InitProducerIdRequest", transactional_id=txn_id,
                      transaction_timeout=ms(timeout_ms), producer_id=pid, producer_epoch=epoch),
        lambda r: r.error_code not in RETRIABLE,
    )


async def _add(conn: Connection, txn_id: str, pid: int, epoch: int, topic: str, partitions: tuple[int, ...],
               version: int = 3) -> dict[int, ErrorCode]:
    mod = request_module(ADD_PARTITIONS, version)
    resp = await _until(
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


async def _end(conn: Connection, txn_id: str, pid: int, epoch: int, commit: bool, version: int = 3) -> ErrorCode:
    resp = await _until(
        lambda: _send(conn, END_TXN, version, "EndTxnRequest", transactional_id=txn_id, producer_id=pid,
                      producer_epoch=epoch, committed=commit),
        lambda r: r.error_code not in RETRIABLE,
    )
    code: ErrorCode = resp.error_code
    return code


async def _describe(conn: Connection, txn_id: str) -> Any:
    resp = await _send(conn, DESCRIBE_TXNS, 0, "DescribeTransactionsRequest", transactional_ids=(txn_id,))
    return resp.transaction_states[0]


async def _settled(conn: Connection, txn_id: str, state: str) -> Any:
    return await _until(lambda: _describe(conn, txn_id), lambda s: s.transaction_state == state)


async def _txn_partition_epoch(conn: Connection, txn_id: str) -> int:
    """The leader epoch of the id's ``__transaction_state`` partition, from Metadata."""
    partition = partition_for(txn_id, int(CONFIGS["transaction.state.log.num.partitions"]))
    mod = request_module(METADATA, 9)
    wanted = (make(mod.MetadataRequestTopic, name="__transaction_state"),)
    resp = await conn.send(make(mod.MetadataRequest, topics=wanted, allow_auto_topic_creation=False,
                                include_cluster_authorized_operations=False,
                                include_topic_authorized_operations=False))
    (topic,) = resp.topics
    (p,) = [p for p in topic.partitions if p.partition_index == partition]
    return int(p.leader_epoch)


def _control_markers(bootstrap: str, topic: str, partition: int) -> list[tuple[int, int, int, int]]:
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


def test_find_coordinator_commit_flow_and_markers(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-commit"
    create_topic(bootstrap, topic, 2)

    async def body(conn: Connection) -> None:
        found = await _send(conn, FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=1,
                            coordinator_keys=("tx-commit", ""))
        assert [(c.key, c.error_code, c.port) for c in found.coordinators] == [
            ("tx-commit", ErrorCode.none, txn_broker.port), ("", ErrorCode.invalid_request, -1)]
        old = await _send(conn, FIND_COORDINATOR, 1, "FindCoordinatorRequest", key="tx-commit", key_type=1)
        assert (old.error_code, old.port) == (ErrorCode.none, txn_broker.port)

        init = await _init(conn, "tx-commit")
        assert init.error_code == ErrorCode.none and init.producer_epoch == 0
        pid = int(init.producer_id)
        assert await _add(conn, "tx-commit", pid, 0, topic, (0, 1)) == {0: ErrorCode.none, 1: ErrorCode.none}
        offsets = await _send(conn, ADD_OFFSETS, 3, "AddOffsetsToTxnRequest", transactional_id="tx-commit",
                              producer_id=pid, producer_epoch=0, group_id="txn-wire-group")
        assert offsets.error_code == ErrorCode.none
        # KIP-890 part 1, as a partition leader asks: AddPartitionsToTxn v4 verify_only
        mod = request_module(ADD_PARTITIONS, 4)
        verify = await conn.send(make(mod.AddPartitionsToTxnRequest, transactions=(make(
            mod.AddPartitionsToTxnTransaction, transactional_id="tx-commit", producer_id=pid, producer_epoch=0,
            verify_only=True, topics=(make(mod.AddPartitionsToTxnTopic, name=topic, partitions=(1,)),
                                      make(mod.AddPartitionsToTxnTopic, name="other-topic", partitions=(0,))),
        ),)))
        assert verify.error_code == ErrorCode.none
        by_tp = {(t.name, int(p.partition_index)): p.partition_error_code
                 for r in verify.results_by_transaction for t in r.topic_results for p in t.results_by_partition}
        assert by_tp == {(topic, 1): ErrorCode.none, ("other-topic", 0): ErrorCode.invalid_txn_state}

        ongoing = await _describe(conn, "tx-commit")
        assert (ongoing.error_code, ongoing.transaction_state, ongoing.producer_id) == (ErrorCode.none, "Ongoing", pid)
        assert {(t.topic, tuple(t.partitions)) for t in ongoing.topics} >= {(topic, (0, 1))}
        listed = await _send(conn, LIST_TXNS, 1, "ListTransactionsRequest", state_filters=("Ongoing",),
                             producer_id_filters=(), duration_filter=-1)
        assert [(t.transactional_id, t.transaction_state) for t in listed.transaction_states] == [
            ("tx-commit", "Ongoing")]

        assert await _end(conn, "tx-commit", pid, 0, commit=True) == ErrorCode.none
        done = await _settled(conn, "tx-commit", "CompleteCommit")
        assert done.transaction_state == "CompleteCommit" and done.topics == ()
        coordinator_epoch = await _txn_partition_epoch(conn, "tx-commit")
        for p in (0, 1):
            assert _control_markers(bootstrap, topic, p) == [(pid, 0, 1, coordinator_epoch)]
        missing = await _describe(conn, "never-used")
        assert missing.error_code == ErrorCode.transactional_id_not_found

    _run(bootstrap, body)


def test_zombie_is_fenced_and_its_transaction_aborted(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-zombie"
    create_topic(bootstrap, topic, 1)

    async def body(conn: Connection) -> None:
        first = await _init(conn, "tx-zombie")
        pid = int(first.producer_id)
        assert await _add(conn, "tx-zombie", pid, 0, topic, (0,)) == {0: ErrorCode.none}
        # a second producer with the same transactional id: the open transaction is aborted, epoch bumped twice
        second = await _init(conn, "tx-zombie")
        assert (second.error_code, second.producer_id, second.producer_epoch) == (ErrorCode.none, pid, 2)
        assert _control_markers(bootstrap, topic, 0) == [(pid, 1, 0, await _txn_partition_epoch(conn, "tx-zombie"))]
        # the zombie (epoch 0): PRODUCER_FENCED for current versions, INVALID_PRODUCER_EPOCH for old ones
        assert await _add(conn, "tx-zombie", pid, 0, topic, (0,)) == {0: ErrorCode.producer_fenced}
        assert await _add(conn, "tx-zombie", pid, 0, topic, (0,), version=1) == {0: ErrorCode.invalid_producer_epoch}
        assert await _end(conn, "tx-zombie", pid, 0, commit=True) == ErrorCode.producer_fenced
        assert await _end(conn, "tx-zombie", pid, 0, commit=True, version=1) == ErrorCode.invalid_producer_epoch
        offsets = await _send(conn, ADD_OFFSETS, 1, "AddOffsetsToTxnRequest", transactional_id="tx-zombie",
                              producer_id=pid, producer_epoch=0, group_id="g")
        assert offsets.error_code == ErrorCode.invalid_producer_epoch
        retry = await _init(conn, "tx-zombie", pid=pid, epoch=0)  # KIP-360 with a stale epoch
        assert retry.error_code == ErrorCode.producer_fenced
        # the new producer carries on
        assert await _add(conn, "tx-zombie", pid, 2, topic, (0,)) == {0: ErrorCode.none}
        assert await _end(conn, "tx-zombie", pid, 2, commit=False) == ErrorCode.none
        await _settled(conn, "tx-zombie", "CompleteAbort")
        bad = await _init(conn, "tx-zombie-timeout", timeout_ms=300_001)
        assert bad.error_code == ErrorCode.invalid_transaction_timeout

    _run(bootstrap, body)


def test_a_transaction_past_its_timeout_is_aborted_by_the_coordinator(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-timeout"
    create_topic(bootstrap, topic, 1)

    async def body(conn: Connection) -> None:
        init = await _init(conn, "tx-slow", timeout_ms=500)
        pid = int(init.producer_id)
        assert await _add(conn, "tx-slow", pid, 0, topic, (0,)) == {0: ErrorCode.none}
        aborted = await _settled(conn, "tx-slow", "CompleteAbort")
        assert aborted.transaction_state == "CompleteAbort", "the coordinator never aborted the open transaction"
        assert aborted.producer_epoch == 1  # bumped: the producer is fenced
        assert _control_markers(bootstrap, topic, 0) == [(pid, 1, 0, await _txn_partition_epoch(conn, "tx-slow"))]
        assert await _end(conn, "tx-slow", pid, 0, commit=True) == ErrorCode.producer_fenced
        listed = await _send(conn, LIST_TXNS, 0, "ListTransactionsRequest", state_filters=("CompleteAbort", "Nope"),
                             producer_id_filters=(pid,))
        assert listed.unknown_state_filters == ("Nope",)
        assert [t.transactional_id for t in listed.transaction_states] == ["tx-slow"]

    _run(bootstrap, body)
