"""KIP-848 online migration with real clients (issue 13, must-show 5): confluent-kafka consumers of one group
move from ``group.protocol=classic`` to ``group.protocol=consumer`` one by one and back, against the real
broker process, consuming throughout from a topic a producer keeps writing to.

Each step starts the new member before stopping the old one, so the group goes through every conversion
path: a consumer-protocol member joining a classic group (upgrade), classic members rejoining and leaving a
consumer group, classic members joining it again, the last consumer-protocol member leaving (downgrade).
The group's type is read back with DescribeConsumerGroups after each conversion.

What must hold: every record produced is consumed; a record consumed twice only by a member that was
assigned its partition after the first delivery (the at-least-once window of a rebalance: the new owner
resumes from the last commit); the committed offsets at the end are the log end of every partition.
Members commit every 100 records and synchronously when partitions are revoked (group_members.Member).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from .broker_process import BrokerProcess
from .group_members import Member, SequenceProducer, assert_healthy, assignment_settled, wait_until
from .groups_harness import consumed, produce, spawn
from .groups_harness import wait_until as wait_for

PARTITIONS = 6
BROKER = {"group.consumer.heartbeat.interval.ms": "250", "group.initial.rebalance.delay.ms": "0"}
CLASSIC = {"group.protocol": "classic", "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500}
CONSUMER = {"group.protocol": "consumer"}


class TimedMember(Member):
    """A Member that also notes when it handed each record to the application."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivered_at: list[float] = []
        self.closing_commit_errors: list[str] = []

    def _record(self, c: Consumer, msg: Any) -> None:
        before = len(self.consumed)
        super()._record(c, msg)
        with self.lock:
            if len(self.consumed) > before:
                self.delivered_at.append(time.monotonic())

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        """As Member's, except that while closing a failed commit is not an error: the thread commits its final
        positions right before ``close``, and librdkafka's classic close can revoke after its LeaveGroup, when
        a commit is refused (UNKNOWN_MEMBER_ID) as Kafka refuses it. The committed offsets are checked at the
        end of each test."""
        errors = len(self.errors)
        super()._on_revoke(c, parts)
        if self._stop.is_set() and len(self.errors) > errors:
            self.closing_commit_errors = self.errors[errors:]
            del self.errors[errors:]

    def deliveries(self) -> list[tuple[int, int, bytes, float]]:
        with self.lock:
            # The time is noted just after the record (separately locked): the newest may not have one yet.
            times = self.delivered_at + [time.monotonic()] * (len(self.consumed) - len(self.delivered_at))
            return [(p, o, v, t) for (p, o, v), t in zip(self.consumed, times, strict=True)]

    def assigned_at(self, partition: int) -> list[float]:
        with self.lock:
            return [e.at for e in self.events if e.kind == "assign" and partition in e.partitions]


def describe(bootstrap: str, group: str, timeout: float = 90.0) -> Any:
    """DescribeConsumerGroups, with a new AdminClient per attempt, retried while the coordinator is loading or
    has moved (a hang guard only): an AdminClient made before a broker restart or a coordinator move was
    seen to keep failing (timeouts, NOT_COORDINATOR) while a new one got its answer at once."""
    deadline = time.monotonic() + timeout
    while True:
        admin = AdminClient({"bootstrap.servers": bootstrap})  # held until the result is in
        try:
            return admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=30)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def group_type(bootstrap: str, group: str) -> str:
    """CONSUMER or CLASSIC, as DescribeConsumerGroups reports the group."""
    return str(describe(bootstrap, group).type.name)


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        c.close()


def check_consumption(members: list[TimedMember], producer: SequenceProducer) -> dict[str, int]:
    """No record lost; a duplicate only after its partition was assigned anew; returns the counts."""
    total = producer.stop()
    wait_until(lambda: len({v for m in members for v in m.values()}) >= total, f"{total} records consumed",
               detail=lambda: {m.name: len(m.consumed) for m in members})
    deliveries: dict[bytes, list[tuple[float, TimedMember, int]]] = defaultdict(list)
    for m in members:
        for p, _o, v, t in m.deliveries():
            deliveries[v].append((t, m, p))
    assert sorted(deliveries) == producer.expected(), "records lost"
    duplicates = 0
    for v, seen in deliveries.items():
        seen.sort(key=lambda d: d[0])
        first_at = seen[0][0]
        for t, m, p in seen[1:]:
            duplicates += 1
            # The re-delivery follows an assignment of that partition to its member after the first delivery.
            assert any(first_at <= a <= t for a in m.assigned_at(p)), (
                f"{v!r} (partition {p}) delivered again to {m.name} without a new assignment in between")
    return {"records": total, "duplicates": duplicates}


