"""Which open transactions ``tidelog transactions find-hanging`` reports (brokers/cli/txn_hanging.py): candidates
by how long the producer has been quiet on the partition, and the coordinator's view that clears them."""

from __future__ import annotations

from brokers.cli.client import Node
from brokers.cli.txn_admin import ProducerDescription, TransactionDescription
from brokers.cli.txn_hanging import OpenTransaction, candidates, why_hanging

NOW = 10_000_000
MAX = 15 * 60_000


def _producer(pid: int, start: int, last_ts: int, epoch: int = 3) -> ProducerDescription:
    return ProducerDescription(pid, epoch, 7, last_ts, 2, start)


def _described(pid: int, state: str, partitions: tuple[tuple[str, int], ...]) -> TransactionDescription:
    return TransactionDescription("tid", Node(1, "127.0.0.1", 9092), state, pid, 3, 60_000, NOW - MAX, partitions)


def test_candidates_are_open_transactions_quiet_longer_than_the_max_timeout() -> None:
    found = {
        ("t", 0): [_producer(1, 10, NOW - MAX - 1), _producer(2, -1, 0), _producer(3, 20, NOW - MAX)],
        ("t", 1): [_producer(4, 5, -1)],  # last write unknown (restored from a snapshot): long ago
    }
    got = [(c.topic, c.partition, c.producer.producer_id) for c in candidates(found, NOW, MAX)]
    assert got == [("t", 0, 1), ("t", 1, 4)]


def test_hanging_unless_the_coordinator_still_has_it_open_with_the_partition() -> None:
    txn = OpenTransaction("t", 0, _producer(1, 10, 0))
    assert why_hanging(txn, None) == "no transactional id has this producer id"
    assert why_hanging(txn, _described(9, "Ongoing", (("t", 0),))) == "its transactional id now has producer id 9"
    assert why_hanging(txn, _described(1, "CompleteAbort", ())) == "its coordinator's transaction is CompleteAbort"
    assert why_hanging(txn, _described(1, "Ongoing", (("t", 1),))) == (
        "the partition is not in its coordinator's open transaction"
    )
    for live in ("Ongoing", "PrepareCommit", "PrepareAbort"):
        assert why_hanging(txn, _described(1, live, (("t", 0),))) is None
