"""Cooperative-sticky rebalancing (classic protocol, client-side assignor) with confluent-kafka against the
real broker process: a member joining only takes partitions from the others — each original member loses
just what moves to the newcomer, never has its other partitions revoked — and every record is consumed
exactly once across the rebalance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from .broker_process import BrokerProcess
from .group_members import (
    Member,
    SequenceProducer,
    assert_consumed_exactly_once,
    assert_join_moved_only_to,
    assignment_settled,
    wait_until,
)

PARTITIONS = 6
BROKER = {"group.initial.rebalance.delay.ms": "0"}


def cooperative(name: str, bootstrap: str, group: str, topic: str) -> Member:
    return Member(
        name, bootstrap, group, topic,
        **{"partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 10000,
           "heartbeat.interval.ms": 500},
    )


def test_cooperative_sticky_join_revokes_only_what_moves_and_consumes_every_record_once(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs=BROKER)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="coop")
    group = f"coop-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS).start()
    first = [cooperative(f"c{i}", broker.bootstrap, group, topic).start() for i in range(3)]
    everyone = list(first)
    try:
        wait_until(lambda: assignment_settled(first, PARTITIONS), "three members to split six partitions",
                   detail=lambda: [m.snapshot() for m in first])
        wait_until(lambda: all(m.consumed for m in first), "every member to consume")
        before = {m.name: m.snapshot() for m in first}
        assert sorted(len(owned) for owned, _ in before.values()) == [2, 2, 2]

        joiner = cooperative("c3", broker.bootstrap, group, topic).start()
        everyone.append(joiner)
        wait_until(lambda: assignment_settled(everyone, PARTITIONS) and bool(joiner.snapshot()[0]),
                   "four members to split six partitions", detail=lambda: [m.snapshot() for m in everyone])
        assert_join_moved_only_to(first, before, joiner)

        wait_until(lambda: bool(joiner.consumed), "the new member to consume")
        assert_consumed_exactly_once(everyone, producer)
    finally:
        for m in everyone:
            m.stop()
        producer.stop()