def start(name: str, bootstrap: str, group: str, topic: str, conf: dict[str, object]) -> TimedMember:
    m = TimedMember(name, bootstrap, group, topic, **conf)
    m.start()
    return m


def settled(members: list[TimedMember], what: str) -> None:
    wait_until(lambda: assignment_settled(members, PARTITIONS), what,
               detail=lambda: {m.name: sorted(m.snapshot()[0]) for m in members})


@pytest.mark.slow
def test_three_classic_members_upgraded_one_by_one_to_the_consumer_protocol_and_back(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs=BROKER)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="migrate")
    group = f"migrate-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS).start()
    everyone: list[TimedMember] = []
    lock = threading.Lock()

    def launch(name: str, conf: dict[str, object]) -> TimedMember:
        m = start(name, broker.bootstrap, group, topic, conf)
        with lock:
            everyone.append(m)
        return m

    try:
        live = [launch(f"classic{i}", CLASSIC) for i in range(3)]
        settled(live, "three classic members to split the partitions")
        assert group_type(broker.bootstrap, group) == "CLASSIC"
        for i in range(3):  # upgrade: a consumer-protocol member joins, then a classic one leaves
            new = launch(f"consumer{i}", CONSUMER)
            settled([*live, new], f"consumer{i} to get its share")
            assert group_type(broker.bootstrap, group) == "CONSUMER"
            live[i].stop()
            live[i] = new
            settled(live, f"the group to settle after classic{i} left")
        for i in range(3):  # and back: a classic member joins, then a consumer-protocol one leaves
            new = launch(f"classic{i}-again", CLASSIC)
            settled([*live, new], f"classic{i}-again to get its share")
            live[i].stop()
            live[i] = new
            settled(live, f"the group to settle after consumer{i} left")
        assert group_type(broker.bootstrap, group) == "CLASSIC"
        wait_until(lambda: all(m.consumed for m in live), "every classic member to consume again")
        counts = check_consumption(everyone, producer)
        for m in live:
            m.stop()
        assert_healthy(*everyone)
        expected = {p: len(range(p, counts["records"], PARTITIONS)) for p in range(PARTITIONS)}
        assert committed(broker.bootstrap, group, topic) == expected
        print(f"\nmigration: {counts['records']} records, {counts['duplicates']} consumed twice (after an assignment)")
    finally:
        producer._stop.set()
        for m in everyone:
            m._stop.set()


def test_a_classic_group_upgraded_by_a_consumer_member_joining_and_downgraded_when_it_leaves(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    """The lean variant for the fast suite: one upgrade and one downgrade under a steady producer."""
    broker = broker_factory(configs=BROKER)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="migrate")
    group = f"migrate-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS).start()
    members: list[TimedMember] = []
    try:
        members += [start(f"classic{i}", broker.bootstrap, group, topic, CLASSIC) for i in range(2)]
        settled(members, "two classic members to split the partitions")
        members.append(start("consumer", broker.bootstrap, group, topic, CONSUMER))
        settled(members, "the consumer-protocol member to get its share")
        assert group_type(broker.bootstrap, group) == "CONSUMER"
        members[2].stop()
        settled(members[:2], "the classic members to take everything back")
        assert group_type(broker.bootstrap, group) == "CLASSIC"
        counts = check_consumption(members, producer)
        for m in members[:2]:
            m.stop()
        assert_healthy(*members)
        expected = {p: len(range(p, counts["records"], PARTITIONS)) for p in range(PARTITIONS)}
        assert committed(broker.bootstrap, group, topic) == expected
    finally:
        producer._stop.set()
        for m in members:
            m._stop.set()


