"""Must-show 1 for every client: a group splits a topic, survives a join and a leave mid-stream with no loss
and no duplicate, and after a full stop resumes from its committed offsets.

For confluent-kafka, kafka-python, aiokafka, kafkajs and ``kcat -G``: a 6-partition topic holds 30,000
records (produced first with confluent-kafka). Three members of one group consume it, slowly; a fourth
joins and then one of the first three leaves while records are still flowing. Every record must be
consumed exactly once overall. The script clients commit synchronously after printing each batch; kcat
uses librdkafka's auto-commit, which commits what it has delivered when partitions are revoked and on
close. Then everyone stops, 3,000 more records are produced, three fresh members start and must read
exactly those — nothing before the committed offsets.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from .broker_process import BrokerProcess
from .groups_harness import CLIENTS, Member, assert_exactly_once, consumed, produce, spawn, wait_until

PARTITIONS = 6
RECORDS = 30_000
MORE = 3_000
GROUP_CONFIGS = {"group.initial.rebalance.delay.ms": "200"}


def _split(members: list[Member]) -> bool:
    """The members' latest assignments are disjoint and cover every partition."""
    latest = [m.assignments[-1] if m.assignments else [] for m in members]
    if any(not parts for parts in latest):
        return False
    flat = [p for parts in latest for p in parts]
    return len(flat) == len(set(flat)) == PARTITIONS


def _distinct(members: list[Member]) -> int:
    return len(consumed(members))


# make test: librdkafka and kafkajs (the most used client libraries, and the two most different); every client
# in the slow suite.
@pytest.mark.parametrize(
    "client", [c if c in ("confluent", "kafkajs") else pytest.param(c, marks=pytest.mark.slow) for c in CLIENTS]
)
def test_group_shares_rebalances_and_resumes(
    client: str,
    broker_factory: Callable[..., BrokerProcess],
    topic_factory: Callable[..., str],
    kcat: str,
    node: str,
) -> None:
    broker = broker_factory(configs=GROUP_CONFIGS)
    bootstrap = broker.bootstrap
    topic = topic_factory(bootstrap, partitions=PARTITIONS, prefix=f"grp-{client}")
    produce(bootstrap, topic, RECORDS, PARTITIONS)
    expected = {(p, o) for p in range(PARTITIONS) for o in range(RECORDS // PARTITIONS)}
    group = f"group-{client}-{uuid.uuid4().hex[:8]}"

    members = [spawn(client, bootstrap, group, topic, f"{client}-{i}") for i in range(3)]
    everyone = list(members)
    try:
        wait_until("three members sharing all partitions", lambda: _split(members), everyone)
        wait_until("the three to consume 20%", lambda: _distinct(everyone) >= RECORDS // 5, everyone)

        fourth = spawn(client, bootstrap, group, topic, f"{client}-3")
        everyone.append(fourth)
        members.append(fourth)
        wait_until("the fourth member to consume", lambda: fourth.count >= 200, everyone)
        wait_until("four members sharing all partitions", lambda: _split(members), everyone)

        leaver = members.pop(0)
        leaver.stop()
        at_leave = _distinct(everyone)
        assert at_leave < RECORDS, f"{client}: everything was consumed before the leave; slow the members"
        counts_at_leave = {m.name: m.count for m in members}
        wait_until("every record consumed", lambda: _distinct(everyone) >= RECORDS, everyone)
        for m in members:
            m.stop()

        assert_exactly_once(everyone, expected, f"{client}, first run")
        assert all(not m.errors for m in everyone), {m.name: m.errors[:3] for m in everyone if m.errors}
        assert fourth.count > 0 and leaver.count > 0
        took_over = [m.name for m in members if m.count > counts_at_leave[m.name]]
        assert took_over, f"{client}: nobody consumed after {leaver.name} left"
        assert len(fourth.assignments) >= 1 and len(members[0].assignments) >= 2  # rebalanced, not static

        # Everyone stopped: the group resumes from its committed offsets.
        produce(bootstrap, topic, MORE, PARTITIONS, first=RECORDS)
        first_new, end = RECORDS // PARTITIONS, (RECORDS + MORE) // PARTITIONS
        newer = {(p, o) for p in range(PARTITIONS) for o in range(first_new, end)}
        again = [spawn(client, bootstrap, group, topic, f"{client}-again-{i}", delay=0.01) for i in range(3)]
        everyone += again
        wait_until("the new records consumed after the restart", lambda: _distinct(again) >= MORE, everyone)
        for m in again:
            m.stop()
        assert_exactly_once(again, newer, f"{client}, after restart")
        assert all(not m.errors for m in again), {m.name: m.errors[:3] for m in again if m.errors}
    finally:
        for m in everyone:
            m.kill()
