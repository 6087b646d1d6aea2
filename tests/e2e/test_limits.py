"""Limits against a real broker process: partitions per topic and per broker, number of topics, settings and
topic configs within their type's range; Metadata and restart with thousands of idle partitions (measured,
printed, not asserted), and partitions loaded only when first used."""

from __future__ import annotations

import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from tests.e2e import kafka_wire as wire
from tests.e2e.broker_process import BrokerProcess, free_port, tidelog_command
from tests.e2e.helpers import confluent_produce, create_topic, make_records

HUGE = 16_711_683  # the CreatePartitions count that used to be accepted


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def _partitions(bootstrap: str, name: str) -> int:
    """The topic's partition count, -1 when it does not exist (asked without auto-creation)."""
    code, count = _metadata_v4(bootstrap, [name], auto_create=False)[name]
    return -1 if code else count


def _kafka_error(future: object) -> KafkaError:
    with pytest.raises(KafkaException) as exc:
        future.result(60)  # type: ignore[attr-defined]
    return exc.value.args[0]  # type: ignore[no-any-return]


def _create_error(admin: AdminClient, topic: NewTopic) -> KafkaError:
    return _kafka_error(admin.create_topics([topic], operation_timeout=60)[topic.topic])


def _metadata_v4(bootstrap: str, names: list[str], auto_create: bool) -> dict[str, tuple[int, int]]:
    """Raw Metadata v4 (allow_auto_topic_creation): each requested topic's (error code, partition count)."""
    body = struct.pack(">i", len(names)) + b"".join(wire.string(n) for n in names) + struct.pack(">?", auto_create)
    with wire.connect(bootstrap) as sock:
        sock.sendall(wire.request(3, 4, body, correlation_id=11))
        resp = wire.recv_frame(sock)
    pos = 8  # correlation id, throttle
    (brokers,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    for _ in range(brokers):
        pos += 4
        (n,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + n + 4
        (n,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + max(n, 0)
    (n,) = struct.unpack_from(">h", resp, pos)  # cluster id
    pos += 2 + max(n, 0) + 4  # and controller id
    (count,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    errors: dict[str, tuple[int, int]] = {}
    for _ in range(count):
        code, n = struct.unpack_from(">hh", resp, pos)
        name = resp[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n + 1  # is_internal
        (parts,) = struct.unpack_from(">i", resp, pos)
        pos += 4
        for _ in range(parts):
            pos += 10
            for _ in range(2):  # replicas, isr
                (k,) = struct.unpack_from(">i", resp, pos)
                pos += 4 + 4 * k
        errors[name] = (code, parts)
    return errors


def _result(resp: bytes, pos: int) -> tuple[int, str | None]:
    """(error code, error message) of the first result at ``pos``: name string, int16, nullable string."""
    (n,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + n
    code, m = struct.unpack_from(">hh", resp, pos)
    return code, None if m < 0 else resp[pos + 4 : pos + 4 + m].decode()


def _raw_create_partitions(bootstrap: str, name: str, count: int) -> tuple[int, str | None]:
    """CreatePartitions v0 over a raw socket (librdkafka refuses counts above 100,000 itself)."""
    body = struct.pack(">i", 1) + wire.string(name) + struct.pack(">ii", count, -1) + struct.pack(">i?", 30_000, False)
    with wire.connect(bootstrap) as sock:
        sock.sendall(wire.request(37, 0, body))
        return _result(wire.recv_frame(sock), 12)  # correlation id, throttle, result count


def _raw_create_topic(bootstrap: str, name: str, partitions: int) -> tuple[int, str | None]:
    """CreateTopics v2 over a raw socket."""
    topic = wire.string(name) + struct.pack(">ihii", partitions, 1, 0, 0)
    body = struct.pack(">i", 1) + topic + struct.pack(">i?", 30_000, False)
    with wire.connect(bootstrap) as sock:
        sock.sendall(wire.request(19, 2, body))
        return _result(wire.recv_frame(sock), 12)


def test_create_partitions_to_16_million_is_refused_and_creates_nothing(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "grow-me", 2)
    code, message = _raw_create_partitions(broker.bootstrap, "grow-me", HUGE)
    assert code == KafkaError.INVALID_PARTITIONS, (code, message)
    assert message is not None and "max.partitions.per.topic=10000" in message, message
    assert _partitions(broker.bootstrap, "grow-me") == 2
    code, message = _raw_create_topic(broker.bootstrap, "born-huge", HUGE)
    assert code == KafkaError.INVALID_PARTITIONS, (code, message)
    assert _partitions(broker.bootstrap, "born-huge") == -1


def test_topic_and_broker_partition_limits(broker_factory: Callable[..., BrokerProcess]) -> None:
    # __consumer_offsets (50 partitions) counts toward the broker's 100.
    b = broker_factory({"max.partitions.per.topic": "20", "max.partitions.per.broker": "100", "max.topics": "4"})
    admin = _admin(b.bootstrap)
    err = _create_error(admin, NewTopic("too-wide", num_partitions=21, replication_factor=1))
    assert err.code() == KafkaError.INVALID_PARTITIONS and "max.partitions.per.topic=20" in err.str(), err
    create_topic(b.bootstrap, "t1", 20)
    create_topic(b.bootstrap, "t2", 20)
    err = _create_error(admin, NewTopic("t3", num_partitions=11, replication_factor=1))  # 50+40+11 > 100
    assert err.code() == KafkaError.POLICY_VIOLATION and "max.partitions.per.broker=100" in err.str(), err
    err = _kafka_error(admin.create_partitions([NewPartitions("t2", 21)])["t2"])
    assert err.code() == KafkaError.INVALID_PARTITIONS, err
    create_topic(b.bootstrap, "t3", 10)  # exactly 100 now
    err = _kafka_error(admin.create_partitions([NewPartitions("t3", 11)])["t3"])
    assert err.code() == KafkaError.POLICY_VIOLATION, err
    # __consumer_offsets, t1, t2, t3: max.topics=4 reached, so neither CreateTopics nor auto-creation adds one
    err = _create_error(admin, NewTopic("t4", num_partitions=1, replication_factor=1))
    assert err.code() == KafkaError.POLICY_VIOLATION and "max.topics=4" in err.str(), err
    errors = _metadata_v4(b.bootstrap, ["auto-made", "t1"], auto_create=True)
    assert errors == {"auto-made": (KafkaError.POLICY_VIOLATION, 0), "t1": (0, 20)}, errors
    assert _partitions(b.bootstrap, "auto-made") == -1 and _partitions(b.bootstrap, "t4") == -1
    assert _partitions(b.bootstrap, "t2") == 20 and _partitions(b.bootstrap, "t3") == 10


@pytest.mark.parametrize(
    ("config", "value"),
    [
        ("max.message.bytes", "1099511627776"),
        ("max.message.bytes", "2147483648"),
        ("retention.ms", "9223372036854775808"),
        ("retention.ms", "-5"),
        ("segment.ms", "0"),
        ("min.cleanable.dirty.ratio", "2"),
        ("preallocate", "maybe"),
    ],
)
def test_topic_configs_out_of_range_refused_at_create(module_broker: BrokerProcess, config: str, value: str) -> None:
    name = f"bad-config-{config.replace('.', '-')}-{abs(hash(value)) % 10_000}"
    admin = _admin(module_broker.bootstrap)
    err = _create_error(admin, NewTopic(name, 1, 1, config={config: value}))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert config in err.str(), err.str()
    assert _partitions(module_broker.bootstrap, name) == -1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--node-id", "1099511627776"], "--node-id"),
        (["--config", "message.max.bytes=1099511627776"], "message.max.bytes"),
    ],
)
def test_out_of_range_settings_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    data = tmp_path / "data"
    cmd = [*tidelog_command(), "run", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert not data.exists()


def _loaded(admin_port: int, topic: str) -> int:
    """Partitions of ``topic`` loaded on the broker: /metrics has a high-watermark series per loaded log."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(1 for line in text.splitlines()
               if line.startswith("tidelog_partition_high_watermark{") and f'topic="{topic}"' in line)


def _metadata_all_seconds(bootstrap: str) -> float:
    with wire.connect(bootstrap, timeout=300) as sock:
        start = time.perf_counter()
        sock.sendall(wire.request(3, 1, struct.pack(">i", -1)))
        wire.recv_frame(sock)
        return time.perf_counter() - start


def test_idle_partitions_are_loaded_only_when_used(tmp_path: Path) -> None:
    idle = 5_000
    admin_port = free_port()
    b = BrokerProcess(tmp_path / "data", configs={"admin.listen": f"127.0.0.1:{admin_port}"})
    try:
        b.start()
        create_topic(b.bootstrap, "idle", idle)
        create_topic(b.bootstrap, "busy", 1)
        confluent_produce(b.bootstrap, "busy", make_records(10, 1, seed=7))
        first = _metadata_all_seconds(b.bootstrap)
        again = _metadata_all_seconds(b.bootstrap)
        print(f"\nMetadata (all topics, {idle + 51} partitions): first {first * 1000:.0f} ms, "
              f"then {again * 1000:.1f} ms (cached)")
        assert _loaded(admin_port, "idle") == 0  # created and described, never used
        b.stop()
        start = time.perf_counter()
        b.start()
        listening = time.perf_counter() - start
        restarted = _metadata_all_seconds(b.bootstrap)
        print(f"restart with {idle} idle partitions: listening after {listening:.2f} s, "
              f"first Metadata answered in {restarted * 1000:.0f} ms")
        assert _loaded(admin_port, "idle") == 0
        deadline = time.monotonic() + 60
        while _loaded(admin_port, "busy") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # a partition with data is loaded in the background (offload, retention)
        assert _loaded(admin_port, "busy") == 1
        confluent_produce(b.bootstrap, "idle", make_records(3, 1, seed=8))  # partition 0 only
        assert _loaded(admin_port, "idle") == 1
    finally:
        b.close()