@pytest.mark.slow
def test_a_mixed_group_survives_a_broker_kill_and_is_downgraded_after_it(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    """Classic members inside a consumer group are persisted (their classic metadata in the member records):
    after kill -9 and a restart the group comes back from __consumer_offsets as a consumer group with its
    classic members, and the consumer-protocol member leaving then turns it back into a classic group."""
    broker = broker_factory(configs=BROKER)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="migrate-kill")
    group = f"migrate-kill-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS)
    members: list[TimedMember] = []

    def produce(n: int) -> None:  # bursts between the faults: no producer retry straddles the kill
        for _ in range(n):
            producer.produce_one()
        assert producer.producer.flush(60) == 0

    try:
        members += [start(f"classic{i}", broker.bootstrap, group, topic, CLASSIC) for i in range(2)]
        settled(members, "two classic members to split the partitions")
        members.append(start("consumer", broker.bootstrap, group, topic, CONSUMER))
        settled(members, "the consumer-protocol member to get its share")
        produce(600)
        wait_until(lambda: len({v for m in members for v in m.values()}) >= 600, "600 records consumed")
        before = describe(broker.bootstrap, group)
        assert before.type.name == "CONSUMER"

        broker.kill9()
        broker.start()

        assert group_type(broker.bootstrap, group) == "CONSUMER"
        after = describe(broker.bootstrap, group)
        assert {m.member_id for m in after.members} == {m.member_id for m in before.members}
        produce(300)
        members[2].stop()
        settled(members[:2], "the classic members to take everything back")
        assert group_type(broker.bootstrap, group) == "CLASSIC"
        produce(300)
        counts = check_consumption(members, producer)
        for m in members[:2]:
            m.stop()
        assert_healthy(*members)
        expected = {p: len(range(p, counts["records"], PARTITIONS)) for p in range(PARTITIONS)}
        assert committed(broker.bootstrap, group, topic) == expected
        print(f"\nmigration across a kill: {counts['records']} records, {counts['duplicates']} consumed twice")
    finally:
        for m in members:
            m._stop.set()


@pytest.mark.slow
@pytest.mark.parametrize("client", ["kafka-python", "aiokafka", "kafkajs", "kcat"])
def test_classic_members_of_every_client_inside_a_consumer_group_and_after_the_downgrade(
    client: str, broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str], kcat: str,
    node: str,
) -> None:
    """Two classic members of another client join a consumer group (a confluent-kafka member with
    group.protocol=consumer), are served as classic members of it, and carry on as a classic group once the
    consumer-protocol member leaves; nothing is lost."""

    broker = broker_factory(configs=BROKER)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix=f"migrate-{client}")
    group = f"migrate-{client}-{uuid.uuid4().hex[:8]}"
    k = start("consumer", broker.bootstrap, group, topic, CONSUMER)
    classics: list[Any] = []

    def seen() -> Counter[tuple[int, int]]:
        out = consumed(classics)
        out.update((p, o) for p, o, _, _ in k.deliveries())
        return out

    try:
        settled([k], "the consumer-protocol member to own every partition")
        classics += [spawn(client, broker.bootstrap, group, topic, f"{client}-{i}") for i in range(2)]
        wait_for("the classic members to be assigned partitions",
                 lambda: all(m.assignments and m.assignments[-1] for m in classics), classics)
        assert group_type(broker.bootstrap, group) == "CONSUMER"
        first = produce(broker.bootstrap, topic, 3000, PARTITIONS)
        wait_for("the first records consumed", lambda: len(seen()) >= 3000, classics)
        assert all(m.count for m in classics), "a classic member of the consumer group consumed nothing"
        k.stop()
        assert group_type(broker.bootstrap, group) == "CLASSIC"

        def split() -> bool:
            latest = [set(m.assignments[-1]) if m.assignments else set() for m in classics]
            return all(latest) and sorted(p for s in latest for p in s) == list(range(PARTITIONS))

        wait_for("the classic members to split every partition after the downgrade", split, classics)
        more = produce(broker.bootstrap, topic, 3000, PARTITIONS, first=3000)
        expected = {(p, o) for p in range(PARTITIONS) for o in range(first[p] + more[p])}
        wait_for("every record consumed", lambda: set(seen()) >= expected, classics)
        for m in classics:
            m.stop()
        counts = seen()
        assert set(counts) == expected
        assert all(not m.errors for m in classics), {m.name: m.errors[:3] for m in classics if m.errors}
        print(f"\n{client}: {len(expected)} records, {sum(n - 1 for n in counts.values())} consumed twice")
    finally:
        k._stop.set()
        for m in classics:
            m.kill()
