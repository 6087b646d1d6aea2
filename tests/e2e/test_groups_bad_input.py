"""Must-show 5: bad group input gets the right Kafka error code, loses nothing, and the group carries on.

Raw protocol requests (``groups_wire``, laid out from the spec) against a real broker process: commits for
unknown topics and partitions, stale generations, unknown members, oversized metadata, empty group ids,
bad session timeouts, fenced static instances, deletes of non-empty groups, malformed frames. After each
abuse the same group still heartbeats, commits and fetches, and a confluent-kafka consumer group on the
same broker consumes normally.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from . import groups_wire as w
from .broker_process import BrokerProcess
from .groups_harness import produce
from .helpers import create_topic
from .kafka_wire import connect, frame, request_header, string, wait_closed

CONFIGS = {"group.initial.rebalance.delay.ms": "0", "offset.metadata.max.bytes": "4096"}


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("groups-bad") / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        b.close()


@pytest.fixture
def topic(gbroker: BrokerProcess) -> str:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    create_topic(gbroker.bootstrap, name, 3)
    return name


@pytest.fixture
def member_factory(gbroker: BrokerProcess) -> Iterator[Callable[..., w.Member]]:
    made: list[w.Member] = []

    def make(group: str, instance_id: str | None = None) -> w.Member:
        m = w.Member(gbroker.bootstrap, group, instance_id)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def _stable_member(make: Callable[..., w.Member], topic: str) -> w.Member:
    group = f"g-{uuid.uuid4().hex[:8]}"
    m = make(group)
    joined = m.join(topics=(topic,))
    assert joined.error == w.NONE and joined.leader == m.member_id and joined.generation == 1
    error, got = m.sync({m.member_id: w.assignment(topic, [0, 1, 2])})
    assert error == w.NONE and got == w.assignment(topic, [0, 1, 2])
    return m


def _carries_on(m: w.Member, topic: str, offset: int) -> None:
    assert m.heartbeat() == w.NONE
    assert m.commit([(topic, 2, offset, "ok")]) == {(topic, 2): w.NONE}
    error, got = m.fetch({topic: [2]})
    assert error == w.NONE and got[(topic, 2)] == (offset, "ok", w.NONE)
    (desc,) = m.describe(m.group)
    assert desc["state"] == "Stable" and [x["member_id"] for x in desc["members"]] == [m.member_id]


def test_commits_for_unknown_topics_partitions_and_oversized_metadata(
    member_factory: Callable[..., w.Member], topic: str
) -> None:
    m = _stable_member(member_factory, topic)
    result = m.commit([
        ("no-such-topic", 0, 5, None),
        (topic, 99, 5, None),
        (topic, 0, 7, "x" * 4097),
        (topic, 1, 11, "x" * 4096),
    ])
    assert result == {
        ("no-such-topic", 0): w.UNKNOWN_TOPIC_OR_PARTITION,
        (topic, 99): w.UNKNOWN_TOPIC_OR_PARTITION,
        (topic, 0): w.OFFSET_METADATA_TOO_LARGE,
        (topic, 1): w.NONE,
    }
    error, got = m.fetch({topic: [0, 1]})
    assert error == w.NONE
    assert got[(topic, 0)][0] == -1  # the refused commit left nothing behind
    assert got[(topic, 1)] == (11, "x" * 4096, w.NONE)
    _carries_on(m, topic, 20)


def test_stale_generations_unknown_members_and_wrong_callers(
    member_factory: Callable[..., w.Member], topic: str
) -> None:
    m = _stable_member(member_factory, topic)
    tp = [(topic, 0, 3, None)]
    assert m.commit(tp, generation=0) == {(topic, 0): w.ILLEGAL_GENERATION}
    assert m.commit(tp, generation=7) == {(topic, 0): w.ILLEGAL_GENERATION}
    assert m.commit(tp, member_id="ghost") == {(topic, 0): w.UNKNOWN_MEMBER_ID}
    assert m.commit(tp, generation=-1, member_id="") == {(topic, 0): w.UNKNOWN_MEMBER_ID}  # the group has members
    assert m.commit(tp, generation=3, group=f"missing-{uuid.uuid4().hex[:6]}") == {(topic, 0): w.ILLEGAL_GENERATION}
    assert m.heartbeat(generation=0) == w.ILLEGAL_GENERATION
    assert m.heartbeat(member_id="ghost") == w.UNKNOWN_MEMBER_ID
    assert m.heartbeat(group=f"missing-{uuid.uuid4().hex[:6]}") == w.UNKNOWN_MEMBER_ID
    assert m.sync(generation=5) == (w.ILLEGAL_GENERATION, b"")
    assert m.leave([("ghost", None)]) == (w.NONE, [w.UNKNOWN_MEMBER_ID])
    assert m.delete_groups(m.group) == {m.group: w.NON_EMPTY_GROUP}
    assert m.delete_offsets({topic: [0]}) == (w.NONE, {(topic, 0): w.GROUP_SUBSCRIBED_TO_TOPIC})
    _error, got = m.fetch({topic: [0]})
    assert got[(topic, 0)][0] == -1  # none of the refused commits landed
    _carries_on(m, topic, 4)


def test_malformed_group_ids_and_join_parameters(member_factory: Callable[..., w.Member], topic: str) -> None:
    m = member_factory("")
    assert m.join(topics=(topic,)).error == w.INVALID_GROUP_ID
    assert m.heartbeat(generation=1, member_id="x") == w.INVALID_GROUP_ID
    assert m.sync(generation=1) == (w.INVALID_GROUP_ID, b"")
    assert m.leave([("x", None)])[0] == w.INVALID_GROUP_ID
    other = member_factory(f"g-{uuid.uuid4().hex[:8]}")
    assert other.join(topics=(topic,), session_ms=1).error == w.INVALID_SESSION_TIMEOUT
    assert other.join(topics=(topic,), session_ms=3_600_000).error == w.INVALID_SESSION_TIMEOUT
    assert other.join(topics=(topic,), protocol_type="").error == w.INCONSISTENT_GROUP_PROTOCOL
    assert other.join(topics=(topic,), protocols=()).error == w.INCONSISTENT_GROUP_PROTOCOL
    stable = _stable_member(member_factory, topic)
    intruder = member_factory(stable.group)
    assert intruder.join(topics=(topic,), protocols=("roundrobin",)).error == w.INCONSISTENT_GROUP_PROTOCOL
    intruder.member_id = "made-up"
    assert intruder.join(topics=(topic,)).error == w.UNKNOWN_MEMBER_ID
    _carries_on(stable, topic, 8)


def test_fenced_static_instance(member_factory: Callable[..., w.Member], topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = member_factory(group, instance_id="instance-1")
    joined = first.join(topics=(topic,))
    assert joined.error == w.NONE
    assert first.sync({first.member_id: w.assignment(topic, [0, 1, 2])})[0] == w.NONE
    second = member_factory(group, instance_id="instance-1")  # a second process with the same instance id
    again = second.join(topics=(topic,))
    assert again.error == w.NONE and again.generation == joined.generation and again.member_id != first.member_id
    assert second.sync()[1] == w.assignment(topic, [0, 1, 2])
    assert first.heartbeat() == w.FENCED_INSTANCE_ID
    assert first.commit([(topic, 0, 1, None)]) == {(topic, 0): w.FENCED_INSTANCE_ID}
    assert first.leave()[1] == [w.FENCED_INSTANCE_ID]
    assert second.heartbeat() == w.NONE
    assert second.commit([(topic, 0, 1, None)]) == {(topic, 0): w.NONE}


def test_offset_delete_and_delete_groups(member_factory: Callable[..., w.Member], topic: str) -> None:
    m = _stable_member(member_factory, topic)
    assert m.commit([(topic, 0, 5, None), (topic, 1, 6, None)]) == {(topic, 0): w.NONE, (topic, 1): w.NONE}
    assert m.leave() == (w.NONE, [w.NONE])
    (desc,) = m.describe(m.group)
    assert desc["state"] == "Empty"
    top, per = m.delete_offsets({topic: [0], "no-such-topic": [0]})
    assert top == w.NONE and per == {(topic, 0): w.NONE, ("no-such-topic", 0): w.UNKNOWN_TOPIC_OR_PARTITION}
    assert m.fetch({topic: [0, 1]})[1] == {(topic, 0): (-1, "", w.NONE), (topic, 1): (6, "", w.NONE)}
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    assert m.delete_groups(m.group, missing) == {m.group: w.NONE, missing: w.GROUP_ID_NOT_FOUND}
    assert m.fetch({topic: [1]})[1] == {(topic, 1): (-1, "", w.NONE)}
    (gone,) = m.describe(m.group)
    assert gone["state"] == "Dead" and gone["members"] == []


def test_malformed_group_frames_close_only_that_connection(gbroker: BrokerProcess, topic: str,
                                                           member_factory: Callable[..., w.Member]) -> None:
    m = _stable_member(member_factory, topic)
    sock = connect(gbroker.bootstrap)
    try:
        # a JoinGroup v5 whose protocols array claims a million entries that are not there
        body = string(m.group) + b"\x00\x00\x27\x10" * 2 + string("") + b"\xff\xff" \
            + string("consumer") + b"\x00\x0f\x42\x40"
        sock.sendall(frame(request_header(w.JOIN_GROUP, 5, 9, "bad", False) + body))
        assert wait_closed(sock) == b""
    finally:
        sock.close()
    _carries_on(m, topic, 30)


def test_a_consumer_group_works_after_the_abuse(gbroker: BrokerProcess, topic: str, tmp_path: Path) -> None:
    produce(gbroker.bootstrap, topic, 300, 3)
    group = f"after-{uuid.uuid4().hex[:8]}"
    c = Consumer({
        "bootstrap.servers": gbroker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    try:
        c.subscribe([topic])
        got = 0
        for _ in range(200):  # bounded: each consume waits at most 0.5 s
            got += sum(1 for msg in c.consume(300, 0.5) if msg.error() is None)
            if got >= 300:
                break
        assert got == 300
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
        assert [tp.offset for tp in committed] == [100, 100, 100]
    finally:
        c.close()
