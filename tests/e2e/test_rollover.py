"""Reads across many ledgers: with ``ledger.rollover.bytes=65536`` ~5 MB of records spread over
dozens of ledgers per partition (sealed ones offloaded as segments). Read back from offset 0, from
the middle by timestamp (ListOffsets via ``offsets_for_times``), and from the tail — before and after
a restart.
"""

from __future__ import annotations

import random
import time

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from .broker_process import BrokerProcess
from .helpers import (
    Rec,
    assert_acks_in_order,
    assert_same_records,
    confluent_produce,
    confluent_read,
    consumer_config,
    create_topic,
    high_watermarks,
    make_records,
)

PARTS = 3
N = 5000  # x ~1 KiB = ~5 MB
STEP_MS = 10


def increasing_records(n: int, base_ts: int, seed: int = 11) -> list[Rec]:
    rnd = random.Random(seed)
    return [
        Rec(
            i % PARTS,
            f"k{i}".encode(),
            rnd.randbytes(rnd.randint(900, 1150)),
            (("i", str(i).encode()),),
            base_ts + i * STEP_MS,
        )
        for i in range(n)
    ]


def check_offsets_for_times(broker: BrokerProcess, topic: str, recs: list[Rec]) -> None:
    per_p = {p: [r for r in recs if r.partition == p] for p in range(PARTS)}
    c = Consumer(consumer_config(broker.bootstrap))
    try:
        for p, prs in per_p.items():
            probes = {
                0: prs[0].timestamp,  # the first record
                len(prs) // 3: prs[len(prs) // 3].timestamp,  # exact match in the middle
                len(prs) // 2: prs[len(prs) // 2].timestamp - 1,  # between two records -> the later one
                len(prs) - 1: prs[-1].timestamp,  # the last record
            }
            for want, ts in probes.items():
                (res,) = c.offsets_for_times([TopicPartition(topic, p, ts)], timeout=30)
                assert res.error is None, res.error
                assert res.offset == want, f"partition {p}: offsets_for_times({ts}) = {res.offset}, expected {want}"
            # Every record (tail records included) is in the past: an hour from now matches none.
            future = int(time.time() * 1000) + 3_600_000
            (res,) = c.offsets_for_times([TopicPartition(topic, p, future)], timeout=30)
            assert res.offset == -1, f"a timestamp after every record must answer -1 (end), got {res.offset}"
            # ... and reading from the middle offset returns exactly the rest, byte-exact.
            mid = len(prs) // 3
            got = confluent_read(broker.bootstrap, topic, [p], start=mid, until={p: len(prs)})
            got = [g for g in got if g.offset < len(prs)]  # records added later by check_tail
            assert [g.offset for g in got] == list(range(mid, len(prs)))
            for g, r in zip(got, prs[mid:], strict=True):
                assert (g.key, g.value, g.headers, g.timestamp) == (r.key, r.value, r.headers, r.timestamp), (
                    f"partition {p} offset {g.offset} differs when read from the middle"
                )
    finally:
        c.close()


def check_tail(broker: BrokerProcess, topic: str, base_ts: int, tag: str) -> None:
    """Assign at the end, wait until positioned, produce more: exactly the new records arrive."""
    before = {p: hi for p, (_lo, hi) in high_watermarks(broker.bootstrap, topic, range(PARTS)).items()}
    c = Consumer(consumer_config(broker.bootstrap))
    try:
        c.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTS)])
        at_eof: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_eof) < PARTS:
            assert time.monotonic() < deadline, "tail consumer never reached end of partitions"
            for m in c.consume(100, timeout=0.5):
                assert m.error() is not None and m.error().code() == -191, (
                    f"tail consumer got an old record: {m.partition()}/{m.offset()}"
                )
                at_eof.add(m.partition())
        new = [
            Rec(i % PARTS, f"{tag}-{i}".encode(), f"tail value {tag} {i}".encode() * 10, (), base_ts + i)
            for i in range(300)
        ]
        acked = confluent_produce(broker.bootstrap, topic, new)
        for rec, (p, off) in zip(new, acked, strict=True):
            assert p == rec.partition
            assert off >= before[p]
        got = []
        deadline = time.monotonic() + 60
        while len(got) < len(new):
            assert time.monotonic() < deadline, f"tail consumer got {len(got)} of {len(new)} new records"
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    got.append(m)
        for p in range(PARTS):
            mine = [m for m in got if m.partition() == p]
            exp = [r for r in new if r.partition == p]
            assert [m.offset() for m in mine] == list(range(before[p], before[p] + len(exp)))
            assert [(m.key(), m.value(), m.timestamp()[1]) for m in mine] == [
                (r.key, r.value, r.timestamp) for r in exp
            ]
    finally:
        c.close()


