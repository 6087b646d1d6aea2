"""TxnOffsetCommit over real sockets against a ``tidelog run`` process (requests encoded by kio, as clients send
them): offsets committed inside a transaction are invisible until EndTxn commits them (OffsetFetch
``require_stable`` answers UNSTABLE_OFFSET_COMMIT meanwhile), dropped when it aborts, and an open transaction's
offsets survive a kill -9 of the broker (the offsets log is replayed with its transactional batch) and are
committed by the marker written after the restart. Also: the offsets partition must be in the transaction
(KIP-890 verification) and a fenced epoch is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module
from brokers.handlers.base import make

from . import txn_wire as tw
from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic

TXN_OFFSET_COMMIT, OFFSET_FETCH = 28, 9
GROUP_RETRIABLE = {ErrorCode.coordinator_load_in_progress, ErrorCode.coordinator_not_available,
                   ErrorCode.not_coordinator}
CONFIGS = {"transaction.state.log.num.partitions": "2", "offsets.topic.num.partitions": "2"}


@pytest.fixture
def txn_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


async def _txn_commit(conn: Connection, txn_id: str, pid: int, epoch: int, group: str, topic: str,
                      offsets: dict[int, int], version: int = 3) -> dict[int, ErrorCode]:
    mod = request_module(TXN_OFFSET_COMMIT, version)
    parts = tuple(make(mod.TxnOffsetCommitRequestPartition, partition_index=p, committed_offset=o,
                       committed_leader_epoch=-1, committed_metadata=f"m{o}") for p, o in offsets.items())
    resp: Any = await tw.until(
        lambda: conn.send(make(
            mod.TxnOffsetCommitRequest, transactional_id=txn_id, group_id=group, producer_id=pid,
            producer_epoch=epoch, generation_id=-1, member_id="", group_instance_id=None,
            topics=(make(mod.TxnOffsetCommitRequestTopic, name=topic, partitions=parts),),
        )),
        lambda r: not any(p.error_code in GROUP_RETRIABLE for t in r.topics for p in t.partitions),
    )
    return {int(p.partition_index): p.error_code for t in resp.topics for p in t.partitions}


async def _fetch(conn: Connection, group: str, topic: str, stable: bool) -> dict[int, tuple[int, ErrorCode]]:
    async def once() -> Any:
        return await tw.send(conn, OFFSET_FETCH, 7, "OffsetFetchRequest", group_id=group, require_stable=stable,
                             topics=(make(request_module(OFFSET_FETCH, 7).OffsetFetchRequestTopic,
                                          name=topic, partition_indexes=(0, 1)),))

    resp = await tw.until(once, lambda r: r.error_code not in GROUP_RETRIABLE)
    assert resp.error_code == ErrorCode.none
    return {int(p.partition_index): (int(p.committed_offset), p.error_code) for t in resp.topics for p in t.partitions}


async def _add_offsets(conn: Connection, txn_id: str, pid: int, epoch: int, group: str) -> ErrorCode:
    resp = await tw.until(
        lambda: tw.send(conn, tw.ADD_OFFSETS, 3, "AddOffsetsToTxnRequest", transactional_id=txn_id,
                        producer_id=pid, producer_epoch=epoch, group_id=group),
        lambda r: r.error_code not in tw.RETRIABLE,
    )
    code: ErrorCode = resp.error_code
    return code


UNSTABLE = ErrorCode.unstable_offset_commit


def test_txn_offsets_commit_abort_and_survive_a_kill(txn_broker: BrokerProcess) -> None:
    topic, group, txn_id = "txo-in", "txo-group", "txo-1"
    create_topic(txn_broker.bootstrap, topic, 2)
    state: dict[str, int] = {}

    async def before_kill(conn: Connection) -> None:
        init = await tw.init(conn, txn_id)
        pid, epoch = int(init.producer_id), int(init.producer_epoch)
        state.update(pid=pid, epoch=epoch)
        # 1. committed
        assert await _add_offsets(conn, txn_id, pid, epoch, group) == ErrorCode.none
        assert await _txn_commit(conn, txn_id, pid, epoch, group, topic, {0: 10, 1: 11}) == {
            0: ErrorCode.none, 1: ErrorCode.none}
        assert await _fetch(conn, group, topic, stable=False) == {0: (-1, ErrorCode.none), 1: (-1, ErrorCode.none)}
        assert await _fetch(conn, group, topic, stable=True) == {0: (-1, UNSTABLE), 1: (-1, UNSTABLE)}
        assert await tw.end(conn, txn_id, pid, epoch, commit=True) == ErrorCode.none
        await tw.settled(conn, txn_id, "CompleteCommit")
        assert await _fetch(conn, group, topic, stable=True) == {0: (10, ErrorCode.none), 1: (11, ErrorCode.none)}
        # 2. aborted
        assert await _add_offsets(conn, txn_id, pid, epoch, group) == ErrorCode.none
        assert await _txn_commit(conn, txn_id, pid, epoch, group, topic, {0: 99}) == {0: ErrorCode.none}
        assert await tw.end(conn, txn_id, pid, epoch, commit=False) == ErrorCode.none
        await tw.settled(conn, txn_id, "CompleteAbort")
        assert await _fetch(conn, group, topic, stable=True) == {0: (10, ErrorCode.none), 1: (11, ErrorCode.none)}
        # 3. left open across a kill -9
        assert await _add_offsets(conn, txn_id, pid, epoch, group) == ErrorCode.none
        assert await _txn_commit(conn, txn_id, pid, epoch, group, topic, {1: 21}) == {1: ErrorCode.none}

    async def after_kill(conn: Connection) -> None:
        pid, epoch = state["pid"], state["epoch"]
        # replayed: the open transaction's offset is pending again, the committed ones are there
        assert await _fetch(conn, group, topic, stable=True) == {0: (10, ErrorCode.none), 1: (-1, UNSTABLE)}
        assert await _fetch(conn, group, topic, stable=False) == {0: (10, ErrorCode.none), 1: (11, ErrorCode.none)}
        assert await tw.end(conn, txn_id, pid, epoch, commit=True) == ErrorCode.none
        await tw.settled(conn, txn_id, "CompleteCommit")
        assert await _fetch(conn, group, topic, stable=True) == {0: (10, ErrorCode.none), 1: (21, ErrorCode.none)}

    tw.run(txn_broker.bootstrap, before_kill)
    txn_broker.restart(kill=True)
    tw.run(txn_broker.bootstrap, after_kill)


def test_txn_offset_commit_needs_the_offsets_partition_in_the_transaction(txn_broker: BrokerProcess) -> None:
    topic, group, txn_id = "txo-verify", "txo-verify-group", "txo-2"
    create_topic(txn_broker.bootstrap, topic, 1)

    async def body(conn: Connection) -> None:
        init = await tw.init(conn, txn_id)
        pid, epoch = int(init.producer_id), int(init.producer_epoch)
        refused = await _txn_commit(conn, txn_id, pid, epoch, group, topic, {0: 5})  # no AddOffsetsToTxn
        assert refused == {0: ErrorCode.invalid_txn_state}, refused
        assert await _fetch(conn, group, topic, stable=True) == {0: (-1, ErrorCode.none), 1: (-1, ErrorCode.none)}
        again = await tw.init(conn, txn_id)  # a new producer instance: the old epoch is a zombie
        assert int(again.producer_epoch) > epoch
        zombie = await _txn_commit(conn, txn_id, pid, epoch, group, topic, {0: 6})
        assert zombie[0] in (ErrorCode.producer_fenced, ErrorCode.invalid_producer_epoch)
        assert await _fetch(conn, group, topic, stable=True) == {0: (-1, ErrorCode.none), 1: (-1, ErrorCode.none)}

    tw.run(txn_broker.bootstrap, body)
