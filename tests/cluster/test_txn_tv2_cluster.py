"""KIP-890 part 2 across three brokers (issue 14): a TV2 producer's transactions span a 3-partition topic whose
partitions are led by the three brokers, so two of the leaders are not the transaction coordinator and add
their partition to the transaction with AddPartitionsToTxn v4+ (no ``verify_only``) sent to it, and the
coordinator's markers reach them with WriteTxnMarkers. Over the raw wire (tests/e2e/txn_wire.py), at the
versions a Kafka 4 producer sends when ``transaction.version`` 2 is finalized: Produce v12, EndTxn v5.

Every leader ends each transaction with a marker at the bumped epoch; the old epoch's late write is refused at
every leader, the coordinator's or not; read_committed on every partition sees only the committed records.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection
from tests.e2e import txn_wire as tw
from tests.e2e.helpers import create_topic
from tests.e2e.test_txn_tv2_wire import _batch, _committed_view, _end_v5, _produce, _settled_lso
from tests.etcd_server import etcd_available

from .harness import running_cluster, wait_balanced

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "txn-tv2-cluster"
TXN_ID = "tv2-cluster"


def test_tv2_transactions_across_three_leaders(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as dev:
        bootstrap = dev.bootstrap
        create_topic(bootstrap, TOPIC, 3)
        brokers = {b.node_id for b in dev.brokers}
        data_leaders = wait_balanced(bootstrap, TOPIC, 3, brokers)
        by_node = {b.node_id: b for b in dev.brokers}
        coordinator: list[int] = []

        async def find(conn: Connection) -> None:  # the first lookup creates __transaction_state
            found = await tw.until(
                lambda: tw.send(conn, tw.FIND_COORDINATOR, 4, "FindCoordinatorRequest", key_type=1,
                                coordinator_keys=(TXN_ID,)),
                lambda r: r.coordinators[0].error_code == ErrorCode.none,
            )
            coordinator.append(int(found.coordinators[0].node_id))

        tw.run(dev.brokers[0].address, find)
        assert len(set(data_leaders.values()) - {coordinator[0]}) == 2  # two leaders add over the wire
        ids: list[int] = []

        async def init(conn: Connection) -> None:
            answer = await tw.init(conn, TXN_ID, version=5)
            assert answer.error_code == ErrorCode.none
            ids.extend((int(answer.producer_id), int(answer.producer_epoch)))

        tw.run(by_node[coordinator[0]].address, init)
        pid, epoch = ids

        def produce_everywhere(values: list[bytes], at: int, seq: int) -> dict[int, ErrorCode]:
            """One transactional Produce v12 per partition, each sent to that partition's leader."""
            codes: dict[int, ErrorCode] = {}
            for p, node in sorted(data_leaders.items()):
                async def one(conn: Connection, p: int = p) -> None:
                    codes[p] = await _produce(conn, TOPIC, TXN_ID, _batch(values, pid, at, seq), partition=p)

                tw.run(by_node[node].address, one)
            return codes

        def end(commit: bool, at: int) -> None:
            async def once(conn: Connection) -> None:
                assert await _end_v5(conn, TXN_ID, pid, at, commit) == (ErrorCode.none, pid, at + 1)
                await tw.settled(conn, TXN_ID, "CompleteCommit" if commit else "CompleteAbort")

            tw.run(by_node[coordinator[0]].address, once)

        # transaction 1 commits, 2 aborts, 3 commits; each at its own epoch
        assert produce_everywhere([b"c1"], epoch, 0) == dict.fromkeys(range(3), ErrorCode.none)
        end(True, epoch)
        assert produce_everywhere([b"late"], epoch, 1) == dict.fromkeys(range(3), ErrorCode.invalid_producer_epoch)
        assert produce_everywhere([b"a2"], epoch + 1, 0) == dict.fromkeys(range(3), ErrorCode.none)
        end(False, epoch + 1)
        assert produce_everywhere([b"c3"], epoch + 2, 0) == dict.fromkeys(range(3), ErrorCode.none)
        end(True, epoch + 2)

        expected = [(pid, epoch + 1, tw.COMMIT), (pid, epoch + 2, tw.ABORT), (pid, epoch + 3, tw.COMMIT)]
        for p, node in sorted(data_leaders.items()):
            markers = tw.control_markers(by_node[node].address, TOPIC, p)
            assert [(m[0], m[1], m[2]) for m in markers] == expected, (p, node, markers)

            async def committed(conn: Connection, p: int = p) -> None:
                await _settled_lso(conn, TOPIC, partition=p)
                kept, aborted, lso, hw = await _committed_view(conn, TOPIC, partition=p)
                assert kept == [b"c1", b"c3"] and [a[0] for a in aborted] == [pid] and lso == hw, p

            tw.run(by_node[node].address, committed)
