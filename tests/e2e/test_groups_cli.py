"""``tidelog groups`` end to end: the real console script against a real ``tidelog run``, with groups made by
real clients (confluent-kafka classic and KIP-848, kafka-python) over real sockets.

Each test reads what the CLI prints (``--json`` where it checks values, the tables where it checks layout)
and cross-checks the effect with a real client: offsets the CLI reset are where a consumer resumes.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from .broker_process import BrokerProcess, free_port, tidelog_command

CLI_TIMEOUT = 90.0  # hang guard only
WAIT = 60.0  # hang guard for group state changes
BASE_TS = 1_700_000_000_000  # record i of every partition has timestamp BASE_TS + i * 1000
SIZES = {0: 10, 1: 20, 2: 30}  # records per partition
FAST_GROUPS = {"group.initial.rebalance.delay.ms": "0"}


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the module, with no initial rebalance delay so groups form at once."""
    b = BrokerProcess(tmp_path_factory.mktemp("groups-cli") / "data", configs=FAST_GROUPS)
    try:
        yield b.start()
    finally:
        b.close()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tidelog_command(), "groups", "--bootstrap", bootstrap, *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )


def cli_json(bootstrap: str, *args: str) -> Any:
    done = cli(bootstrap, *args, "--json")
    assert done.returncode == 0, f"tidelog groups {' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int | None]:
    (g,) = cli_json(bootstrap, "describe", group)
    return {(p["topic"], p["partition"]): p["current_offset"] for p in g["partitions"]}