def test_many_ledgers_read_from_start_middle_and_tail(broker_factory):
    broker = broker_factory(configs={"ledger.rollover.bytes": "65536"})
    topic = "rollover"
    create_topic(broker.bootstrap, topic, PARTS)
    base_ts = int(time.time() * 1000) - 86_400_000
    recs = increasing_records(N, base_ts)
    # Small batches (16 KiB): several entries per 64 KiB ledger, ~100 ledgers in all.
    acked = confluent_produce(broker.bootstrap, topic, recs, **{"linger.ms": 5, "batch.size": 16384})
    assert_acks_in_order(recs, acked, "rollover producer")

    assert_same_records(recs, confluent_read(broker.bootstrap, topic, range(PARTS), start=0), PARTS, "from 0")
    check_offsets_for_times(broker, topic, recs)
    check_tail(broker, topic, base_ts + N * STEP_MS, "tail1")

    # A clean restart and a kill -9: the ledgers/segments are all still readable from 0 and by time.
    for kill in (False, True):
        broker.restart(kill=kill)
        got = confluent_read(broker.bootstrap, topic, range(PARTS), start=0)
        old = [g for g in got if g.offset < sum(1 for r in recs if r.partition == g.partition)]
        assert_same_records(recs, old, PARTS, f"from 0 after {'kill -9' if kill else 'restart'}")
        check_offsets_for_times(broker, topic, recs)
    check_tail(broker, topic, base_ts + N * STEP_MS + 10_000, "tail2")


def test_rollovers_onto_prepared_ledgers_keep_offsets_contiguous(broker_factory):
    """Many small produce requests (linger 0, idempotent, several in flight) across hundreds of rollovers of
    16 KiB ledgers, each next ledger created ahead of its rollover: every record is acknowledged at the next
    offset, none is lost or duplicated, before and after a kill -9, and appends continue with no gap."""
    broker = broker_factory(configs={"ledger.rollover.bytes": "16384"})
    topic = "rollover-prepared"
    create_topic(broker.bootstrap, topic, 2)
    recs = make_records(3000, 2, seed=23, max_value=600)
    conf = {"linger.ms": 0, "acks": "all", "enable.idempotence": True, "max.in.flight.requests.per.connection": 5}
    acked = confluent_produce(broker.bootstrap, topic, recs, **conf)
    assert_acks_in_order(recs, acked, "linger-0 producer")
    assert_same_records(recs, confluent_read(broker.bootstrap, topic, range(2), start=0), 2, "from 0")
    assert "could not delete unused ledger" not in broker.log_text()

    broker.restart(kill=True)
    assert_same_records(recs, confluent_read(broker.bootstrap, topic, range(2), start=0), 2, "after kill -9")
    more = make_records(1000, 2, seed=29, max_value=600)
    acked_more = confluent_produce(broker.bootstrap, topic, more, **conf)
    assert_acks_in_order(recs + more, acked + acked_more, "after the restart")
    assert_same_records(recs + more, confluent_read(broker.bootstrap, topic, range(2), start=0), 2, "all")
