"""OffsetForLeaderEpoch (23) against a real broker restarted a few times (each restart loads the partition at
a new leader epoch), checked against the leader epochs stamped in the stored batches; and a librdkafka
consumer that keeps consuming across those restarts (it validates its position with this API after each
leader epoch change) reads every record exactly once: no false truncation, no offset reset."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from kio.schema.errors import ErrorCode

from brokers.cli.client import KafkaClient
from brokers.handlers.base import make

from .kafka_wire import fetch_all_batches

OFFSET_FOR_LEADER_EPOCH = 23


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list[str] = []
    for v in values:
        p.produce(topic, value=v, partition=0, on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    assert p.flush(60) == 0 and not errors, errors


def _settled(b: Any, starts: int, timeout: float = 60.0) -> None:
    """Wait until the broker's start-up background loads (and the offloads they start) are done: a broker
    stopped while an offload is under way logs a traceback (the offloader finds the ledger client closed)."""
    deadline = time.monotonic() + timeout
    while b.log_text().count("partitions with pending work in the background") < starts:
        assert time.monotonic() < deadline, "the broker did not finish its background loads"
        time.sleep(0.1)
    time.sleep(0.5)


def _consume(c: Consumer, want: int, timeout: float = 60.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"consumed {got} of {want} in {timeout}s"
        for m in c.consume(100, timeout=0.5):
            if m.error() is not None:
                raise KafkaException(m.error())
            got.append(m.value())
    return got


async def _ask(bootstrap: str, topic: str, asks: list[tuple[int, int]]) -> list[tuple[ErrorCode, int, int]]:
    """(error, leader epoch, end offset) per (current leader epoch, leader epoch) asked of partition 0."""
    async with KafkaClient(bootstrap) as client:
        conn = await client.any_connection()
        mod = conn.module(OFFSET_FOR_LEADER_EPOCH, 2, 4)
        parts = tuple(make(mod.OffsetForLeaderPartition, partition=0, current_leader_epoch=cur, leader_epoch=e)
                      for cur, e in asks)
        out = []
        for part in parts:  # one partition per request: a request's partitions are answered as a map by Kafka
            resp: Any = await conn.send(make(mod.OffsetForLeaderEpochRequest, replica_id=-1, topics=(
                make(mod.OffsetForLeaderTopic, topic=topic, partitions=(part,)),)))
            [answer] = resp.topics[0].partitions
            out.append((answer.error_code, answer.leader_epoch, answer.end_offset))
        return out


async def _leader_epoch(bootstrap: str, topic: str) -> int:
    async with KafkaClient(bootstrap) as client:
        resp = await client.metadata([topic])
        return int(resp.topics[0].partitions[0].leader_epoch)


def test_offset_for_leader_epoch_across_restarts(broker_factory, topic_factory) -> None:  # type: ignore[no-untyped-def]
    b = broker_factory()
    topic = topic_factory(b.bootstrap, 1, "oe")
    consumer = Consumer({
        "bootstrap.servers": b.bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
        "enable.auto.commit": True, "auto.commit.interval.ms": 200, "topic.metadata.refresh.interval.ms": 1000,
    })
    consumer.subscribe([topic])
    got: list[bytes] = []
    sent: list[bytes] = []
    try:
        # epochs: a run with 3 records, one with 2, one with none, one with 1 (each restart is a new epoch)
        for round_no, count in enumerate((3, 2, 0, 1)):
            if round_no:
                b.restart()
                _settled(b, round_no + 1)
            values = [f"r{round_no}-{i}".encode() for i in range(count)]
            if values:
                _produce(b.bootstrap, topic, values)
                sent += values
                got += _consume(consumer, len(values))
            else:  # load the partition (a new epoch) without writing
                assert asyncio.run(_ask(b.bootstrap, topic, [(-1, 0)]))[0][0] == ErrorCode.none
        got += [m.value() for m in consumer.consume(100, timeout=2.0) if m.error() is None]  # nothing more
    finally:
        consumer.close()
    assert got == sent  # every record once, in order: validation after each epoch change found no truncation

    batches = fetch_all_batches(b.bootstrap, topic, 0)
    starts: dict[int, int] = {}
    for batch in batches:
        starts.setdefault(batch.partition_leader_epoch, batch.base_offset)
    epochs = sorted(starts)
    assert len(epochs) == 3, starts  # three runs wrote records, each in its own epoch
    log_end = len(sent)
    current = asyncio.run(_leader_epoch(b.bootstrap, topic))
    assert current == epochs[-1]  # the last run wrote
    expected_end = {e: (starts[epochs[i + 1]] if i + 1 < len(epochs) else log_end) for i, e in enumerate(epochs)}
    asks = [(current, e) for e in epochs]
    answers = asyncio.run(_ask(b.bootstrap, topic, asks))
    assert answers == [(ErrorCode.none, e, expected_end[e]) for e in epochs]
    # an epoch that wrote nothing (the run between the 2nd and 4th writers): the previous writer's, ending
    # where the next writer starts
    empty = list(range(epochs[1] + 1, epochs[2]))
    assert empty, epochs
    assert asyncio.run(_ask(b.bootstrap, topic, [(current, e) for e in empty])) == [
        (ErrorCode.none, epochs[1], expected_end[epochs[1]])] * len(empty)
    # the current one: the log end; fencing by the asker's epoch; above every epoch: undefined
    more = asyncio.run(_ask(b.bootstrap, topic, [
        (-1, current), (current - 1, epochs[0]), (current + 1, epochs[0]), (current, current + 1),
    ]))
    assert more == [
        (ErrorCode.none, current, log_end),
        (ErrorCode.fenced_leader_epoch, -1, -1),
        (ErrorCode.unknown_leader_epoch, -1, -1),
        (ErrorCode.none, -1, -1),
    ]