def wait_state(bootstrap: str, group: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        (g,) = cli_json(bootstrap, "describe", group)
        if g["state"] == state:
            return g  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"group {group} never reached {state}; last: {g}"
        time.sleep(0.3)


def topic_with_records(bootstrap: str, topic_factory: Callable[..., str]) -> str:
    topic = topic_factory(bootstrap, partitions=len(SIZES), prefix="groups-cli")
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for part, n in SIZES.items():
        for i in range(n):
            p.produce(topic, value=f"{part}-{i}".encode(), partition=part, timestamp=BASE_TS + i * 1000)
    assert p.flush(60) == 0
    return topic


def joined(conf: dict[str, Any], topic: str, partitions: int) -> Consumer:
    """A confluent-kafka consumer that subscribed and holds ``partitions`` partitions."""
    c = Consumer({"enable.auto.commit": False, "auto.offset.reset": "earliest", **conf})
    c.subscribe([topic])
    deadline = time.monotonic() + WAIT
    while len(c.assignment()) != partitions:
        assert time.monotonic() < deadline, f"consumer never got {partitions} partitions: {c.assignment()}"
        c.poll(0.1)
    return c


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def test_describe_reset_and_delete_a_classic_group(
    gbroker: BrokerProcess, topic_factory: Callable[..., str]
) -> None:
    b = gbroker.bootstrap
    topic = topic_with_records(b, topic_factory)
    group = name("cli-classic")
    c = joined({"bootstrap.servers": b, "group.id": group, "client.id": "cli-test-a"}, topic, 3)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 20), TopicPartition(topic, 2, 0)],
                 asynchronous=False)
        (g,) = cli_json(b, "describe", group)
        assert (g["type"], g["state"], g["protocol_type"], g["protocol"]) == ("classic", "Stable", "consumer", "range")
        (member,) = g["members"]
        assert member["client_id"] == "cli-test-a" and "127.0.0.1" in member["host"]
        assert sorted((a["topic"], a["partition"]) for a in member["assignment"]) == [(topic, p) for p in SIZES]
        rows = {p["partition"]: (p["current_offset"], p["log_end_offset"], p["lag"], p["client_id"])
                for p in g["partitions"]}
        assert rows == {0: (4, 10, 6, "cli-test-a"), 1: (20, 20, 0, "cli-test-a"), 2: (0, 30, 30, "cli-test-a")}

        table = cli(b, "describe", group)
        assert table.returncode == 0
        lines = [line.split() for line in table.stdout.splitlines()]
        assert lines[0][:3] == ["GROUP", "TYPE", "STATE"] and lines[1][:3] == [group, "classic", "Stable"]
        assert ["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"] == lines[3][:5]
        assert [topic, "0", "4", "10", "6", member["member_id"]] == lines[4][:6]

        listed = {x["group"]: x for x in cli_json(b, "list")}
        assert (listed[group]["state"], listed[group]["type"], listed[group]["protocol_type"]) == (
            "Stable", "classic", "consumer")
        assert group not in {x["group"] for x in cli_json(b, "list", "--state", "Empty")}
        assert group in {x["group"] for x in cli_json(b, "list", "--state", "stable,empty", "--type", "classic")}

        refused = cli(b, "reset-offsets", group, "--topic", topic, "--to-earliest", "--execute")
        assert refused.returncode == 1 and refused.stdout == ""
        assert "inactive, but its state is Stable" in refused.stderr and len(refused.stderr.splitlines()) == 1
        busy = cli(b, "delete", group)
        assert busy.returncode == 1 and "NON_EMPTY_GROUP" in busy.stdout
    finally:
        c.close()
    wait_state(b, group, "Empty")
    before = {(topic, 0): 4, (topic, 1): 20, (topic, 2): 0}
    assert committed(b, group) == before

    dry = cli(b, "reset-offsets", group, "--topic", topic, "--to-earliest")
    assert dry.returncode == 0 and "Dry run" in dry.stderr
    assert [line.split()[:5] for line in dry.stdout.splitlines()[1:]] == [
        [group, topic, str(p), str(before[(topic, p)]), "0"] for p in SIZES]
    assert committed(b, group) == before  # nothing was committed

    def reset(*how: str) -> dict[tuple[str, int], int | None]:
        out = cli_json(b, "reset-offsets", group, *how, "--execute")
        assert out["executed"] is True and all(p["error"] is None for p in out["partitions"])
        now = committed(b, group)
        assert {(p["topic"], p["partition"]): p["new_offset"] for p in out["partitions"]}.items() <= now.items()
        return now

    assert reset("--topic", f"{topic}:0,1", "--to-offset", "5") == {(topic, 0): 5, (topic, 1): 5, (topic, 2): 0}
    assert reset("--topic", topic, "--shift-by", "3") == {(topic, 0): 8, (topic, 1): 8, (topic, 2): 3}
    assert reset("--topic", topic, "--shift-by", "-100") == {(topic, p): 0 for p in SIZES}
    assert reset("--topic", topic, "--to-offset", "25") == {(topic, 0): 10, (topic, 1): 20, (topic, 2): 25}
    assert reset("--topic", topic, "--to-datetime", iso(BASE_TS + 7000)) == {(topic, p): 7 for p in SIZES}
    assert reset("--all-topics", "--to-datetime", iso(BASE_TS + 15_500)) == {
        (topic, 0): 10, (topic, 1): 16, (topic, 2): 16}
    assert reset("--topic", topic, "--to-latest") == {(topic, p): n for p, n in SIZES.items()}
    assert reset("--topic", f"{topic}:2", "--to-earliest") == {(topic, 0): 10, (topic, 1): 20, (topic, 2): 0}
    assert reset("--topic", f"{topic}:2", "--to-offset", "12") == {(topic, 0): 10, (topic, 1): 20, (topic, 2): 12}

    # A real consumer of the group resumes exactly there: partition 2 from offset 12, nothing from 0 and 1.
    c = Consumer({"bootstrap.servers": b, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.subscribe([topic])
    got: list[tuple[int, int]] = []
    eof: set[int] = set()
    deadline = time.monotonic() + WAIT
    try:
        while eof != set(SIZES):
            assert time.monotonic() < deadline, f"resumed consumer read {got}, eof {eof}"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                continue
            got.append((m.partition(), m.offset()))
    finally:
        c.close()
    assert got == [(2, o) for o in range(12, 30)]

    wait_state(b, group, "Empty")
    deleted = cli(b, "delete", group)
    assert deleted.returncode == 0 and deleted.stdout.splitlines()[1].split() == [group, "deleted"]
    gone = cli(b, "describe", group)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.strip() == f"tidelog groups: error: consumer group '{group}' does not exist"
    assert group not in {x["group"] for x in cli_json(b, "list")}


def test_a_group_of_two_members_is_described_with_each_assignment(
    gbroker: BrokerProcess, topic_factory: Callable[..., str]
) -> None:
    """Two members: their assignments, decoded from the classic protocol's bytes, are what each consumer
    holds, disjoint and covering the topic; each partition's row names its owner."""
    b = gbroker.bootstrap
    topic = topic_with_records(b, topic_factory)
    group = name("cli-pair")
    members = [Consumer({"bootstrap.servers": b, "group.id": group, "client.id": f"cli-member-{i}",
                         "enable.auto.commit": False, "partition.assignment.strategy": "roundrobin"})
               for i in range(2)]
    for c in members:
        c.subscribe([topic])
    try:
        deadline = time.monotonic() + WAIT
        while True:
            for c in members:
                c.poll(0.1)
            held = [sorted(tp.partition for tp in c.assignment()) for c in members]
            if all(held) and sum(map(len, held)) == len(SIZES):
                (g,) = cli_json(b, "describe", group)
                if g["state"] == "Stable" and len(g["members"]) == 2:
                    break
            assert time.monotonic() < deadline, f"the two members never settled: {held}"
        assert g["protocol"] == "roundrobin"
        by_client = {m["client_id"]: sorted(a["partition"] for a in m["assignment"]) for m in g["members"]}
        assert by_client == {f"cli-member-{i}": held[i] for i in range(2)}
        assert sorted(held[0] + held[1]) == list(SIZES)
        owners = {p["partition"]: p["client_id"] for p in g["partitions"]}
        assert owners == {p: cid for cid, ps in by_client.items() for p in ps}
    finally:
        for c in members:
            c.close()


def test_a_kip_848_group_is_described_with_epochs(gbroker: BrokerProcess, topic_factory: Callable[..., str]) -> None:
    b = gbroker.bootstrap
    topic = topic_with_records(b, topic_factory)
    group = name("cli-848")
    c = joined({"bootstrap.servers": b, "group.id": group, "group.protocol": "consumer",
                "client.id": "cli-848-a"}, topic, 3)
    try:
        c.commit(offsets=[TopicPartition(topic, 1, 7)], asynchronous=False)
        deadline = time.monotonic() + WAIT
        while True:
            (g,) = cli_json(b, "describe", group)
            if g["state"] == "Stable" and g["members"] and len(g["members"][0]["assignment"]) == 3:
                break
            assert time.monotonic() < deadline, f"KIP-848 group never stable with 3 partitions: {g}"
            c.poll(0.2)
        assert g["type"] == "consumer" and g["epoch"] >= 1 and g["assignment_epoch"] >= 1
        (member,) = g["members"]
        assert member["client_id"] == "cli-848-a" and member["epoch"] >= 1
        lag = {p["partition"]: (p["current_offset"], p["lag"]) for p in g["partitions"]}
        assert lag == {0: (None, None), 1: (7, 13), 2: (None, None)}
        listed = {x["group"]: x for x in cli_json(b, "list", "--type", "consumer")}
        assert listed[group]["type"] == "consumer"
        refused = cli(b, "reset-offsets", group, "--topic", topic, "--to-latest", "--execute")
        assert refused.returncode == 1 and "inactive" in refused.stderr
    finally:
        c.close()
    wait_state(b, group, "Empty")
    assert cli_json(b, "reset-offsets", group, "--topic", f"{topic}:1", "--to-latest", "--execute")["executed"]
    assert committed(b, group)[(topic, 1)] == 20


def test_errors_are_one_line_with_exit_code_1(gbroker: BrokerProcess, topic_factory: Callable[..., str]) -> None:
    b = gbroker.bootstrap
    nobody = cli(f"127.0.0.1:{free_port()}", "list")
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert nobody.stderr.startswith("tidelog groups: error: cannot connect to 127.0.0.1:")
    assert len(nobody.stderr.splitlines()) == 1
    unknown = name("never-made")
    missing = cli(b, "describe", unknown)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, f"tidelog groups: error: consumer group '{unknown}' does not exist")
    gone = cli(b, "delete", unknown, "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout) == [{"group": unknown, "error": "GROUP_ID_NOT_FOUND"}]
    no_topic = cli(b, "reset-offsets", unknown, "--topic", "no-such-topic", "--to-earliest")
    assert no_topic.returncode == 1 and "topic 'no-such-topic' does not exist" in no_topic.stderr
    topic = topic_factory(b, partitions=2, prefix="groups-cli")
    no_part = cli(b, "reset-offsets", unknown, "--topic", f"{topic}:5", "--to-earliest")
    assert no_part.returncode == 1 and f"topic '{topic}' has no partition 5" in no_part.stderr
    for bad in (["reset-offsets", "g", "--topic", topic], ["list", "--state", "napping"], ["describe"]):
        done = cli(b, *bad)
        lines = done.stderr.splitlines()  # one line, no usage block (brokers/cli/common.py OneLineParser)
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("tidelog groups"), bad
        assert ": error: " in lines[0] and "--help" in lines[0], bad


def test_offsets_reset_by_the_cli_survive_kill_9(tmp_path: Path, topic_factory: Callable[..., str]) -> None:
    """The CLI's commits are durable: after kill -9 the restarted coordinator reloads the group, and the CLI,
    run at once (it retries while the offsets partition is still loading), shows the same offsets."""
    b = BrokerProcess(tmp_path / "data", configs=FAST_GROUPS)
    try:
        b.start()
        topic = topic_with_records(b.bootstrap, topic_factory)
        group = name("cli-restart")
        out = cli_json(b.bootstrap, "reset-offsets", group, "--topic", topic, "--to-offset", "9", "--execute")
        assert out["executed"] and [p["new_offset"] for p in out["partitions"]] == [9, 9, 9]
        b.restart(kill=True)
        (g,) = cli_json(b.bootstrap, "describe", group)
        assert g["state"] == "Empty"
        assert {p["partition"]: (p["current_offset"], p["lag"]) for p in g["partitions"]} == {
            0: (9, 1), 1: (9, 11), 2: (9, 21)}
        assert group in {x["group"] for x in cli_json(b.bootstrap, "list")}
    finally:
        b.close()
