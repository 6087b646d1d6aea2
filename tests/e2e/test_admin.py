"""Admin APIs through confluent-kafka's AdminClient (CreateTopics, CreatePartitions, DeleteTopics,
DescribeConfigs, DescribeCluster) and kcat's metadata/offset queries, against the real process."""

from __future__ import annotations

import json
import subprocess

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from .helpers import confluent_read, create_topic, wait_for_partitions


@pytest.fixture
def admin(module_broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": module_broker.bootstrap})


def test_create_topic_twice_is_topic_already_exists(module_broker, admin):
    create_topic(module_broker.bootstrap, "adm-twice", 2)
    fut = admin.create_topics([NewTopic("adm-twice", 2, 1)], operation_timeout=30)["adm-twice"]
    with pytest.raises(KafkaException) as exc:
        fut.result(60)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_create_topic_invalid_partitions(admin):
    fut = admin.create_topics([NewTopic("adm-bad", 0, 1)], operation_timeout=30)["adm-bad"]
    with pytest.raises((KafkaException, ValueError)):
        fut.result(60)


def test_create_partitions_then_produce_to_new_partition(module_broker, admin):
    create_topic(module_broker.bootstrap, "adm-grow", 2)
    admin.create_partitions([NewPartitions("adm-grow", 5)], operation_timeout=30)["adm-grow"].result(60)
    wait_for_partitions(module_broker.bootstrap, "adm-grow", 5)
    p = Producer({"bootstrap.servers": module_broker.bootstrap, "topic.metadata.refresh.interval.ms": 500})
    acked = []
    p.produce(
        "adm-grow",
        b"in-partition-4",
        partition=4,
        on_delivery=lambda e, m: acked.append((e, m.partition(), m.offset())),
    )
    assert p.flush(60) == 0
    assert acked == [(None, 4, 0)]
    got = confluent_read(module_broker.bootstrap, "adm-grow", [4], start=0)
    assert [(g.offset, g.value) for g in got] == [(0, b"in-partition-4")]


def test_delete_topic(module_broker, admin):
    create_topic(module_broker.bootstrap, "adm-delete", 1)
    admin.delete_topics(["adm-delete"], operation_timeout=30)["adm-delete"].result(60)
    assert "adm-delete" not in admin.list_topics(timeout=30).topics
    fut = admin.delete_topics(["adm-delete"], operation_timeout=30)["adm-delete"]
    with pytest.raises(KafkaException) as exc:
        fut.result(60)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_configs_topic_and_broker(module_broker, admin):
    create_topic(module_broker.bootstrap, "adm-configs", 1, configs={"retention.ms": "123456789"})
    res = admin.describe_configs([ConfigResource("topic", "adm-configs")])
    (cfg,) = [f.result(60) for f in res.values()]
    assert cfg, "no topic configs described"
    assert cfg["retention.ms"].value == "123456789"
    res = admin.describe_configs([ConfigResource("broker", "0")])
    (bcfg,) = [f.result(60) for f in res.values()]
    assert bcfg["message.max.bytes"].value == "1048588"
    assert bcfg["auto.create.topics.enable"].value == "true"
    assert bcfg["num.partitions"].value == "1"


def test_describe_cluster(module_broker, admin):
    desc = admin.describe_cluster(request_timeout=30).result(60)
    assert [(n.id, n.host, n.port) for n in desc.nodes] == [(0, "127.0.0.1", module_broker.port)]
    assert desc.controller is not None and desc.controller.id == 0
    assert desc.cluster_id


def test_kcat_metadata_and_offset_query(module_broker, topic_factory, kcat):
    topic = topic_factory(module_broker.bootstrap, 2, "adm-kcat")
    p = Producer({"bootstrap.servers": module_broker.bootstrap})
    for i in range(10):
        p.produce(topic, b"v", partition=0, timestamp=1_600_000_000_000 + i * 1000)
    assert p.flush(60) == 0
    md = subprocess.run(
        [kcat, "-b", module_broker.bootstrap, "-L", "-J"], capture_output=True, text=True, timeout=60, check=False
    )
    assert md.returncode == 0, md.stderr
    meta = json.loads(md.stdout)
    assert [b["id"] for b in meta["brokers"]] == [0]
    assert topic in {t["topic"] for t in meta["topics"]}
    # kcat -Q: ListOffsets by timestamp.
    q = subprocess.run(
        [kcat, "-b", module_broker.bootstrap, "-Q", "-t", f"{topic}:0:{1_600_000_000_000 + 4500}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert q.returncode == 0, q.stderr
    assert "offset 5" in q.stdout, q.stdout
