"""A real three-broker, three-bookie cluster (brokers/devcluster.py: etcd, moto S3, ``tidelog bookie``,
``tidelog broker`` processes): kcat sees every broker, ``tidelog cluster status`` / ``partitions list`` /
``partitions move`` work against it, and a confluent-kafka producer keeps going across a planned move."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.devcluster import DevCluster
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

from .harness import tidelog_json as tidelog

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "moves"
MAX_MESSAGES = 200_000  # the producer thread's bound


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("devcluster"), brokers=3, bookies=3) as c:
        yield c


def leader_of(bootstrap: str, partition: int) -> int:
    rows = tidelog("partitions", "list", "--topic", TOPIC, "--bootstrap", bootstrap)
    return next(int(r["leader"]) for r in rows if r["partition"] == partition)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_kcat_lists_every_broker(cluster: DevCluster) -> None:
    out = subprocess.run(
        ["kcat", "-b", cluster.bootstrap, "-L", "-m", "10"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert " 3 brokers:" in out
    for b in cluster.brokers:
        assert f"broker {b.node_id} at {b.address}" in out


def test_cluster_status_lists_brokers_controller_and_bookies(cluster: DevCluster) -> None:
    status = tidelog("cluster", "status", "--bootstrap", cluster.bootstrap, "--metadata", cluster.metadata_url)
    assert [b["node_id"] for b in status["brokers"]] == [1, 2, 3]
    assert status["controller"] in (1, 2, 3)
    assert sum(b["partitions"] for b in status["brokers"]) == status["partitions"] >= 50  # __consumer_offsets
    assert sorted(b["id"] for b in status["bookies"]) == ["bookie-1", "bookie-2", "bookie-3"]


def test_a_move_keeps_a_producer_going(cluster: DevCluster) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    create_topic(cluster.bootstrap, TOPIC, partitions=3)
    admins = ",".join(b.admin for b in cluster.brokers)
    rows = tidelog("partitions", "list", "--topic", TOPIC, "--bootstrap", cluster.bootstrap, "--admin", admins)
    assert [r["partition"] for r in rows] == [0, 1, 2]
    assert all(r["leader"] in (1, 2, 3) and r["ledgers"] is not None for r in rows)

    delivered: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    producer = Producer({
        "bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
        "message.timeout.ms": 60_000,
    })  # fmt: skip

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append(int(msg.value()))

    def produce() -> None:
        for i in range(MAX_MESSAGES):
            if stop.is_set():
                break
            producer.produce(TOPIC, value=str(i).encode(), partition=0, on_delivery=report)
            producer.poll(0.002)
        producer.flush(60)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while len(delivered) < 200 and not errors and thread.is_alive():
            threading.Event().wait(0.05)
        before = leader_of(cluster.bootstrap, 0)
        target = next(n for n in (1, 2, 3) if n != before)
        moved = tidelog("partitions", "move", f"{TOPIC}:0", "--to", str(target), "--bootstrap", cluster.bootstrap)
        assert (moved["from"], moved["to"]) == (before, target)
        assert moved["epoch"] > moved["epoch_before"]
        print(f"move {before} -> {target}: {moved['seconds']}s, leaderless {moved['leaderless_seconds']}s")
        at_move = len(delivered)
        while len(delivered) < at_move + 200 and not errors and thread.is_alive():
            threading.Event().wait(0.05)
    finally:
        stop.set()
        thread.join(90)
    assert not errors, errors[:5]
    assert len(delivered) >= at_move + 200  # the producer carried on after the move
    assert delivered == list(range(len(delivered)))  # idempotent, in order, nothing lost on the way

    consumer = Consumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": "devcluster-check", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        seen: list[int] = []
        fetch_errors: list[str] = []
        deadline = time.monotonic() + 120
        while len(seen) < len(delivered) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(int(msg.value()))
            elif msg is not None:
                fetch_errors.append(str(msg.error()))
    finally:
        consumer.close()
    assert seen == delivered, fetch_errors[:5]


@pytest.mark.slow  # make test: the nemesis run kills, pauses and restarts brokers of a dev cluster
def test_broker_handles_kill_restart_pause_and_add(cluster: DevCluster) -> None:
    """The DevCluster API other cluster tests build on (this one runs last: it changes the cluster)."""
    from brokers.devcluster import metadata_broker_ids

    victim = cluster.broker(3)
    victim.kill9()
    assert not victim.alive()
    victim.restart()
    cluster.wait_ready()
    victim.pause()
    assert victim.alive()  # stopped, not gone
    victim.resume()
    added = cluster.add_broker()
    assert added.node_id == 4
    assert metadata_broker_ids("127.0.0.1", cluster.broker(1).port) == {1, 2, 3, 4}
    assert cluster.bootstrap.count(",") == 3
