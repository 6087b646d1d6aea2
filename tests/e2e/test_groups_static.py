"""Must-show 3: a static member (group.instance.id, confluent-kafka) restarting within its session timeout gets
the same partitions back without a rebalance.

Three static members share a 6-partition topic. One process stops (a static member does not leave the
group on close) and a new process with the same group.instance.id starts. It is given exactly the
partitions the old one had; the other two members' assignment callbacks never fire again; the group's
generation is unchanged (read from the group metadata record in __consumer_offsets, decoded with Kafka's
schema) while DescribeGroups shows the instance under its new member id; and every record is consumed
exactly once across the restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from confluent_kafka.admin import AdminClient

from . import groups_wire as w
from .broker_process import BrokerProcess
from .groups_harness import Member, assert_exactly_once, consumed, produce, spawn, wait_until

PARTITIONS = 6
SESSION_MS = 20_000  # the restart happens well within it (a hang guard, not a timing assertion)


def _describe(bootstrap: str, group: str) -> object:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return admin.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=30)


def _members(desc: object) -> dict[str | None, str]:
    return {m.group_instance_id: m.member_id for m in desc.members}  # type: ignore[attr-defined]


def test_static_member_restart_keeps_its_partitions_without_a_rebalance(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs={"group.initial.rebalance.delay.ms": "1000"})
    bootstrap = broker.bootstrap
    topic = topic_factory(bootstrap, partitions=PARTITIONS, prefix="static")
    produce(bootstrap, topic, 3_000, PARTITIONS)
    group = f"static-{uuid.uuid4().hex[:8]}"

    def member(i: int, name: str) -> Member:
        return spawn("confluent", bootstrap, group, topic, name, delay=0.01, instance_id=f"instance-{i}",
                     session_ms=SESSION_MS)

    members = [member(i, f"static-{i}") for i in range(3)]
    everyone = list(members)
    try:
        def settled() -> bool:
            latest = [m.assignments[-1] if m.assignments else [] for m in members]
            flat = sorted(p for parts in latest for p in parts)
            return flat == list(range(PARTITIONS)) and all(latest)

        wait_until("three static members sharing the topic", settled, everyone)
        wait_until("the first 3,000 records consumed", lambda: len(consumed(everyone)) >= 3_000, everyone)
        history = {m.name: (list(m.assignments), list(m.revocations)) for m in members}
        before = _describe(bootstrap, group)
        assert before.state.name == "STABLE"  # type: ignore[attr-defined]
        generation = w.group_metadata_history(bootstrap, group)[-1]
        assert generation is not None

        restarting = members[1]
        owned = restarting.assignments[-1]
        restarting.stop()  # a static member's close does not leave the group
        still = _describe(bootstrap, group)
        assert _members(still) == _members(before) and still.state.name == "STABLE"  # type: ignore[attr-defined]

        again = member(1, "static-1-again")
        everyone.append(again)
        wait_until("the restarted instance to get its partitions", lambda: bool(again.assignments), everyone)
        assert again.assignments == [owned]
        now = _describe(bootstrap, group)
        assert now.state.name == "STABLE"  # type: ignore[attr-defined]
        ids, old_ids = _members(now), _members(before)
        assert ids["instance-1"] != old_ids["instance-1"]  # the new process, under a new member id
        assert ids["instance-0"] == old_ids["instance-0"] and ids["instance-2"] == old_ids["instance-2"]

        produce(bootstrap, topic, 3_000, PARTITIONS, first=3_000)
        wait_until("the next 3,000 records consumed", lambda: len(consumed(everyone)) >= 6_000, everyone)
        for m in (members[0], members[2]):  # no rebalance reached the others: no callback fired again
            assignments, revocations = history[m.name]
            assert m.assignments == assignments and m.revocations == revocations, m.name
        for m in (members[0], members[2], again):
            m.stop()

        latest = w.group_metadata_history(bootstrap, group)
        after = latest[-1]
        assert after is not None and after.generation == generation.generation
        assert dict((i, mid) for mid, i in after.members)["instance-1"] != _members(before)["instance-1"]
        expected = {(p, o) for p in range(PARTITIONS) for o in range(6_000 // PARTITIONS)}
        assert_exactly_once(everyone, expected, "static membership")
        assert all(not m.errors for m in everyone), {m.name: m.errors[:3] for m in everyone if m.errors}
    finally:
        for m in everyone:
            m.kill()
