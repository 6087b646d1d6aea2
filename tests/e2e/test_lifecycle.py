"""The ``tidelog run`` process itself: it says where it listens, SIGTERM shuts it down cleanly (exit 0),
data survives a restart, one data directory serves one process, and --config / --advertised work as a
Kafka user expects (auto.create.topics.enable, num.partitions, message.max.bytes).
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient

from .broker_process import BrokerError, BrokerProcess, tidelog_command
from .helpers import confluent_read, create_topic


def produce_values(
    bootstrap: str, topic: str, values: list[bytes], partition: int | None = None, **conf: object
) -> list[object]:
    """Produce and return per-record delivery results: (partition, offset) or the KafkaError."""
    results: list[object] = [None] * len(values)

    def cb(i: int):  # type: ignore[no-untyped-def]
        def on_delivery(err, msg):  # type: ignore[no-untyped-def]
            results[i] = err if err is not None else (msg.partition(), msg.offset())

        return on_delivery

    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 20_000, "acks": "all", **conf})
    for i, v in enumerate(values):
        if partition is None:
            p.produce(topic, v, on_delivery=cb(i))
        else:
            p.produce(topic, v, partition=partition, on_delivery=cb(i))
    assert p.flush(60) == 0
    return results


def test_help():
    res = subprocess.run([*tidelog_command(), "run", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    for opt in ("--data-dir", "--listen", "--advertised", "--node-id", "--config"):
        assert opt in res.stdout


def test_sigterm_exits_cleanly_and_data_survives(broker_factory):
    b = broker_factory()
    assert f"listening on {b.bootstrap}" in b.log_text()
    create_topic(b.bootstrap, "life", 2)
    values = [f"life-{i}".encode() for i in range(500)]
    res = produce_values(b.bootstrap, "life", values, partition=1)
    assert res == [(1, i) for i in range(500)]

    code = b.stop()
    assert code == 0, f"exit code {code} after SIGTERM\n{b.log_tail()}"
    assert "Traceback" not in b.log_text(), b.log_tail()
    b.start()
    assert b.log_text().count(f"listening on {b.bootstrap}") == 2
    got = confluent_read(b.bootstrap, "life", [0, 1], start=0)
    assert [(g.partition, g.offset, g.value) for g in got] == [(1, i, v) for i, v in enumerate(values)]
    # Offsets carry on after the restart.
    assert produce_values(b.bootstrap, "life", [b"after"], partition=1) == [(1, 500)]


def test_sigint_exits_cleanly(broker_factory):
    b = broker_factory()
    assert b.proc is not None
    b.proc.send_signal(signal.SIGINT)
    code = b.proc.wait(30)
    b.proc = None
    assert code in (0, 130), f"exit code {code} after SIGINT\n{b.log_tail()}"
    assert "Traceback" not in b.log_text(), b.log_tail()


def test_one_process_per_data_dir(broker_factory):
    first = broker_factory()
    second = BrokerProcess(first.data_dir, log_path=first.data_dir.parent / "second.log")
    try:
        with pytest.raises(BrokerError, match="exited with code"):
            second.start(timeout=30)
    finally:
        second.close()
    assert first.running


def test_auto_create_topics_default_one_partition(broker_factory):
    b = broker_factory()
    assert produce_values(b.bootstrap, "auto-made", [b"a", b"b"]) == [(0, 0), (0, 1)]
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics("auto-made", timeout=30)
    assert len(md.topics["auto-made"].partitions) == 1


def test_num_partitions_config(broker_factory):
    b = broker_factory(configs={"num.partitions": "4"})
    produce_values(b.bootstrap, "auto-four", [b"x"])
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics("auto-four", timeout=30)
    assert len(md.topics["auto-four"].partitions) == 4


def test_auto_create_disabled(broker_factory):
    b = broker_factory(configs={"auto.create.topics.enable": "false"})
    # librdkafka gives up on a topic the broker says does not exist after topic.metadata.propagation.max.ms.
    res = produce_values(b.bootstrap, "not-there", [b"x"], **{"topic.metadata.propagation.max.ms": 1000})
    assert isinstance(res[0], KafkaError), res
    assert res[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), res[0]
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=30)
    assert "not-there" not in md.topics


def test_message_max_bytes_config(broker_factory):
    b = broker_factory(configs={"message.max.bytes": "10000"})
    create_topic(b.bootstrap, "small", 1)
    # message.max.bytes bounds a whole record batch: produce the two records separately.
    assert produce_values(b.bootstrap, "small", [b"s" * 2000], partition=0) == [(0, 0)]
    (res,) = produce_values(b.bootstrap, "small", [b"L" * 20_000], partition=0)
    assert isinstance(res, KafkaError) and res.code() == KafkaError.MSG_SIZE_TOO_LARGE, res
    assert produce_values(b.bootstrap, "small", [b"s" * 2000], partition=0) == [(0, 1)]


def test_advertised_listener(tmp_path):
    b = BrokerProcess(tmp_path / "adv")
    b.extra_args = ["--advertised", f"localhost:{b.port}"]
    try:
        b.start()
        md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=30)
        assert [(x.id, x.host, x.port) for x in md.brokers.values()] == [(0, "localhost", b.port)]
    finally:
        b.close()
