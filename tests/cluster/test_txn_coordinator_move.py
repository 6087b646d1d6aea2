"""The transaction coordinator moves and fails over with its ``__transaction_state`` partition (issue 14).

One DevCluster (3 brokers). A transaction spans a 3-partition topic whose partitions are led by the three
brokers, so markers go to partitions on other brokers (WriteTxnMarkers between brokers). Over the raw wire
(tests/e2e/txn_wire.py):

1. While the transaction is Ongoing, its ``__transaction_state`` partition moves to another broker
   (``tidelog partitions move``): FindCoordinator then names that broker, which knows the transaction (replayed
   from the partition) and keeps serving it.
2. The leader of one data partition is killed (kill -9), then the transaction is committed: the coordinator
   writes PrepareCommit but cannot finish its markers while that partition has no owner. The
   ``__transaction_state`` partition moves again, to the last broker, before the dead broker's partitions are
   taken over: the new coordinator finds PrepareCommit in its replay and completes the commit once the
   partition is served again. Every partition ends with a COMMIT marker, and the partition whose leader died
   got one carrying the new coordinator's epoch (the ``__transaction_state`` partition's leader epoch).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection
from brokers.groups.records import partition_for
from tests.e2e import txn_wire as tw
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

from .harness import leaders, running_cluster, tidelog_json, wait_balanced

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "txn-coordinator-move"
TXN_TOPIC = "__transaction_state"
TXN_ID = "moving-coordinator"
WAIT_S = 60.0  # hang guard, never a timing assertion


def _wait_txn_leader(bootstrap: str, partition: int, node: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if leaders(bootstrap, TXN_TOPIC).get(partition) == node:
            return
        time.sleep(0.1)
    raise AssertionError(f"{TXN_TOPIC}/{partition} never led by broker {node}")


def test_coordinator_moves_and_the_next_owner_completes_a_prepared_commit(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as dev:
        bootstrap = dev.bootstrap
        create_topic(bootstrap, TOPIC, 3)
        brokers = {b.node_id for b in dev.brokers}
        data_leaders = wait_balanced(bootstrap, TOPIC, 3, brokers)
        coordinator: list[int] = []

        async def find(conn: Connection) -> None:  # the first lookup creates __transaction_state
            found = await tw.until(
                lambda: tw.send(conn, tw.FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=1,
                                coordinator_keys=(TXN_ID,)),
                lambda r: r.coordinators[0].error_code == ErrorCode.none,
            )
            coordinator.append(int(found.coordinators[0].node_id))

        tw.run(dev.brokers[0].address, find)
        first = coordinator[0]
        txn_partition = partition_for(TXN_ID, len(leaders(bootstrap, TXN_TOPIC)))
        assert leaders(bootstrap, TXN_TOPIC)[txn_partition] == first
        second = min(brokers - {first})
        by_node = {b.node_id: b for b in dev.brokers}

        async def begin(conn: Connection) -> None:
            init = await tw.init(conn, TXN_ID)
            assert init.error_code == ErrorCode.none
            pid = int(init.producer_id)
            assert await tw.add(conn, TXN_ID, pid, 0, TOPIC, (0, 1, 2)) == dict.fromkeys((0, 1, 2), ErrorCode.none)
            begun.append(pid)

        begun: list[int] = []
        tw.run(by_node[first].address, begin)
        pid = begun[0]

        # 1. the coordinator moves while the transaction is open
        tidelog_json("partitions", "move", f"{TXN_TOPIC}:{txn_partition}", "--to", str(second),
                     "--bootstrap", bootstrap)
        _wait_txn_leader(bootstrap, txn_partition, second)

        async def after_move(conn: Connection) -> None:
            found = await tw.until(
                lambda: tw.send(conn, tw.FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=1,
                                coordinator_keys=(TXN_ID,)),
                lambda r: r.coordinators[0].node_id == second,
            )
            assert found.coordinators[0].node_id == second
            state = await tw.until(lambda: tw.describe(conn, TXN_ID), lambda s: s.error_code == ErrorCode.none)
            assert (state.transaction_state, state.producer_id) == ("Ongoing", pid)
            assert {(t.topic, p) for t in state.topics for p in t.partitions} == {(TOPIC, p) for p in range(3)}

        tw.run(by_node[second].address, after_move)

        # 2. a data partition's leader dies; the commit is decided but cannot complete before the next move
        victim = min(brokers - {second})  # leads one data partition (the topic is balanced over the three)
        last = max(brokers - {second})
        by_node[victim].kill9()

        async def commit(conn: Connection) -> None:
            assert await tw.end(conn, TXN_ID, pid, 0, commit=True) == ErrorCode.none
            state = await tw.describe(conn, TXN_ID)
            assert state.transaction_state in ("PrepareCommit", "CompleteCommit")
            prepared.append(state.transaction_state)

        prepared: list[str] = []
        tw.run(by_node[second].address, commit)
        assert prepared == ["PrepareCommit"], "the markers completed before the dead leader's partition moved"
        tidelog_json("partitions", "move", f"{TXN_TOPIC}:{txn_partition}", "--to", str(last),
                     "--bootstrap", by_node[last].address)
        _wait_txn_leader(by_node[last].address, txn_partition, last)

        final_epoch: list[int] = []

        async def completed(conn: Connection) -> None:
            done = await tw.until(lambda: tw.describe(conn, TXN_ID),
                                  lambda s: s.transaction_state == "CompleteCommit")
            assert (done.transaction_state, done.producer_id) == ("CompleteCommit", pid)
            final_epoch.append(await tw.txn_partition_epoch(conn, TXN_ID, len(leaders(bootstrap, TXN_TOPIC))))

        tw.run(by_node[last].address, completed)
        victim_partition = next(p for p, n in data_leaders.items() if n == victim)
        now_leading = leaders(by_node[last].address, TOPIC)
        for p in range(3):
            markers = tw.control_markers(by_node[now_leading[p]].address, TOPIC, p)
            assert markers and {(m[0], m[1], m[2]) for m in markers} == {(pid, 0, tw.COMMIT)}, (p, markers)
            if p == victim_partition:
                assert final_epoch[0] in {m[3] for m in markers}, (final_epoch, markers)
