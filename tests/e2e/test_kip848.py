"""KIP-848 with a real client: confluent-kafka (librdkafka) with ``group.protocol=consumer`` against the
real broker process — server-side assignment, incremental rebalances, commits by member epoch, a broker
restart — plus the protocol's error answers over a real socket.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module

from .broker_process import BrokerProcess
from .group_members import (
    Member,
    SequenceProducer,
    assert_consumed_exactly_once,
    assert_healthy,
    assert_join_moved_only_to,
    assignment_settled,
    wait_until,
)

PARTITIONS = 6
FAST = {"group.consumer.heartbeat.interval.ms": "250", "group.consumer.session.timeout.ms": "10000"}


def kip848(name: str, bootstrap: str, group: str, topic: str, **conf: object) -> Member:
    return Member(name, bootstrap, group, topic, **{"group.protocol": "consumer", **conf})


def stop_all(*members: Member) -> None:
    for m in members:
        m.stop()



def test_kip848_member_joining_revokes_only_what_moves_and_every_record_is_consumed_once(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs=FAST)
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="kip848")
    group = f"kip848-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS).start()
    first = [kip848(f"m{i}", broker.bootstrap, group, topic).start() for i in range(3)]
    try:
        wait_until(lambda: assignment_settled(first, PARTITIONS), "three members to split six partitions",
                   detail=lambda: [m.snapshot() for m in first])
        wait_until(lambda: all(m.consumed for m in first), "every member to consume")
        before = {m.name: m.snapshot() for m in first}
        assert sorted(len(owned) for owned, _ in before.values()) == [2, 2, 2]

        joiner = kip848("m3", broker.bootstrap, group, topic).start()
        everyone = [*first, joiner]
        wait_until(lambda: assignment_settled(everyone, PARTITIONS) and bool(joiner.snapshot()[0]),
                   "four members to split six partitions", detail=lambda: [m.snapshot() for m in everyone])
        assert_join_moved_only_to(first, before, joiner)

        # Consumption goes on: everything produced, before and after the join, is consumed exactly once.
        wait_until(lambda: bool(joiner.consumed), "the new member to consume")
        assert_consumed_exactly_once(everyone, producer)
    finally:
        stop_all(*first, *([joiner] if "joiner" in locals() else []))
        producer.stop()


def committed(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer"})
    try:
        return {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30)}
    finally:
        c.close()


def describe(bootstrap: str, group: str, timeout: float = 60.0) -> Any:
    """DescribeConsumerGroups, retried while the coordinator is still loading (a retriable answer)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
        except KafkaException as e:
            loading = e.args[0].code() in (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR)
            if not loading or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_kip848_group_and_committed_offsets_survive_a_broker_kill(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    # Small snapshots: the group's offsets partition is snapshotted (and its older records dropped) many
    # times, so the restart rebuilds the group from a snapshot plus a short tail.
    broker = broker_factory(configs={**FAST, "offsets.snapshot.records": "50"})
    topic = topic_factory(broker.bootstrap, partitions=PARTITIONS, prefix="kip848r")
    group = f"kip848r-{uuid.uuid4().hex[:8]}"
    producer = SequenceProducer(broker.bootstrap, topic, PARTITIONS)
    for _ in range(600):
        producer.produce_one()
    producer.stop()
    members = [
        kip848(f"r{i}", broker.bootstrap, group, topic, commit_every=1, **{"group.remote.assignor": "range"}).start()
        for i in range(2)
    ]
    try:
        wait_until(lambda: assignment_settled(members, PARTITIONS), "two members to split six partitions")
        # The server-side range assignor: contiguous ranges.
        assert sorted(sorted(m.snapshot()[0]) for m in members) == [[0, 1, 2], [3, 4, 5]]
        wait_until(lambda: sum(len(m.consumed) for m in members) >= 600, "600 records consumed")
        wait_until(lambda: sum(committed(broker.bootstrap, group, topic).values()) == 600, "all offsets committed")
        before = describe(broker.bootstrap, group)
        assert {m.member_id for m in before.members} == {m.member_id for m in members}
        assert before.partition_assignor == "range"
        marks = {m.name: m.snapshot() for m in members}

        assert "snapshot of" in broker.log_text()
        broker.kill9()
        broker.start()

        # The group came back from __consumer_offsets: same members, same epoch, same assignment.
        after = describe(broker.bootstrap, group)
        assert {m.member_id for m in after.members} == {m.member_id for m in members}
        assert str(after.state).endswith("STABLE"), after.state
        assert sum(committed(broker.bootstrap, group, topic).values()) == 600
        more = SequenceProducer(broker.bootstrap, topic, PARTITIONS)
        more.sent = 600
        for _ in range(300):
            more.produce_one()
        more.stop()
        wait_until(lambda: sum(len(m.consumed) for m in members) >= 900, "the 300 new records consumed",
                   detail=lambda: [len(m.consumed) for m in members])
        for m in members:  # no rebalance happened: the members kept their partitions throughout
            owned, seen = marks[m.name]
            assert m.events_since(seen) == [] and m.snapshot()[0] == owned
        got = Counter(v for m in members for v in m.values())
        assert sorted(got) == [f"{i:08d}".encode() for i in range(900)] and max(got.values()) == 1
        assert_healthy(*members)
    finally:
        stop_all(*members)
    # A new member of the (now empty) group resumes from the committed offsets: nothing is read twice.
    assert sum(committed(broker.bootstrap, group, topic).values()) == 900
    more = SequenceProducer(broker.bootstrap, topic, PARTITIONS)
    more.sent = 900
    for _ in range(60):
        more.produce_one()
    more.stop()
    late = kip848("late", broker.bootstrap, group, topic).start()
    try:
        wait_until(lambda: len(late.consumed) >= 60, "the new member to read the 60 new records")
        assert sorted(late.values()) == [f"{i:08d}".encode() for i in range(900, 960)]
        assert_healthy(late)
    finally:
        late.stop()


# --------------------------------------------------------------------------- the protocol over a real socket


async def _heartbeat(conn: Connection, version: int = 1, **fields: Any) -> Any:
    mod = request_module(68, version)
    joining = fields.get("member_epoch", 0) == 0  # a join is a full request; later ones only say what changed
    values: dict[str, Any] = {
        "group_id": "g", "member_id": "", "member_epoch": 0, "instance_id": None, "rack_id": None,
        "rebalance_timeout": datetime.timedelta(milliseconds=30000 if joining else -1),
        "subscribed_topic_names": () if joining else None, "server_assignor": None,
        "topic_partitions": () if joining else None,
    }
    values.update(fields)
    if version == 0:
        values.pop("subscribed_topic_regex", None)
    return await conn.send(mod.ConsumerGroupHeartbeatRequest(**values))


def test_kip848_error_answers_and_describe_over_the_wire(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    broker = broker_factory(configs={**FAST, "group.consumer.max.size": "2"})
    topic = topic_factory(broker.bootstrap, partitions=4, prefix="kip848w")
    group = f"wire-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        conn = await Connection.open("127.0.0.1", broker.port)
        try:
            hb = lambda **kw: _heartbeat(conn, **{"group_id": group, **kw})  # noqa: E731
            # Malformed requests: INVALID_REQUEST, and unknown assignors / regexes named as such.
            assert (await hb(member_id="")).error_code == ErrorCode.invalid_request  # v1: the client names itself
            assert (await hb(member_id="a", group_id="")).error_code == ErrorCode.invalid_request
            assert (await hb(member_id="a", topic_partitions=None)).error_code == ErrorCode.invalid_request
            assert (await hb(member_id="a", member_epoch=-3)).error_code == ErrorCode.invalid_request
            assert (await hb(member_id="a" * 40000)).error_code == ErrorCode.invalid_request  # too long for a key
            assert (await hb(member_id="a", server_assignor="sticky")).error_code == ErrorCode.unsupported_assignor
            bad = await hb(member_id="a", subscribed_topic_names=None, subscribed_topic_regex="(")
            assert bad.error_code == ErrorCode.invalid_regular_expression
            assert (await hb(member_id="a", member_epoch=3)).error_code == ErrorCode.group_id_not_found
            # v0: the coordinator generates the member id.
            v0 = await _heartbeat(conn, 0, group_id=group, subscribed_topic_names=(topic,))
            assert v0.error_code == ErrorCode.none and v0.member_id and v0.member_epoch == 1
            assert v0.heartbeat_interval == datetime.timedelta(milliseconds=250)
            assert sorted(v0.assignment.topic_partitions[0].partitions) == [0, 1, 2, 3]
            assert (await hb(member_id="nobody", member_epoch=1)).error_code == ErrorCode.unknown_member_id
            # v1, static: a second member with instance id "i" (the group is then full).
            s = await hb(
                member_id="static-1", instance_id="i", subscribed_topic_names=(topic,), server_assignor="range"
            )
            assert s.error_code == ErrorCode.none and s.member_epoch == 2 and s.assignment.topic_partitions == ()
            assert (await hb(member_id="third", subscribed_topic_names=(topic,))).error_code == (
                ErrorCode.group_max_size_reached)
            for epoch, code in ((5, ErrorCode.fenced_member_epoch), (1, ErrorCode.fenced_member_epoch)):
                assert (await hb(member_id="static-1", instance_id="i", member_epoch=epoch,
                                 topic_partitions=None)).error_code == code
            # The first member revokes half of its partitions before the static member gets them.
            r = await hb(member_id=v0.member_id, member_epoch=1, topic_partitions=None)
            assert r.error_code == ErrorCode.none and r.member_epoch == 1
            kept = r.assignment.topic_partitions
            assert sum(len(tp.partitions) for tp in kept) == 2
            d = await describe_wire(conn, group)
            assert d.error_code == ErrorCode.none and d.group_state == "Reconciling"
            assert (d.group_epoch, d.assignment_epoch, d.assignor_name) == (2, 2, "range")
            ok = await hb(member_id=v0.member_id, member_epoch=1, topic_partitions=kept)
            assert ok.member_epoch == 2 and ok.assignment is None
            got = await hb(member_id="static-1", instance_id="i", member_epoch=2, topic_partitions=())
            assert got.member_epoch == 2 and sum(len(tp.partitions) for tp in got.assignment.topic_partitions) == 2
            d = await describe_wire(conn, group)
            assert d.group_state == "Stable" and {m.member_id for m in d.members} == {v0.member_id, "static-1"}
            static = next(m for m in d.members if m.member_id == "static-1")
            assert static.instance_id == "i" and static.member_epoch == 2 and static.member_type == 1
            assert static.assignment == static.target_assignment
            assert {tp.topic_name for tp in static.assignment.topic_partitions} == {topic}
            # A second process with instance id "i" while it is held: UNRELEASED_INSTANCE_ID; after the
            # temporary leave (-2) it takes over, with the same partitions and no new group epoch.
            assert (await hb(member_id="static-2", instance_id="i", subscribed_topic_names=(topic,))).error_code == (
                ErrorCode.unreleased_instance_id)
            left = await hb(member_id="static-1", instance_id="i", member_epoch=-2, topic_partitions=None)
            assert left.error_code == ErrorCode.none and left.member_epoch == -2
            back = await hb(member_id="static-2", instance_id="i", subscribed_topic_names=(topic,))
            assert back.error_code == ErrorCode.none and back.member_epoch == 2
            assert back.assignment.topic_partitions == got.assignment.topic_partitions
            d = await describe_wire(conn, "no-such-group")
            assert d.error_code == ErrorCode.group_id_not_found
            # Leaving: the group goes on with the other member.
            bye = await hb(member_id=v0.member_id, member_epoch=-1, topic_partitions=None)
            assert bye.error_code == ErrorCode.none and bye.member_epoch == -1
            rest = await hb(member_id="static-2", instance_id="i", member_epoch=2, topic_partitions=None)
            assert rest.error_code == ErrorCode.none and rest.member_epoch == 3
            assert (await hb(member_id="other", instance_id="i", member_epoch=3)).error_code == (
                ErrorCode.fenced_instance_id)
            # OffsetCommit v9 carries the member epoch: a stale one is refused, the current one accepted.
            for epoch, member, code in ((2, "static-2", ErrorCode.stale_member_epoch),
                                        (3, "nobody", ErrorCode.unknown_member_id),
                                        (3, "static-2", ErrorCode.none)):
                assert await commit_wire(conn, group, member, epoch, topic) == code, (epoch, member)
        finally:
            await conn.close()

    asyncio.run(scenario())


async def commit_wire(conn: Connection, group: str, member: str, epoch: int, topic: str) -> ErrorCode:
    mod = request_module(8, 9)
    partition = mod.OffsetCommitRequestPartition(
        partition_index=0, committed_offset=5, committed_leader_epoch=-1, committed_metadata=None
    )
    resp = await conn.send(mod.OffsetCommitRequest(
        group_id=group, generation_id_or_member_epoch=epoch, member_id=member, group_instance_id=None,
        topics=(mod.OffsetCommitRequestTopic(name=topic, partitions=(partition,)),),
    ))
    code: ErrorCode = resp.topics[0].partitions[0].error_code
    return code


async def describe_wire(conn: Connection, group: str) -> Any:
    mod = request_module(69, 1)
    resp = await conn.send(mod.ConsumerGroupDescribeRequest(group_ids=(group,), include_authorized_operations=True))
    return resp.groups[0]


def test_kip848_members_that_stop_heartbeating_or_revoking_are_removed(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    """Session timeout: a silent member is removed. Rebalance timeout: a member that does not revoke in time
    is removed and its partitions go on. Partitions added to the topic are assigned at the next heartbeat."""
    broker = broker_factory(configs={"group.consumer.heartbeat.interval.ms": "100",
                                     "group.consumer.session.timeout.ms": "1500"})
    topic = topic_factory(broker.bootstrap, partitions=4, prefix="kip848t")
    group = f"timeouts-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        conn = await Connection.open("127.0.0.1", broker.port)
        try:
            hb = lambda **kw: _heartbeat(conn, **{"group_id": group, **kw})  # noqa: E731
            a = await hb(member_id="silent", subscribed_topic_names=(topic,))
            assert a.member_epoch == 1
            b = await hb(member_id="alive", subscribed_topic_names=(topic,),
                         rebalance_timeout=datetime.timedelta(milliseconds=300))
            assert b.member_epoch == 2
            epoch = b.member_epoch
            async with asyncio.timeout(60):  # hang guard: "silent" never heartbeats again
                while True:
                    r = await hb(member_id="alive", member_epoch=epoch, topic_partitions=())
                    assert r.error_code == ErrorCode.none, r
                    epoch = r.member_epoch
                    if r.assignment is not None and sum(len(t.partitions) for t in r.assignment.topic_partitions) == 4:
                        break
                    await asyncio.sleep(0.1)
            d = await describe_wire(conn, group)
            assert [m.member_id for m in d.members] == ["alive"] and d.group_epoch == 3 and epoch == 3
            assert (await hb(member_id="silent", member_epoch=1, topic_partitions=None)).error_code == (
                ErrorCode.unknown_member_id)
            # "slow" joins; "alive" (300 ms rebalance timeout) must give it half, but never acknowledges.
            s = await hb(member_id="slow", subscribed_topic_names=(topic,))
            assert s.member_epoch == 4 and s.assignment.topic_partitions == ()
            asked = await hb(member_id="alive", member_epoch=3, topic_partitions=None)
            assert asked.member_epoch == 3 and sum(len(t.partitions) for t in asked.assignment.topic_partitions) == 2
            async with asyncio.timeout(60):  # hang guard: "alive" keeps heartbeating but never revokes
                while True:
                    r = await hb(member_id="alive", member_epoch=3, topic_partitions=None)
                    if r.error_code != ErrorCode.none:
                        break
                    await hb(member_id="slow", member_epoch=4, topic_partitions=())
                    await asyncio.sleep(0.1)
            assert r.error_code == ErrorCode.unknown_member_id, "the member that did not revoke in time is gone"
            got = await hb(member_id="slow", member_epoch=4, topic_partitions=())
            assert got.error_code == ErrorCode.none and got.member_epoch == 5
            assert sum(len(t.partitions) for t in got.assignment.topic_partitions) == 4
            # Two partitions more: the next heartbeat brings a new group epoch and all six.
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_partitions([NewPartitions(topic, 6)])[topic].result(timeout=60)
            grown = await hb(member_id="slow", member_epoch=5, topic_partitions=got.assignment.topic_partitions)
            assert grown.member_epoch == 6
            assert sum(len(t.partitions) for t in grown.assignment.topic_partitions) == 6
        finally:
            await conn.close()

    asyncio.run(scenario())


async def _classic_join(conn: Connection, group: str, member_id: str = "", protocol_type: str = "consumer") -> Any:
    mod = request_module(11, 5)
    subscription = b"\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff"  # ConsumerProtocolSubscription v0, no topics
    return await conn.send(mod.JoinGroupRequest(
        group_id=group, session_timeout=datetime.timedelta(seconds=10), rebalance_timeout=datetime.timedelta(
            seconds=10), member_id=member_id, group_instance_id=None, protocol_type=protocol_type,
        protocols=(mod.JoinGroupRequestProtocol(name="range", metadata=subscription),),
    ))


def test_kip848_and_classic_groups_share_an_id_only_as_the_migration_policy_allows(
    broker_factory: Callable[..., BrokerProcess], topic_factory: Callable[..., str]
) -> None:
    """With ``group.consumer.migration.policy=disabled`` (Kafka 4's default is bidirectional: see
    test_group_migration.py) a non-empty group keeps its protocol; classic members may still join a consumer
    group, as in Kafka; empty groups are converted either way."""
    broker = broker_factory(configs={
        **FAST, "group.initial.rebalance.delay.ms": "0", "group.consumer.migration.policy": "disabled"})
    topic = topic_factory(broker.bootstrap, partitions=2, prefix="kip848c")
    suffix = uuid.uuid4().hex[:8]

    async def scenario() -> None:
        conn = await Connection.open("127.0.0.1", broker.port)
        try:
            # A classic group with a member: a consumer-protocol heartbeat is told the group is not one of its own.
            first = await _classic_join(conn, f"classic-{suffix}")
            assert first.error_code == ErrorCode.member_id_required
            joined = await _classic_join(conn, f"classic-{suffix}", first.member_id)
            assert joined.error_code == ErrorCode.none and joined.generation_id == 1
            r = await _heartbeat(conn, group_id=f"classic-{suffix}", member_id="m", subscribed_topic_names=(topic,))
            assert r.error_code == ErrorCode.group_id_not_found
            # A consumer group: a classic JoinGroup of another protocol type gets INCONSISTENT_GROUP_PROTOCOL; a
            # consumer-protocol one joins as a classic member (no leader: the coordinator assigns).
            ok = await _heartbeat(conn, group_id=f"consumer-{suffix}", member_id="m", subscribed_topic_names=(topic,))
            assert ok.error_code == ErrorCode.none
            assert (await _classic_join(conn, f"consumer-{suffix}", "x", protocol_type="connect")).error_code == (
                ErrorCode.inconsistent_group_protocol)
            inside = await _classic_join(conn, f"consumer-{suffix}", "x")
            assert inside.error_code == ErrorCode.none and inside.leader == "" and inside.member_id == "x"
            assert inside.generation_id == ok.member_epoch + 1 and inside.protocol_name == "range"
            # An empty classic group (offsets committed by an assign() consumer) becomes a consumer group, and
            # keeps its offsets.
            assert await commit_wire(conn, f"simple-{suffix}", "", -1, topic) == ErrorCode.none
            conv = await _heartbeat(conn, group_id=f"simple-{suffix}", member_id="m", subscribed_topic_names=(topic,))
            assert conv.error_code == ErrorCode.none and conv.member_epoch == 1
            d = await describe_wire(conn, f"simple-{suffix}")
            assert d.error_code == ErrorCode.none and [m.member_id for m in d.members] == ["m"]
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert committed(broker.bootstrap, f"simple-{suffix}", topic, 2) == {0: 5, 1: -1001}
