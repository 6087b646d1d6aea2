"""Issue 13, must-shows 1 and 4 for the partition tools' APIs, on one dev cluster (3 brokers, 3 bookies, etcd,
moto S3): what kafka-python's admin and confluent-kafka's AdminClient call, with Kafka's results.

* DescribeLogDirs (kafka-python ``describe_log_dirs``): every broker answers two log dirs, ``bookies`` and the
  object store's URL; each partition of a topic is listed by exactly one broker, its leader. With 32 KiB
  ledgers (``ledger.rollover.bytes``) most of what the fixture wrote is offloaded: each partition has bytes in
  the object store, and its two tiers together hold at least the bytes produced to it.
* AlterReplicaLogDirs (kafka-python ``alter_replica_log_dirs``): LOG_DIR_NOT_FOUND for a path that is no log
  dir, REPLICA_NOT_AVAILABLE on a broker that does not host the partition, KAFKA_STORAGE_ERROR on its leader.
* DescribeTopicPartitions (kafka-python ``describe_topic_partitions``): paged by ``response_partition_limit``
  and the cursor, leaders as Metadata says; confluent-kafka's ``describe_topics`` (librdkafka 2.16 sends Metadata
  v12 for it, not DescribeTopicPartitions) agrees.
* DescribeProducers (kafka-python ``describe_producers``, sent to each partition's leader): the idempotent
  producer that wrote the partition, its epoch and last sequence.
* ElectLeaders (confluent-kafka and kafka-python ``elect_leaders``, preferred and unclean): every owner is its
  partition's preferred broker, so ELECTION_NOT_NEEDED for every partition (a null partition list, which
  these clients never send, is in tests/unit/test_partition_info_handlers.py).
* Must-show 4: kafka-python's ``alter_partition_reassignments`` moves a partition to another broker while an
  idempotent confluent-kafka producer sends to it; ``list_partition_reassignments`` shows the move while it
  is in flight (replicas [source, target], adding [target], removing [source]; only the target while neither
  broker owns it) and nothing once done; every
  acknowledged record is read back at its offset, none twice; the new owner's DescribeProducers shows the
  producer's last sequence. kafkajs's ``alterPartitionReassignments`` and
  ``listPartitionReassignments`` (tests/e2e/node/reassign.js) do the same (kafkajs has none of the other APIs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers.devcluster import DevCluster
from tests.cluster.moving import check_history, high_watermark, leader, read_partition
from tests.cluster.test_move_under_load import SteadyProducer
from tests.e2e.conftest import NODE_DIR
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

from .harness import assert_no_tracebacks, leaders, print_logs, wait_leaders

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

NODES = (1, 2, 3)
TOPIC = "tools"
PARTS = 6
RECORDS = 600
VALUE = b"x" * 1000
LEDGER_BYTES = 32 * 1024
PAYLOAD = RECORDS // PARTS * (len(VALUE) + 6)  # value bytes produced to each partition
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    # Small ledgers, so that most of what the fixture writes is offloaded to the object store within seconds.
    dev = DevCluster(
        tmp_path_factory.mktemp("tools-cluster"), broker_args=["--config", f"ledger.rollover.bytes={LEDGER_BYTES}"]
    )
    dev.start()
    try:
        create_topic(dev.bootstrap, TOPIC, PARTS)
        wait_leaders(dev.bootstrap, TOPIC, PARTS, set(NODES))
        producer = confluent_kafka.Producer({
            "bootstrap.servers": dev.bootstrap, "enable.idempotence": True, "batch.size": 16_384, "linger.ms": 2,
        })  # fmt: skip
        for i in range(RECORDS):
            producer.produce(TOPIC, value=b"%06d" % i + VALUE, partition=i % PARTS)
            producer.poll(0)
        assert producer.flush(WAIT_S) == 0
        yield dev
    except BaseException:
        print_logs(dev)
        dev.stop()
        raise
    dev.stop()
    assert_no_tracebacks(dev)


@pytest.fixture(scope="module")
def admin(cluster: DevCluster) -> Iterator[Any]:
    client = kafka.KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30_000)
    try:
        yield client
    finally:
        client.close()


def _owners(cluster: DevCluster) -> dict[int, int]:
    owner = leaders(cluster.bootstrap, TOPIC)
    assert len(owner) == PARTS and set(owner.values()) <= set(NODES), owner
    return owner


def _log_dirs(admin: Any) -> tuple[dict[int, list[int]], dict[int, int], dict[int, int], list[Any]]:
    """From every broker's DescribeLogDirs answer: partition -> brokers listing it, and bytes per partition on
    the bookie tier and in the object store."""
    answers = admin.describe_log_dirs()
    found: dict[int, list[int]] = {}
    on_bookies: dict[int, int] = {}
    in_store: dict[int, int] = {}
    for answer in answers:
        dirs = answer["log_dirs"]
        assert dirs[0]["log_dir"] == "bookies"
        assert dirs[1]["log_dir"].startswith("s3://") and "?" not in dirs[1]["log_dir"]
        assert len(dirs) == 2 and all(d["error_code"] == 0 for d in dirs)
        for d in dirs:
            for t in d["topics"]:
                for p in t["partitions"] if t["name"] == TOPIC else ():
                    assert not p["is_future_key"]
                    if d["log_dir"] == "bookies":
                        found.setdefault(p["partition_index"], []).append(answer["broker"])
                        on_bookies[p["partition_index"]] = p["partition_size"]
                    else:
                        in_store[p["partition_index"]] = p["partition_size"]
    return found, on_bookies, in_store, answers


def test_describe_log_dirs_shows_where_each_partitions_bytes_are(cluster: DevCluster, admin: Any) -> None:
    owner = _owners(cluster)
    deadline = time.monotonic() + WAIT_S
    while True:  # the closed ledgers are offloaded in the background: wait until each partition has segments
        found, on_bookies, in_store, answers = _log_dirs(admin)
        if all(in_store.get(p, 0) > 0 for p in range(PARTS)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(a["broker"] for a in answers) == list(NODES)
    for answer in answers:
        print(
            f"broker {answer['broker']}: "
            + ", ".join(f"{d['log_dir']} (volume {d['total_bytes']})" for d in answer["log_dirs"])
        )
    print(f"bytes per partition, bookies: {dict(sorted(on_bookies.items()))}")
    print(f"bytes per partition, object store: {dict(sorted(in_store.items()))} (values produced: {PAYLOAD} each)")
    assert found == {p: [owner[p]] for p in range(PARTS)}  # each partition on exactly one broker: its leader
    assert all(in_store[p] > 0 for p in range(PARTS)), in_store  # offloaded ledgers are segments now
    assert all(on_bookies[p] + in_store[p] >= PAYLOAD for p in range(PARTS))  # every byte is in one tier


def test_alter_replica_log_dirs_answers_as_kafka(cluster: DevCluster, admin: Any) -> None:
    owner = _owners(cluster)
    other = next(n for n in NODES if n != owner[0])
    tpr = kafka.TopicPartitionReplica
    answers = admin.alter_replica_log_dirs({
        tpr(TOPIC, 0, owner[0]): "bookies", tpr(TOPIC, 1, owner[1]): "/var/lib/kafka/data",
        tpr(TOPIC, 0, other): "bookies",
    })  # fmt: skip
    assert answers == {
        tpr(TOPIC, 0, owner[0]): kafka.errors.KafkaStorageError,
        tpr(TOPIC, 1, owner[1]): kafka.errors.LogDirNotFoundError,
        tpr(TOPIC, 0, other): kafka.errors.ReplicaNotAvailableError,
    }


def test_describe_topic_partitions_pages_and_agrees_with_metadata(cluster: DevCluster, admin: Any) -> None:
    owner = _owners(cluster)
    seen: dict[int, int] = {}
    cursor = None
    pages = 0
    while True:
        page = admin.describe_topic_partitions([TOPIC], response_partition_limit=4, cursor=cursor)
        pages += 1
        [topic] = page["topics"]
        assert topic["error_code"] == 0 and not topic["is_internal"]
        for p in topic["partitions"]:
            assert p["replica_nodes"] == [p["leader_id"]] == p["isr_nodes"] and p["leader_epoch"] >= 1
            seen[p["partition_index"]] = p["leader_id"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert (pages, seen) == (2, owner)
    confluent = confluent_kafka.admin.AdminClient({"bootstrap.servers": cluster.bootstrap})
    described = confluent.describe_topics(confluent_kafka.TopicCollection([TOPIC]))[TOPIC].result(WAIT_S)
    assert {p.id: p.leader.id for p in described.partitions} == owner


def test_describe_producers_lists_the_idempotent_producer(cluster: DevCluster, admin: Any) -> None:
    tps = [kafka.TopicPartition(TOPIC, p) for p in range(PARTS)]
    states = admin.describe_producers(tps)
    ids = set()
    for tp in tps:
        [producer] = states[tp].active_producers
        ids.add(producer.producer_id)
        assert producer.producer_epoch == 0 and producer.last_sequence == RECORDS // PARTS - 1
        assert producer.last_timestamp > 0 and producer.coordinator_epoch == -1
    assert len(ids) == 1  # the fixture's one producer wrote every partition


def test_elect_leaders_finds_every_leader_preferred(cluster: DevCluster, admin: Any) -> None:
    confluent = confluent_kafka.admin.AdminClient({"bootstrap.servers": cluster.bootstrap})
    tps = [confluent_kafka.TopicPartition(TOPIC, p) for p in range(PARTS)]
    answers = confluent.elect_leaders(confluent_kafka.ElectionType.PREFERRED, tps).result(WAIT_S)
    codes = {tp.partition: err.code() for tp, err in answers.items()}
    assert codes == dict.fromkeys(range(PARTS), confluent_kafka.KafkaError.ELECTION_NOT_NEEDED)
    response = admin.elect_leaders(0, {TOPIC: list(range(PARTS))}, raise_errors=False)
    assert [(r.topic, sorted(p.error_code for p in r.partition_result)) for r in response.replica_election_results] == [
        (TOPIC, [84] * PARTS)
    ]
    everything = admin.elect_leaders(0, None, raise_errors=False)  # kafka-python names every partition itself
    codes = {
        (r.topic, p.partition_id): p.error_code for r in everything.replica_election_results for p in r.partition_result
    }
    assert {(TOPIC, p) for p in range(PARTS)} | {("__consumer_offsets", 0)} <= set(codes)
    assert set(codes.values()) == {84}
    unclean = admin.elect_leaders(1, {TOPIC: [0]}, raise_errors=False)
    assert unclean.replica_election_results[0].partition_result[0].error_code == 84


def test_kafka_python_reassignment_moves_a_partition_under_a_producer(cluster: DevCluster, admin: Any) -> None:
    topic = "reassigned"
    create_topic(cluster.bootstrap, topic, 1)
    wait_leaders(cluster.bootstrap, topic, 1, set(NODES))
    tp = kafka.TopicPartition(topic, 0)
    producer = SteadyProducer(cluster.bootstrap, topic, 0)
    producer.start()
    in_flight: list[dict[str, list[int]]] = []
    try:
        producer.wait_acks(50)
        source = leader(cluster.bootstrap, topic, 0)[0]
        target = next(n for n in NODES if n != source)
        answer = admin.alter_partition_reassignments({tp: [target]})
        assert answer == {tp: None}
        deadline = time.monotonic() + WAIT_S
        while leader(cluster.bootstrap, topic, 0)[0] != target:
            listed = admin.list_partition_reassignments()
            if tp in listed:
                in_flight.append(listed[tp])
            assert time.monotonic() < deadline, f"{topic}:0 not moved to {target}"
        producer.wait_acks(len(producer.acks) + 50)  # the producer carries on against the new leader
        while admin.list_partition_reassignments():  # the controller clears the pin once the target owns it
            assert time.monotonic() < deadline, "the move is still listed after it was done"
            time.sleep(0.05)
    finally:
        producer.stop()
    print(f"\nmoved {topic}:0 {source} -> {target}; seen in flight {len(in_flight)} times: {in_flight[:1]}")
    assert in_flight, "list_partition_reassignments never showed the move in flight"
    for seen in in_flight:  # Kafka's shape: replicas = removing + adding; between owners only the target is named
        assert seen["adding_replicas"] == [target] and seen["removing_replicas"] in ([source], [])
        assert seen["replicas"] == seen["removing_replicas"] + [target]
    assert not producer.errors, producer.errors[:5]
    end = high_watermark(cluster.bootstrap, topic, 0)
    read = read_partition(cluster.bootstrap, topic, 0, end)
    acked = [(o, v) for _, o, v in producer.acks]
    assert not check_history(acked, read)
    assert len(read) == end and len(acked) == producer.sent  # nothing lost, nothing twice
    print(f"{len(acked)} records acknowledged, {len(read)} read back")
    [state] = admin.describe_producers([tp])[tp].active_producers  # the new owner rebuilt the producer state
    assert state.last_sequence == producer.sent - 1 and state.producer_epoch == 0


def test_kafkajs_moves_a_partition_and_lists_the_move(cluster: DevCluster, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail("node or kafkajs missing (`make system-deps node-deps`)")
    topic = "reassigned-js"
    create_topic(cluster.bootstrap, topic, 1)
    source = wait_leaders(cluster.bootstrap, topic, 1, set(NODES))[0]
    target = next(n for n in NODES if n != source)
    out = tmp_path / "moved.json"
    done = subprocess.run(
        [node, str(NODE_DIR / "reassign.js"), cluster.bootstrap, topic, "0", str(target), str(out)],
        capture_output=True, text=True, timeout=180, cwd=NODE_DIR, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"node reassign.js failed ({done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())
    print(f"\nkafkajs moved {topic}:0 {source} -> {target}; seen in flight {len(result['inFlight'])} times")
    assert result["leader"] == target and result["listedAfter"] == []
    assert result["inFlight"], "listPartitionReassignments never showed the move in flight"
    for seen in result["inFlight"]:
        assert seen["partition"] == 0 and seen["addingReplicas"] == [target]
        assert seen["removingReplicas"] in ([source], []) and seen["replicas"] == [*seen["removingReplicas"], target]
    assert leader(cluster.bootstrap, topic, 0)[0] == target
