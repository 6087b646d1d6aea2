"""Dynamic configs on a dev cluster (issue 13, must-show 1 for the config APIs): one DevCluster (3 brokers,
3 bookies, etcd, moto S3) shared by the module.

The clients' calls as on the embedded broker (tests/e2e/test_dynamic_configs.py), each with a different broker
resource so every broker answers for itself; the cluster-wide default set through one broker is reported by
every broker (each follows the config keys with a watch); and the live effect on the broker that owns the
partition, which is not the one the change was sent to: lowering retention.ms deletes the old segments at its
next check, raising max.message.bytes (topic, then the cluster default) admits a bigger batch — no restart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import ConfigResource

from brokers.devcluster import DevCluster
from tests.e2e.helpers import create_topic
from tests.e2e.test_dynamic_configs import (
    BROKER,
    RETENTION,
    TOPIC,
    alter_topic,
    confluent_check,
    kafka_python_check,
    kafkajs_check,
    produce_big,
    retention_live,
    seen_by,
    set_default,
)
from tests.etcd_server import etcd_available

from .harness import leaders, running_cluster

pytestmark = [
    pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)"),
    # slow: a cluster of its own takes 15-40 s to start; the fast suite has the watch on two in-process brokers
    # over one store (tests/unit/test_dynamic_configs.py) and the clients on tidelog run
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:alter_configs has been deprecated"),
]
NODES = (1, 2, 3)
WAIT = 60.0  # hang guard only


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("configs-cluster"), configs=RETENTION) as dev:
        yield dev


def wait_seen(bootstrap: str, node: int, resource_type: int, name: str, key: str, want: tuple[str, str]) -> None:
    deadline = time.monotonic() + WAIT
    while (got := seen_by(bootstrap, node, resource_type, name, key)) != want:
        assert time.monotonic() < deadline, f"broker {node} still reports {key}={got}, not {want}"
        time.sleep(0.1)


def owner_of(cluster: DevCluster, topic: str) -> int:
    deadline = time.monotonic() + WAIT
    while (leader := leaders(cluster.bootstrap, topic).get(0, -1)) < 0:
        assert time.monotonic() < deadline, f"{topic}/0 has no leader"
        time.sleep(0.2)
    return leader


def other_than(node: int) -> str:
    return str(node % len(NODES) + 1)


def test_clients(cluster: DevCluster, tmp_path: Path) -> None:
    confluent_check(cluster.bootstrap, "2")
    kafka_python_check(cluster.bootstrap, "3")
    kafkajs_check(cluster.bootstrap, "1", tmp_path, one_broker=False)
    set_default(cluster.bootstrap, {})


def test_cluster_default_reaches_every_broker(cluster: DevCluster) -> None:
    set_default(cluster.broker(1).address, {"log.retention.bytes": "123456789"})
    try:
        for node in NODES:  # every broker describes itself with the default it took from the watch
            wait_seen(cluster.bootstrap, node, BROKER, str(node), "log.retention.bytes",
                      ("123456789", "DYNAMIC_DEFAULT_BROKER_CONFIG"))
    finally:
        set_default(cluster.bootstrap, {})


def test_lowering_retention_on_another_broker_deletes_live(cluster: DevCluster) -> None:
    topic = f"ret-{uuid.uuid4().hex[:8]}"
    create_topic(cluster.bootstrap, topic, 1)
    owner = owner_of(cluster, topic)
    via = cluster.broker(int(other_than(owner))).address  # the change goes to a broker that does not own it
    retention_live(cluster.bootstrap,
                   lambda t: alter_topic(via, ConfigResource.Type.TOPIC, t, "retention.ms", "600000"), topic)


def test_raising_max_message_bytes_admits_bigger_batches_live(cluster: DevCluster) -> None:
    by_topic, by_default = f"big-{uuid.uuid4().hex[:8]}", f"big-{uuid.uuid4().hex[:8]}"
    for topic in (by_topic, by_default):
        create_topic(cluster.bootstrap, topic, 1)
        error = produce_big(cluster.bootstrap, topic)
        assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE, error
    owner = owner_of(cluster, by_topic)
    alter_topic(cluster.broker(int(other_than(owner))).address, ConfigResource.Type.TOPIC, by_topic,
                "max.message.bytes", "4000000")
    wait_seen(cluster.bootstrap, owner, TOPIC, by_topic, "max.message.bytes", ("4000000", "DYNAMIC_TOPIC_CONFIG"))
    assert produce_big(cluster.bootstrap, by_topic) is None

    owner = owner_of(cluster, by_default)
    set_default(cluster.broker(int(other_than(owner))).address, {"message.max.bytes": "4000000"})
    try:
        wait_seen(cluster.bootstrap, owner, BROKER, str(owner), "message.max.bytes",
                  ("4000000", "DYNAMIC_DEFAULT_BROKER_CONFIG"))
        assert produce_big(cluster.bootstrap, by_default) is None
    finally:
        set_default(cluster.bootstrap, {})
