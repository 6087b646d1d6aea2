"""``tidelog transactions`` end to end: the real console script against a real ``tidelog run``, with a transaction
left open by confluent-kafka's transactional producer.

``list`` and ``describe`` show it Ongoing with its partition, ``describe-producers`` shows where it starts on the
partition, ``find-hanging`` does not report it (its coordinator still has it open there), and ``abort
--start-offset`` ends it there (WriteTxnMarkers ABORT to the leader, as kafka-transactions.sh does): the
partition's last stable offset is released, so a read_committed consumer that was held back now reads a record
written after the transaction and never the aborted ones; on a group's ``__consumer_offsets`` partition the abort
drops the transaction's pending offsets. Errors: an unknown transactional id, a start offset no transaction
begins at, and an abort with no producer named.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from brokers.groups.records import partition_for

from .broker_process import BrokerProcess, tidelog_command
from .conftest import _finish
from .helpers import create_topic

CONFIGS = {"transaction.state.log.num.partitions": "2", "offsets.topic.num.partitions": "2"}
POLL_S = 30.0  # a hang guard, never a timing assertion


@pytest.fixture
def txn_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tidelog_command(), "transactions", "--bootstrap", bootstrap, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def cli_json(bootstrap: str, *args: str) -> Any:
    done = cli(bootstrap, *args, "--json")
    assert done.returncode == 0, f"tidelog transactions {' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


def committed_values(bootstrap: str, topic: str) -> list[bytes]:
    """What a read_committed consumer reads from the start until it reaches the end it can see."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}", "isolation.level": "read_committed",
        "enable.auto.commit": False, "enable.partition.eof": True,
    })
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[bytes] = []
        while True:
            msg = consumer.poll(POLL_S)
            assert msg is not None, "no end of partition reached"
            if msg.error():
                return out
            out.append(msg.value())
    finally:
        consumer.close()


def test_list_describe_and_abort_a_hanging_transaction(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic, txn_id = "cli-txn", "cli-txn-1"
    create_topic(bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 0})
    producer.init_transactions(POLL_S)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"aborted-{i}".encode(), partition=0)
    assert producer.flush(POLL_S) == 0

    listed = cli_json(bootstrap, "list")
    assert [(t["transactional_id"], t["state"]) for t in listed] == [(txn_id, "Ongoing")]
    assert cli_json(bootstrap, "list", "--state", "CompleteCommit") == []
    described = cli_json(bootstrap, "describe", "--transactional-id", txn_id)
    assert described["state"] == "Ongoing" and described["producer_id"] == listed[0]["producer_id"]
    assert described["partitions"] == [{"topic": topic, "partition": 0}]
    assert described["start_time_ms"] is not None
    text = cli(bootstrap, "describe", "--transactional-id", txn_id)
    assert text.returncode == 0 and "Ongoing" in text.stdout and f"{topic}-0" in text.stdout

    producers = cli_json(bootstrap, "describe-producers", "--topic", topic, "--partition", "0")
    (open_txn,) = [p for p in producers if p["txn_start_offset"] is not None]
    assert open_txn["producer_id"] == listed[0]["producer_id"] and open_txn["txn_start_offset"] == 0

    # open, but its coordinator has it with this partition: not hanging, however long the threshold allows
    assert cli_json(bootstrap, "find-hanging", "--topic", topic, "--max-transaction-timeout", "0") == []
    node = str(listed[0]["coordinator"])  # tidelog run leads every partition
    assert cli_json(bootstrap, "find-hanging", "--broker-id", node, "--max-transaction-timeout", "0") == []

    plain = Producer({"bootstrap.servers": bootstrap})
    plain.produce(topic, value=b"after", partition=0)
    assert plain.flush(POLL_S) == 0
    assert committed_values(bootstrap, topic) == [], "the open transaction holds the last stable offset back"

    wrong = cli(bootstrap, "abort", "--topic", topic, "--partition", "0", "--start-offset", "1")
    assert wrong.returncode == 1 and "no open transaction starts at offset 1" in wrong.stderr
    aborted = cli_json(bootstrap, "abort", "--topic", topic, "--partition", "0", "--start-offset", "0")
    assert aborted["error"] is None and aborted["producer_id"] == open_txn["producer_id"]
    assert aborted["producer_epoch"] == open_txn["producer_epoch"]

    after = cli_json(bootstrap, "describe-producers", "--topic", topic, "--partition", "0")
    assert all(p["txn_start_offset"] is None for p in after)
    assert committed_values(bootstrap, topic) == [b"after"]


def test_errors_are_one_line(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    create_topic(bootstrap, "cli-txn-err", 1)
    missing = cli(bootstrap, "describe", "--transactional-id", "never-used")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "tidelog transactions: error: transactional id 'never-used': TRANSACTIONAL_ID_NOT_FOUND"
    ]
    unnamed = cli(bootstrap, "abort", "--topic", "cli-txn-err", "--partition", "0")
    assert unnamed.returncode == 2 and "--start-offset" in unnamed.stderr
    no_epoch = cli(bootstrap, "abort", "--topic", "cli-txn-err", "--partition", "0", "--producer-id", "5")
    assert no_epoch.returncode == 2 and "--producer-epoch" in no_epoch.stderr
    lone = cli(bootstrap, "find-hanging", "--partition", "0")
    assert lone.returncode == 2
    assert cli_json(bootstrap, "find-hanging", "--topic", "cli-txn-err") == []
    no_topic = cli(bootstrap, "describe-producers", "--topic", "no-such-topic", "--partition", "0")
    assert no_topic.returncode == 1 and "does not exist" in no_topic.stderr
    assert cli_json(bootstrap, "list") == []


def test_abort_on_the_offsets_partition_drops_the_pending_offsets(txn_broker: BrokerProcess) -> None:
    """A transaction hanging on a group's ``__consumer_offsets`` partition (its offsets pending, so
    read_committed consumers of the group get UNSTABLE_OFFSET_COMMIT): the abort marker drops them there."""
    bootstrap = txn_broker.bootstrap
    topic, group = "cli-txn-src", "cli-txn-group"
    create_topic(bootstrap, topic, 1)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "cli-txn-offsets"})
    try:
        producer.init_transactions(POLL_S)
        producer.begin_transaction()
        producer.send_offsets_to_transaction([TopicPartition(topic, 0, 7)], consumer.consumer_group_metadata(),
                                             POLL_S)
        partition = partition_for(group, 2)
        producers = cli_json(bootstrap, "describe-producers", "--topic", "__consumer_offsets",
                             "--partition", str(partition))
        (open_txn,) = [p for p in producers if p["txn_start_offset"] is not None]
        with pytest.raises(KafkaException) as pending:  # UNSTABLE_OFFSET_COMMIT, retried by librdkafka until then
            consumer.committed([TopicPartition(topic, 0)], timeout=2)
        assert pending.value.args[0].code() == KafkaError._TIMED_OUT
        aborted = cli_json(bootstrap, "abort", "--topic", "__consumer_offsets", "--partition", str(partition),
                           "--start-offset", str(open_txn["txn_start_offset"]))
        assert aborted["error"] is None
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=POLL_S)
        assert tp.offset == OFFSET_INVALID  # dropped, never committed
    finally:
        consumer.close()
