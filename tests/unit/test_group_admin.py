"""brokers/group_admin.py and the ``tidelog groups`` command against a scripted coordinator on 127.0.0.1.

The scripted side answers with kio messages as the protocol specifies; these tests pin down what the client
sends and how it reads answers. The real coordinator is exercised in tests/e2e/test_groups_cli.py.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import json
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer

from brokers.cli import groups as cli_groups
from brokers.cli.client import KafkaClient
from brokers.codec.frame import RequestHead
from brokers.group_admin import (
    LATEST,
    decode_assignment,
    delete_groups,
    describe_group,
    fetch_offsets,
    list_groups,
)
from brokers.handlers.base import make, response_module
from tests.scripted_broker import FULL, NO_THROTTLE, ScriptedBroker, coordinator_answer
from tests.scripted_broker import scripted as scripted  # the fixture

pytestmark = pytest.mark.asyncio
GROUP_APIS = {8: (2, 9), 9: (2, 9), 15: (0, 5), 16: (0, 5), 42: (0, 2), 69: (0, 1)}
TOPICS = {"t": 3, "u": 1}


def assignment_bytes(version: int, partitions: dict[str, list[int]]) -> bytes:
    mod = importlib.import_module(f"kio.schema.consumer_protocol_assignment.v{version}.data")
    value = mod.ConsumerProtocolAssignment(
        assigned_partitions=tuple(mod.TopicPartition(topic=t, partitions=tuple(ps)) for t, ps in partitions.items()),
        user_data=b"x",
    )
    buf = io.BytesIO()
    buf.write(struct.pack(">h", version))
    entity_writer(type(value))(buf, value)
    return buf.getvalue()


class Cluster:
    """What the scripted coordinator knows: groups, committed offsets, log bounds; and what it was asked."""

    def __init__(self) -> None:
        self.port = 0
        self.groups: dict[str, tuple[str, str]] = {  # id -> (type, state)
            "kip": ("consumer", "Stable"), "live": ("classic", "Stable"), "idle": ("classic", "Empty"),
        }
        self.committed: dict[str, dict[tuple[str, int], int]] = {
            "live": {("t", 0): 40, ("t", 1): 101}, "idle": {("t", 0): 20, ("u", 0): 5},
        }
        self.loading = 0  # answer ConsumerGroupDescribe with COORDINATOR_LOAD_IN_PROGRESS this many more times
        self.list_loading = 0  # the same for ListGroups
        self.commits: list[Any] = []

    @staticmethod
    def start(tp: tuple[str, int]) -> int:
        return 10

    @staticmethod
    def end(tp: tuple[str, int]) -> int:
        return 100 + tp[1]

    async def respond(self, head: RequestHead, r: Any) -> Any:
        mod = response_module(head.api_key, head.api_version)
        handler: Callable[[Any, Any], Any] = getattr(self, f"api_{head.api_key}")
        return handler(mod, r)

    def api_3(self, m: Any, r: Any) -> Any:  # Metadata
        names = [t.name for t in r.topics] if r.topics is not None else list(TOPICS)
        topics = tuple(
            make(m.MetadataResponseTopic, name=n,
                 error_code=ErrorCode.none if n in TOPICS else ErrorCode.unknown_topic_or_partition,
                 topic_id=uuid.uuid4(), is_internal=False,
                 partitions=tuple(make(m.MetadataResponsePartition, error_code=ErrorCode.none, partition_index=p,
                                       leader_id=7, leader_epoch=0, replica_nodes=(7,), isr_nodes=(7,),
                                       offline_replicas=()) for p in range(TOPICS.get(n, 0))))
            for n in names
        )
        return make(m.MetadataResponse, throttle_time=NO_THROTTLE, cluster_id="c", controller_id=7, topics=topics,
                    brokers=(make(m.MetadataResponseBroker, node_id=7, host="127.0.0.1", port=self.port, rack=None),))

    def api_10(self, m: Any, r: Any) -> Any:  # FindCoordinator
        return coordinator_answer(int(r.__version__), [(k, ErrorCode.none) for k in r.coordinator_keys], self.port)

    def api_16(self, m: Any, r: Any) -> Any:  # ListGroups: ignores the filters, so the client's own filter shows
        if self.list_loading:
            self.list_loading -= 1
            return make(m.ListGroupsResponse, throttle_time=NO_THROTTLE,
                        error_code=ErrorCode.coordinator_load_in_progress, groups=())
        groups = tuple(make(m.ListedGroup, group_id=g, protocol_type="consumer", group_state=s, group_type=k)
                       for g, (k, s) in self.groups.items())
        return make(m.ListGroupsResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none, groups=groups)

    def api_69(self, m: Any, r: Any) -> Any:  # ConsumerGroupDescribe
        (g,) = r.group_ids
        if self.loading:
            self.loading -= 1
            return m.ConsumerGroupDescribeResponse(throttle_time=NO_THROTTLE, groups=(make(
                m.DescribedGroup, error_code=ErrorCode.coordinator_load_in_progress, group_id=g, group_state="",
                group_epoch=-1, assignment_epoch=-1, assignor_name="", members=()),))
        kind, state = self.groups.get(g, ("", ""))
        if kind != "consumer":
            return m.ConsumerGroupDescribeResponse(throttle_time=NO_THROTTLE, groups=(make(
                m.DescribedGroup, error_code=ErrorCode.group_id_not_found, error_message="not a consumer group",
                group_id=g, group_state="", group_epoch=-1, assignment_epoch=-1, assignor_name="", members=()),))
        assigned = m.Assignment(topic_partitions=(m.TopicPartitions(topic_id=uuid.uuid4(), topic_name="t",
                                                                    partitions=(2, 0)),))
        member = make(m.Member, member_id="m-1", instance_id=None, rack_id=None, member_epoch=9, client_id="rdkafka",
                      client_host="/127.0.0.1", subscribed_topic_names=("t",), assignment=assigned,
                      target_assignment=assigned)
        return m.ConsumerGroupDescribeResponse(throttle_time=NO_THROTTLE, groups=(make(
            m.DescribedGroup, error_code=ErrorCode.none, group_id=g, group_state=state, group_epoch=9,
            assignment_epoch=8, assignor_name="uniform", members=(member,)),))

    def api_15(self, m: Any, r: Any) -> Any:  # DescribeGroups
        (g,) = r.groups
        state = self.groups.get(g, ("classic", "Dead"))[1]
        members = ()
        if state == "Stable":
            members = (make(m.DescribedGroupMember, member_id="c-1", group_instance_id="static-1", client_id="cl",
                            client_host="/127.0.0.1", member_metadata=b"",
                            member_assignment=assignment_bytes(1, {"t": [1, 0]})),)
        return make(m.DescribeGroupsResponse, throttle_time=NO_THROTTLE, groups=(make(
            m.DescribedGroup, error_code=ErrorCode.none, group_id=g, group_state=state,
            protocol_type="consumer" if state != "Dead" else "", protocol_data="range" if members else "",
            members=members),))

    def api_9(self, m: Any, r: Any) -> Any:  # OffsetFetch (all topics)
        def topics(g: str, topic_cls: Any, part_cls: Any) -> tuple[Any, ...]:
            by_topic: dict[str, list[Any]] = {}
            for (t, p), off in sorted(self.committed.get(g, {}).items()):
                by_topic.setdefault(t, []).append(make(
                    part_cls, partition_index=p, committed_offset=off, committed_leader_epoch=-1, metadata="",
                    error_code=ErrorCode.none))
            return tuple(make(topic_cls, name=t, partitions=tuple(ps)) for t, ps in by_topic.items())

        if int(r.__version__) >= 8:
            (g,) = (x.group_id for x in r.groups)
            return m.OffsetFetchResponse(throttle_time=NO_THROTTLE, groups=(m.OffsetFetchResponseGroup(
                group_id=g, topics=topics(g, m.OffsetFetchResponseTopics, m.OffsetFetchResponsePartitions),
                error_code=ErrorCode.none),))
        return make(m.OffsetFetchResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                    topics=topics(r.group_id, m.OffsetFetchResponseTopic, m.OffsetFetchResponsePartition))

    def api_8(self, m: Any, r: Any) -> Any:  # OffsetCommit
        self.commits.append(r)
        for t in r.topics:
            for p in t.partitions:
                self.committed.setdefault(r.group_id, {})[(t.name, p.partition_index)] = p.committed_offset
        return make(m.OffsetCommitResponse, throttle_time=NO_THROTTLE, topics=tuple(
            m.OffsetCommitResponseTopic(name=t.name, partitions=tuple(m.OffsetCommitResponsePartition(
                partition_index=p.partition_index, error_code=ErrorCode.none) for p in t.partitions))
            for t in r.topics))

    def api_2(self, m: Any, r: Any) -> Any:  # ListOffsets: record i of a partition has timestamp i * 1000 ms
        def offset(tp: tuple[str, int], ts: int) -> int:
            if ts == LATEST:
                return self.end(tp)
            if ts == -2:
                return self.start(tp)
            return max(self.start(tp), ts // 1000) if ts // 1000 < self.end(tp) else -1

        return make(m.ListOffsetsResponse, throttle_time=NO_THROTTLE, topics=tuple(
            m.ListOffsetsTopicResponse(name=t.name, partitions=tuple(make(
                m.ListOffsetsPartitionResponse, partition_index=p.partition_index, error_code=ErrorCode.none,
                timestamp=-1, offset=offset((t.name, p.partition_index), p.timestamp), leader_epoch=0)
                for p in t.partitions))
            for t in r.topics))

    def api_42(self, m: Any, r: Any) -> Any:  # DeleteGroups
        def code(g: str) -> ErrorCode:
            state = self.groups.get(g, ("", "Dead"))[1]
            return ErrorCode.non_empty_group if state == "Stable" else (
                ErrorCode.group_id_not_found if state == "Dead" else ErrorCode.none)

        return m.DeleteGroupsResponse(throttle_time=NO_THROTTLE, results=tuple(
            m.DeletableGroupResult(group_id=g, error_code=code(g)) for g in r.groups_names))


Start = Callable[..., Awaitable[ScriptedBroker]]


async def cluster_broker(scripted: Start, **ranges: tuple[int, int]) -> tuple[Cluster, ScriptedBroker]:
    cluster = Cluster()
    apis = {**FULL, **GROUP_APIS, **{int(k.removeprefix("api")): v for k, v in ranges.items()}}
    b = await scripted(cluster.respond, ranges=apis)
    cluster.port = b.port
    return cluster, b


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tidelog")
    cli_groups.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["groups", *argv])


async def run(capsys: pytest.CaptureFixture[str], b: ScriptedBroker, *argv: str) -> tuple[int, str, str]:
    code = await cli_groups.run_async(parse("--bootstrap", f"127.0.0.1:{b.port}", "--timeout", "10", *argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- decoding and parsing


async def test_assignments_of_every_version_decode() -> None:
    for version in range(4):
        assert decode_assignment(assignment_bytes(version, {"b": [3, 1], "a": [0]})) == (("a", 0), ("b", 1), ("b", 3))
    assert decode_assignment(b"") == ()  # a member mid-rebalance has no assignment yet
    newer = assignment_bytes(3, {"a": [2]})
    assert decode_assignment(struct.pack(">h", 7) + newer[2:] + b"future-fields") == (("a", 2),)


async def test_argument_values() -> None:
    assert cli_groups._topic_spec("t") == ("t", ())
    assert cli_groups._topic_spec("a.b:3,0-2,1") == ("a.b", (0, 1, 2, 3))
    for bad in (":1", "t:", "t:x", "t:3-1", "t:-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_groups._topic_spec(bad)
    assert cli_groups._states("stable,EMPTY") == ["Stable", "Empty"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown group state 'sleepy'"):
        cli_groups._states("sleepy")
    assert cli_groups._datetime_ms("2024-05-01T12:00:00Z") == 1714564800000
    assert cli_groups._datetime_ms("2024-05-01T14:00:00.250+02:00") == 1714564800250
    naive = datetime.datetime(2024, 5, 1, 12, 0, 0).astimezone()  # no zone: local time
    assert cli_groups._datetime_ms("2024-05-01T12:00:00") == int(naive.timestamp() * 1000)
    assert cli_groups._datetime_ms("1960-01-01T00:00:00Z") == 0  # never a negative (special) timestamp
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        cli_groups._datetime_ms("yesterday")


@pytest.mark.parametrize("argv", [
    ["reset-offsets", "g", "--topic", "t"],  # no --to-*
    ["reset-offsets", "g", "--topic", "t", "--to-earliest", "--to-latest"],
    ["reset-offsets", "g", "--to-earliest"],  # no --topic / --all-topics
    ["reset-offsets", "g", "--topic", "t:x", "--to-earliest"],
    ["reset-offsets", "g", "--topic", "t", "--to-datetime", "soon"],
    ["reset-offsets", "g", "--topic", "t", "--to-offset", "ten"],
    ["reset-offsets", "g", "--topic", "t", "--to-latest", "--execute", "--dry-run"],
    ["list", "--state", "sleepy"],
    ["describe"],
    ["delete"],
    ["--bootstrap", "nohost", "list"],
    ["list", "--timeout", "0"],
    ["list", "--timeout", "soon"],
    ["frobnicate"],
])
async def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


async def test_options_go_before_or_after_the_action() -> None:
    before = parse("--bootstrap", "127.0.0.1:1", "--json", "list")
    after = parse("list", "--bootstrap", "127.0.0.1:1", "--json")
    default = parse("list")
    assert (before.bootstrap, before.json) == (after.bootstrap, after.json) == ("127.0.0.1:1", True)
    assert (default.bootstrap, default.json, default.timeout) == ("127.0.0.1:9092", False, 30.0)


async def test_tables_align_columns() -> None:
    text = cli_groups.table(("A", "LONGER"), [("xyz", None), ("w", 12345678)])
    assert text.splitlines() == ["A    LONGER", "xyz  -", "w    12345678"]


# --------------------------------------------------------------------------- group_admin


async def test_list_groups_merges_and_filters(scripted: Start) -> None:
    cluster, b = await cluster_broker(scripted)
    cluster.list_loading = 2
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        assert [g.group_id for g in await list_groups(client)] == ["idle", "kip", "live"]  # after 2 LOAD_IN_PROGRESS
        stable = await list_groups(client, states=["Stable"])
        assert [(g.group_id, g.group_type) for g in stable] == [("kip", "consumer"), ("live", "classic")]
        assert [g.group_id for g in await list_groups(client, types=["classic"], states=["Empty"])] == ["idle"]
    sent = [r for _, r in b.requests(16)]
    assert len(sent) == 5
    assert sent[3].states_filter == ("Stable",) and sent[4].types_filter == ("classic",)


async def test_describe_uses_the_api_of_the_group_type(scripted: Start) -> None:
    cluster, b = await cluster_broker(scripted)
    cluster.loading = 2
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        kip = await describe_group(client, "kip")  # retried through two COORDINATOR_LOAD_IN_PROGRESS answers
        assert (kip.group_type, kip.state, kip.protocol, kip.epoch, kip.assignment_epoch) == (
            "consumer", "Stable", "uniform", 9, 8)
        assert [(m.member_id, m.epoch, m.assignment) for m in kip.members] == [("m-1", 9, (("t", 0), ("t", 2)))]
        live = await describe_group(client, "live")  # ConsumerGroupDescribe says not found: DescribeGroups
        assert (live.group_type, live.state, live.protocol, live.epoch) == ("classic", "Stable", "range", None)
        assert [(m.instance_id, m.client_id, m.assignment) for m in live.members] == [
            ("static-1", "cl", (("t", 0), ("t", 1)))]
        gone = await describe_group(client, "nobody")
        assert not gone.exists
    assert len(b.requests(69)) == 5 and len(b.requests(15)) == 2


@pytest.mark.parametrize("fetch_max", [7, 9])
async def test_offsets_are_fetched_with_old_and_new_versions(scripted: Start, fetch_max: int) -> None:
    _, b = await cluster_broker(scripted, api9=(2, fetch_max))
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        assert await fetch_offsets(client, "idle") == {("t", 0): 20, ("u", 0): 5}
        assert await fetch_offsets(client, "unknown") == {}
    assert {h.api_version for h, _ in b.requests(9)} == {fetch_max}


async def test_delete_reports_each_group(scripted: Start) -> None:
    _, b = await cluster_broker(scripted)
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        got = await delete_groups(client, ["idle", "live", "nobody"])
    assert got == {"idle": ErrorCode.none, "live": ErrorCode.non_empty_group, "nobody": ErrorCode.group_id_not_found}


# --------------------------------------------------------------------------- the command


async def test_describe_shows_lag_per_partition(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    _, b = await cluster_broker(scripted)
    code, out, _ = await run(capsys, b, "describe", "live", "--json")
    assert code == 0
    (group,) = json.loads(out)
    assert (group["state"], group["type"], group["protocol"]) == ("Stable", "classic", "range")
    rows = {(p["topic"], p["partition"]): (p["current_offset"], p["log_end_offset"], p["lag"], p["member_id"])
            for p in group["partitions"]}
    assert rows == {("t", 0): (40, 100, 60, "c-1"), ("t", 1): (101, 101, 0, "c-1")}
    code, out, _ = await run(capsys, b, "describe", "idle")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "GROUP", "TYPE", "STATE", "PROTOCOL-TYPE", "PROTOCOL", "EPOCH", "COORDINATOR", "MEMBERS"]
    assert ["t", "0", "20", "100", "80", "-", "-", "-"] in [line.split() for line in lines]
    assert "Consumer group 'idle' has no active members." in out


async def test_describe_of_an_unknown_group_fails(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    _, b = await cluster_broker(scripted)
    code, out, err = await run(capsys, b, "describe", "nobody")
    assert (code, out) == (1, "")
    assert err.strip() == "tidelog groups: error: consumer group 'nobody' does not exist"


async def test_reset_is_refused_while_the_group_is_active(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    cluster, b = await cluster_broker(scripted)
    code, out, err = await run(capsys, b, "reset-offsets", "live", "--topic", "t", "--to-earliest", "--execute")
    assert code == 1 and out == ""
    assert "can only be reset while group 'live' is inactive, but its state is Stable" in err
    assert cluster.commits == []


async def test_reset_dry_run_then_execute(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    cluster, b = await cluster_broker(scripted)
    code, out, err = await run(capsys, b, "reset-offsets", "idle", "--topic", "t:0", "--topic", "u", "--shift-by", "3",
                               "--json")
    assert code == 0 and "Dry run" in err and cluster.commits == []
    plan = json.loads(out)
    assert plan["executed"] is False
    assert [(p["topic"], p["current_offset"], p["new_offset"], p["error"]) for p in plan["partitions"]] == [
        ("t", 20, 23, None), ("u", 5, 10, None)]  # u:0 at 5 is below the log start: moved up to 10
    code, out, err = await run(capsys, b, "reset-offsets", "idle", "--topic", "t:0", "--shift-by", "-15", "--execute")
    assert code == 0 and "Dry run" not in err
    (commit,) = cluster.commits
    assert (commit.group_id, commit.generation_id_or_member_epoch, commit.member_id) == ("idle", -1, "")
    assert [(t.name, p.partition_index, p.committed_offset) for t in commit.topics for p in t.partitions] == [
        ("t", 0, 10)]  # 20 - 15 = 5 is before the log start (10): kept within bounds
    assert out.splitlines()[1].split() == ["idle", "t", "0", "20", "10", "-"]


async def test_shift_needs_a_committed_offset(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    _, b = await cluster_broker(scripted)
    code, _, err = await run(capsys, b, "reset-offsets", "idle", "--topic", "t:0,2", "--shift-by", "1")
    assert code == 1 and "cannot shift the offset of t:2" in err


@pytest.mark.parametrize(("how", "expected"), [
    (["--to-earliest"], [10, 10, 10]),
    (["--to-latest"], [100, 101, 102]),
    (["--to-offset", "101"], [100, 101, 101]),
    (["--to-offset", "0"], [10, 10, 10]),
    (["--to-datetime", "1970-01-01T00:00:50Z"], [50, 50, 50]),
    (["--to-datetime", "1970-01-01T00:01:41Z"], [100, 101, 101]),  # no record that late in t:0, t:1: the end
])
async def test_reset_targets(
    scripted: Start, capsys: pytest.CaptureFixture[str], how: list[str], expected: list[int]
) -> None:
    cluster, b = await cluster_broker(scripted)
    code, out, _ = await run(capsys, b, "reset-offsets", "newgroup", "--topic", "t", *how, "--execute", "--json")
    assert code == 0
    plan = json.loads(out)
    assert [(p["partition"], p["new_offset"]) for p in plan["partitions"]] == list(enumerate(expected))
    assert cluster.committed["newgroup"] == {("t", p): o for p, o in enumerate(expected)}


async def test_reset_of_unknown_topics_and_partitions(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    cluster, b = await cluster_broker(scripted)
    code, _, err = await run(capsys, b, "reset-offsets", "idle", "--topic", "nope", "--to-earliest", "--execute")
    assert code == 1 and "topic 'nope' does not exist" in err
    code, _, err = await run(capsys, b, "reset-offsets", "idle", "--topic", "t:7", "--to-earliest", "--execute")
    assert code == 1 and "topic 't' has no partition 7 (it has 3)" in err
    code, out, _ = await run(capsys, b, "reset-offsets", "idle", "--all-topics", "--to-latest", "--execute", "--json")
    assert code == 0 and [(p["topic"], p["new_offset"]) for p in json.loads(out)["partitions"]] == [
        ("t", 100), ("u", 100)]
    assert len(cluster.commits) == 1


async def test_list_and_delete(scripted: Start, capsys: pytest.CaptureFixture[str]) -> None:
    _, b = await cluster_broker(scripted)
    code, out, _ = await run(capsys, b, "list", "--state", "stable")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["GROUP", "STATE", "TYPE", "PROTOCOL-TYPE"], ["kip", "Stable", "consumer", "consumer"],
        ["live", "Stable", "classic", "consumer"]]
    code, out, err = await run(capsys, b, "delete", "idle", "live", "--json")
    assert code == 1
    assert json.loads(out) == [{"group": "idle", "error": None}, {"group": "live", "error": "NON_EMPTY_GROUP"}]
    assert "1 of 2 group(s) not deleted: live" in err


async def test_an_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = await cli_groups.run_async(parse("--bootstrap", "127.0.0.1:1", "describe", "g"))
    _, err = capsys.readouterr()
    assert code == 1
    assert err == "tidelog groups: error: cannot connect to 127.0.0.1:1: Connection refused\n"
