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

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module
from brokers.handlers.base import make

from . import txn_wire as tw
from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic

TXN_PARTITIONS = 4
CONFIGS = {
    "transaction.state.log.num.partitions": str(TXN_PARTITIONS),
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "200",
    "transaction.max.timeout.ms": "300000",
}


@pytest.fixture(scope="module")
def txn_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("txn")) / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def test_find_coordinator_commit_flow_and_markers(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-commit"
    create_topic(bootstrap, topic, 2)

    async def body(conn: Connection) -> None:
        found = await tw.send(conn, tw.FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=1,
                            coordinator_keys=("tx-commit", ""))
        assert [(c.key, c.error_code, c.port) for c in found.coordinators] == [
            ("tx-commit", ErrorCode.none, txn_broker.port), ("", ErrorCode.invalid_request, -1)]
        old = await tw.send(conn, tw.FIND_COORDINATOR, 1, "FindCoordinatorRequest", key="tx-commit", key_type=1)
        assert (old.error_code, old.port) == (ErrorCode.none, txn_broker.port)

        init = await tw.init(conn, "tx-commit")
        assert init.error_code == ErrorCode.none and init.producer_epoch == 0
        pid = int(init.producer_id)
        assert await tw.add(conn, "tx-commit", pid, 0, topic, (0, 1)) == {0: ErrorCode.none, 1: ErrorCode.none}
        offsets = await tw.send(conn, tw.ADD_OFFSETS, 3, "AddOffsetsToTxnRequest", transactional_id="tx-commit",
                              producer_id=pid, producer_epoch=0, group_id="txn-wire-group")
        assert offsets.error_code == ErrorCode.none
        # KIP-890 part 1, as a partition leader asks: AddPartitionsToTxn v4 verify_only
        mod = request_module(tw.ADD_PARTITIONS, 4)
        verify = await conn.send(make(mod.AddPartitionsToTxnRequest, transactions=(make(
            mod.AddPartitionsToTxnTransaction, transactional_id="tx-commit", producer_id=pid, producer_epoch=0,
            verify_only=True, topics=(make(mod.AddPartitionsToTxnTopic, name=topic, partitions=(1,)),
                                      make(mod.AddPartitionsToTxnTopic, name="other-topic", partitions=(0,))),
        ),)))
        assert verify.error_code == ErrorCode.none
        by_tp = {(t.name, int(p.partition_index)): p.partition_error_code
                 for r in verify.results_by_transaction for t in r.topic_results for p in t.results_by_partition}
        assert by_tp == {(topic, 1): ErrorCode.none, ("other-topic", 0): ErrorCode.invalid_txn_state}

        ongoing = await tw.describe(conn, "tx-commit")
        assert (ongoing.error_code, ongoing.transaction_state, ongoing.producer_id) == (ErrorCode.none, "Ongoing", pid)
        assert {(t.topic, tuple(t.partitions)) for t in ongoing.topics} >= {(topic, (0, 1))}
        listed = await tw.send(conn, tw.LIST_TXNS, 1, "ListTransactionsRequest", state_filters=("Ongoing",),
                             producer_id_filters=(), duration_filter=-1)
        assert [(t.transactional_id, t.transaction_state) for t in listed.transaction_states] == [
            ("tx-commit", "Ongoing")]

        assert await tw.end(conn, "tx-commit", pid, 0, commit=True) == ErrorCode.none
        done = await tw.settled(conn, "tx-commit", "CompleteCommit")
        assert done.transaction_state == "CompleteCommit" and done.topics == ()
        coordinator_epoch = await tw.txn_partition_epoch(conn, "tx-commit", TXN_PARTITIONS)
        for p in (0, 1):
            assert tw.control_markers(bootstrap, topic, p) == [(pid, 0, tw.COMMIT, coordinator_epoch)]
        missing = await tw.describe(conn, "never-used")
        assert missing.error_code == ErrorCode.transactional_id_not_found

    tw.run(bootstrap, body)


def test_zombie_is_fenced_and_its_transaction_aborted(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-zombie"
    create_topic(bootstrap, topic, 1)

    async def body(conn: Connection) -> None:
        first = await tw.init(conn, "tx-zombie")
        pid = int(first.producer_id)
        assert await tw.add(conn, "tx-zombie", pid, 0, topic, (0,)) == {0: ErrorCode.none}
        # a second producer with the same transactional id: the open transaction is aborted, epoch bumped twice
        second = await tw.init(conn, "tx-zombie")
        assert (second.error_code, second.producer_id, second.producer_epoch) == (ErrorCode.none, pid, 2)
        epoch = await tw.txn_partition_epoch(conn, "tx-zombie", TXN_PARTITIONS)
        assert tw.control_markers(bootstrap, topic, 0) == [(pid, 1, tw.ABORT, epoch)]
        # the zombie (epoch 0): PRODUCER_FENCED for current versions, INVALID_PRODUCER_EPOCH for old ones
        assert await tw.add(conn, "tx-zombie", pid, 0, topic, (0,)) == {0: ErrorCode.producer_fenced}
        assert await tw.add(conn, "tx-zombie", pid, 0, topic, (0,), version=1) == {0: ErrorCode.invalid_producer_epoch}
        assert await tw.end(conn, "tx-zombie", pid, 0, commit=True) == ErrorCode.producer_fenced
        assert await tw.end(conn, "tx-zombie", pid, 0, commit=True, version=1) == ErrorCode.invalid_producer_epoch
        offsets = await tw.send(conn, tw.ADD_OFFSETS, 1, "AddOffsetsToTxnRequest", transactional_id="tx-zombie",
                              producer_id=pid, producer_epoch=0, group_id="g")
        assert offsets.error_code == ErrorCode.invalid_producer_epoch
        retry = await tw.init(conn, "tx-zombie", pid=pid, epoch=0)  # KIP-360 with a stale epoch
        assert retry.error_code == ErrorCode.producer_fenced
        # the new producer carries on
        assert await tw.add(conn, "tx-zombie", pid, 2, topic, (0,)) == {0: ErrorCode.none}
        assert await tw.end(conn, "tx-zombie", pid, 2, commit=False) == ErrorCode.none
        await tw.settled(conn, "tx-zombie", "CompleteAbort")
        bad = await tw.init(conn, "tx-zombie-timeout", timeout_ms=300_001)
        assert bad.error_code == ErrorCode.invalid_transaction_timeout

    tw.run(bootstrap, body)


def test_a_transaction_past_its_timeout_is_aborted_by_the_coordinator(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-wire-timeout"
    create_topic(bootstrap, topic, 1)

    async def body(conn: Connection) -> None:
        init = await tw.init(conn, "tx-slow", timeout_ms=500)
        pid = int(init.producer_id)
        assert await tw.add(conn, "tx-slow", pid, 0, topic, (0,)) == {0: ErrorCode.none}
        aborted = await tw.settled(conn, "tx-slow", "CompleteAbort")
        assert aborted.transaction_state == "CompleteAbort", "the coordinator never aborted the open transaction"
        assert aborted.producer_epoch == 1  # bumped: the producer is fenced
        epoch = await tw.txn_partition_epoch(conn, "tx-slow", TXN_PARTITIONS)
        assert tw.control_markers(bootstrap, topic, 0) == [(pid, 1, tw.ABORT, epoch)]
        assert await tw.end(conn, "tx-slow", pid, 0, commit=True) == ErrorCode.producer_fenced
        listed = await tw.send(conn, tw.LIST_TXNS, 0, "ListTransactionsRequest",
                               state_filters=("CompleteAbort", "Nope"), producer_id_filters=(pid,))
        assert listed.unknown_state_filters == ("Nope",)
        assert [t.transactional_id for t in listed.transaction_states] == ["tx-slow"]

    tw.run(bootstrap, body)


def test_transaction_state_survives_kill_9_and_the_timeout_still_fires(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """The coordinator's state is only what ``__transaction_state`` holds: after kill -9 and a restart the open
    transaction is replayed (with its start time), served, and aborted when its timeout passes."""
    b = broker_factory(CONFIGS)
    topic = "txn-wire-restart"
    create_topic(b.bootstrap, topic, 1)
    begun: list[int] = []

    async def before(conn: Connection) -> None:
        committed = await tw.init(conn, "tx-restart-done")
        assert await tw.add(conn, "tx-restart-done", int(committed.producer_id), 0, topic, (0,)) == {
            0: ErrorCode.none}
        assert await tw.end(conn, "tx-restart-done", int(committed.producer_id), 0, commit=True) == ErrorCode.none
        await tw.settled(conn, "tx-restart-done", "CompleteCommit")
        begun.append(int(committed.producer_id))
        init = await tw.init(conn, "tx-restart", timeout_ms=4000)
        pid = int(init.producer_id)
        assert await tw.add(conn, "tx-restart", pid, 0, topic, (0,)) == {0: ErrorCode.none}
        begun.append(pid)

    tw.run(b.bootstrap, before)
    b.restart(kill=True)
    done_pid, pid = begun

    async def after(conn: Connection) -> None:
        state = await tw.until(lambda: tw.describe(conn, "tx-restart"),
                               lambda s: s.error_code not in tw.RETRIABLE)
        assert (state.error_code, state.producer_id, state.producer_epoch) == (ErrorCode.none, pid, 0)
        assert state.transaction_state in ("Ongoing", "PrepareAbort", "CompleteAbort")
        done = await tw.describe(conn, "tx-restart-done")
        assert (done.transaction_state, done.producer_id) == ("CompleteCommit", done_pid)
        aborted = await tw.settled(conn, "tx-restart", "CompleteAbort")
        assert (aborted.transaction_state, aborted.producer_epoch) == ("CompleteAbort", 1)
        assert await tw.end(conn, "tx-restart", pid, 0, commit=True) == ErrorCode.producer_fenced
        assert [m[:3] for m in tw.control_markers(b.bootstrap, topic, 0)] == [
            (done_pid, 0, tw.COMMIT), (pid, 1, tw.ABORT)]

    tw.run(b.bootstrap, after)
