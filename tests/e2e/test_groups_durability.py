"""Must-show 4 (the broker side): kill -9 of the broker loses no committed offset and no group.

Two groups live on one broker: a subscribed group of two confluent-kafka members (Stable, committing
after every batch) and a "simple" group of an assign() consumer that commits with generation -1. The
broker process is killed with SIGKILL and restarted on the same data directory and port. Right after the
restart, before any member talks to it again: DescribeGroups shows the subscribed group Stable with the
same members, protocol type and protocol; a heartbeat as one of its members at the pre-crash generation
is accepted (and one generation back is refused), so the generation survived; both groups' committed
offsets are exactly what was acknowledged before the kill. Then the members carry on through the restart
and every record is consumed exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from . import groups_wire as w
from .broker_process import BrokerProcess
from .groups_harness import assert_exactly_once, consumed, produce, spawn, wait_until

PARTITIONS = 4


def _committed(bootstrap: str, group: str, topic: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=60)]
    finally:
        c.close()


def test_kill9_keeps_groups_generations_and_committed_offsets(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs={"group.initial.rebalance.delay.ms": "300"})
    bootstrap = broker.bootstrap
    topic = topic_factory(bootstrap, partitions=PARTITIONS, prefix="kill9")
    produce(bootstrap, topic, 2_000, PARTITIONS)
    group = f"subscribed-{uuid.uuid4().hex[:8]}"
    simple = f"simple-{uuid.uuid4().hex[:8]}"

    members = [spawn("confluent", bootstrap, group, topic, f"m{i}", delay=0.01, session_ms=30_000) for i in range(2)]
    try:
        wait_until("both members to consume everything", lambda: len(consumed(members)) >= 2_000, members)
        wait_until("two members sharing the topic", lambda: all(m.assignments for m in members), members)

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": simple, "enable.auto.commit": False})
        c.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        c.commit(offsets=[TopicPartition(topic, p, 10 * (p + 1)) for p in range(PARTITIONS)], asynchronous=False)
        c.close()

        admin = AdminClient({"bootstrap.servers": bootstrap})
        before = admin.describe_consumer_groups([group])[group].result(timeout=30)
        record = w.group_metadata_history(bootstrap, group)[-1]
        assert record is not None and record.protocol == "range" and len(record.members) == 2
        offsets_before = _committed(bootstrap, group, topic)
        assert offsets_before == [500] * PARTITIONS

        broker.kill9()
        broker.start()

        probe = w.Member(bootstrap, group)
        try:
            for _ in range(600):  # bounded: COORDINATOR_LOAD_IN_PROGRESS while the partition is replayed
                (desc,) = probe.describe(group)
                if desc["error"] != 14:
                    break
                time.sleep(0.05)
            assert desc["error"] == w.NONE and desc["state"] == "Stable"
            assert desc["protocol_type"] == "consumer" and desc["protocol"] == "range"
            assert sorted(m["member_id"] for m in desc["members"]) == sorted(m.member_id for m in before.members)
            one = record.members[0][0]
            assert probe.heartbeat(generation=record.generation, member_id=one) == w.NONE
            assert probe.heartbeat(generation=record.generation - 1, member_id=one) == w.ILLEGAL_GENERATION
        finally:
            probe.close()
        assert _committed(bootstrap, group, topic) == offsets_before
        assert _committed(bootstrap, simple, topic) == [10, 20, 30, 40]
        (listed,) = [g for g in admin.list_consumer_groups().result(timeout=30).valid if g.group_id == simple]
        assert listed.state.name == "EMPTY"

        produce(bootstrap, topic, 1_000, PARTITIONS, first=2_000)
        wait_until("the members to carry on after the restart", lambda: len(consumed(members)) >= 3_000, members)
        for m in members:
            m.stop()
        expected = {(p, o) for p in range(PARTITIONS) for o in range(3_000 // PARTITIONS)}
        assert_exactly_once(members, expected, "across kill -9")
        assert _committed(bootstrap, group, topic) == [750] * PARTITIONS
    finally:
        for m in members:
            m.kill()
