"""Issue 10, must-show 1: real clients cannot tell a three-broker cluster from Kafka.

One DevCluster (3 ``tidelog broker`` processes, 3 bookies, etcd, moto S3). kcat, confluent-kafka,
kafka-python, aiokafka and kafkajs each produce to a topic of their own and read it back byte-exact (keys,
values, headers, timestamps, offsets 0,1,2,... per partition), bootstrapping through EACH broker in turn (the
bootstrap list names that one broker only; the clients find the partitions' leaders on the others through
Metadata); confluent-kafka also reads every topic through the next broker. A 12-partition topic and
``__consumer_offsets`` each spread over the three brokers with max - min <= 1 by count, as Metadata says
through every broker.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import string
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.devcluster import DevCluster
from tests.e2e.conftest import NODE_DIR
from tests.e2e.helpers import (
    PRODUCE_TIMEOUT,
    aiokafka_read,
    assert_acks_in_order,
    assert_same_records,
    confluent_produce,
    confluent_read,
    create_topic,
    kafka_python_read,
    make_records,
    read_got_jsonl,
    write_jsonl,
)
from tests.etcd_server import etcd_available

from .harness import OFFSETS_TOPIC, assert_all_alive, leaders, running_cluster, spread, wait_balanced

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

N = 400  # records per client per bootstrap broker
PARTS = 3
NODES = (1, 2, 3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("clients-cluster")) as c:
        yield c


@pytest.fixture(autouse=True)
def _alive(cluster: DevCluster) -> Iterator[None]:
    """No test here stops a process: one that died fails the next test at once, saying how it ended."""
    assert_all_alive(cluster)
    yield
    assert_all_alive(cluster)


def _topic(cluster: DevCluster, client: str, via: int) -> str:
    name = f"{client}-via{via}-{uuid.uuid4().hex[:6]}"
    create_topic(cluster.broker(via).address, name, PARTS)
    return name


def _other(cluster: DevCluster, via: int) -> str:
    """The next broker's address: a second bootstrap to read back through."""
    return cluster.broker(via % len(NODES) + 1).address


def test_partitions_spread_over_the_three_brokers(cluster: DevCluster) -> None:
    create_topic(cluster.bootstrap, "spread12", 12)
    for via in NODES:
        address = cluster.broker(via).address
        for topic in ("spread12", OFFSETS_TOPIC):
            owner = leaders(address, topic)
            if not owner or set(spread(owner)) != set(NODES):  # still converging: wait (hang guard only)
                owner = wait_balanced(address, topic, len(owner) or 12, set(NODES))
            counts = spread(owner)
            print(f"via broker {via}: {topic}: {len(owner)} partitions, per broker {counts}")
            assert set(counts) == set(NODES), counts
            assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert len(leaders(cluster.bootstrap, OFFSETS_TOPIC)) >= 3


@pytest.mark.parametrize("via", NODES)
def test_confluent_kafka(cluster: DevCluster, via: int) -> None:
    bootstrap = cluster.broker(via).address
    topic = _topic(cluster, "confluent", via)
    recs = make_records(N, PARTS, seed=100 + via)
    acked = confluent_produce(bootstrap, topic, recs, acks="all", **{"enable.idempotence": True, "linger.ms": 5})
    assert_acks_in_order(recs, acked, f"confluent-kafka producer via {via}")
    assert_same_records(recs, confluent_read(bootstrap, topic, range(PARTS), start=0), PARTS, f"confluent via {via}")
    other = _other(cluster, via)
    assert_same_records(recs, confluent_read(other, topic, range(PARTS), start=0), PARTS, f"confluent via {other}")


@pytest.mark.parametrize("via", NODES)
def test_kafka_python(cluster: DevCluster, via: int) -> None:
    from kafka import KafkaProducer

    bootstrap = cluster.broker(via).address
    topic = _topic(cluster, "kafka-python", via)
    recs = make_records(N, PARTS, seed=200 + via)
    prod = KafkaProducer(bootstrap_servers=bootstrap)  # defaults: idempotent, acks=all
    try:
        futs = [
            prod.send(topic, value=r.value, key=r.key, headers=list(r.headers), partition=r.partition,
                      timestamp_ms=r.timestamp)
            for r in recs
        ]  # fmt: skip
        prod.flush(PRODUCE_TIMEOUT)
        metas = [f.get(timeout=PRODUCE_TIMEOUT) for f in futs]
    finally:
        prod.close(30)
    assert_acks_in_order(recs, [(m.partition, m.offset) for m in metas], f"kafka-python producer via {via}")
    assert_same_records(recs, kafka_python_read(bootstrap, topic, PARTS), PARTS, f"kafka-python via {via}")
    other = _other(cluster, via)
    assert_same_records(recs, confluent_read(other, topic, range(PARTS), start=0), PARTS, f"confluent via {other}")


@pytest.mark.asyncio
@pytest.mark.parametrize("via", NODES)
async def test_aiokafka(cluster: DevCluster, via: int) -> None:
    from aiokafka import AIOKafkaProducer

    bootstrap = cluster.broker(via).address
    topic = await asyncio.to_thread(_topic, cluster, "aiokafka", via)
    recs = make_records(N, PARTS, seed=300 + via)
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await prod.start()
    try:
        async with asyncio.timeout(PRODUCE_TIMEOUT):
            futs = [
                await prod.send(topic, value=r.value, key=r.key, partition=r.partition, timestamp_ms=r.timestamp,
                                headers=list(r.headers))
                for r in recs
            ]  # fmt: skip
            metas = await asyncio.gather(*futs)
    finally:
        await prod.stop()
    assert_acks_in_order(recs, [(m.partition, m.offset) for m in metas], f"aiokafka producer via {via}")
    assert_same_records(recs, await aiokafka_read(bootstrap, topic, PARTS), PARTS, f"aiokafka via {via}")
    other = _other(cluster, via)
    got = await asyncio.to_thread(confluent_read, other, topic, range(PARTS), 0)
    assert_same_records(recs, got, PARTS, f"confluent via {other}")


@pytest.fixture(scope="module")
def node_bin() -> str:
    path = shutil.which("node")
    if path is None or not (NODE_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail("node or kafkajs missing (`make system-deps node-deps`)")
    return path


def _node(node: str, *args: str) -> None:
    res = subprocess.run(
        [node, str(NODE_DIR / "roundtrip.js"), *args], capture_output=True, text=True, timeout=180, cwd=NODE_DIR,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"node roundtrip.js {args[0]} failed ({res.returncode}):\n{res.stderr[-4000:]}"


@pytest.mark.parametrize("via", NODES)
def test_kafkajs(cluster: DevCluster, via: int, node_bin: str, tmp_path: Path) -> None:
    bootstrap = cluster.broker(via).address
    topic = _topic(cluster, "kafkajs", via)
    recs = make_records(N, PARTS, seed=400 + via)
    write_jsonl(tmp_path / "in.jsonl", recs)
    _node(node_bin, "produce", bootstrap, topic, str(tmp_path / "in.jsonl"), str(tmp_path / "acks.json"))
    result = json.loads((tmp_path / "acks.json").read_text())
    assert result["sent"] == N
    nxt = dict.fromkeys(range(PARTS), 0)
    for p, base, count in result["acks"]:  # consecutive sends tile 0,1,2,... per partition
        assert base == nxt[p], f"kafkajs via {via}: partition {p} acked at {base}, expected {nxt[p]}"
        nxt[p] += count
    _node(node_bin, "consume", bootstrap, topic, str(PARTS), str(tmp_path / "out.jsonl"))
    assert_same_records(recs, read_got_jsonl(tmp_path / "out.jsonl"), PARTS, f"kafkajs via {via}")
    other = _other(cluster, via)
    assert_same_records(recs, confluent_read(other, topic, range(PARTS), start=0), PARTS, f"confluent via {other}")


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
@pytest.mark.parametrize("via", NODES)
def test_kcat(cluster: DevCluster, via: int, tmp_path: Path) -> None:
    bootstrap = cluster.broker(via).address
    topic = _topic(cluster, "kcat", via)
    rnd = random.Random(500 + via)
    alphabet = string.ascii_letters + string.digits + "+/=_-.,;!?#"
    expected: dict[int, list[tuple[str, str]]] = {}
    for p in range(PARTS):
        lines = [(f"p{p}-{i:04d}", "".join(rnd.choices(alphabet, k=rnd.randint(1, 500)))) for i in range(N // PARTS)]
        f = tmp_path / f"in-{p}.txt"
        f.write_text("".join(f"{k}:{v}\n" for k, v in lines))
        res = subprocess.run(
            ["kcat", "-b", bootstrap, "-P", "-t", topic, "-p", str(p), "-K", ":", "-X", "acks=all",
             "-H", f"via={via}", "-m", "30", "-l", str(f)],
            capture_output=True, text=True, timeout=PRODUCE_TIMEOUT, check=False,
        )  # fmt: skip
        assert res.returncode == 0 and "ERROR" not in res.stderr, res.stderr[-3000:]
        expected[p] = lines
    for reader in (bootstrap, _other(cluster, via)):
        for p in range(PARTS):
            res = subprocess.run(
                ["kcat", "-b", reader, "-C", "-t", topic, "-p", str(p), "-o", "beginning", "-e", "-J", "-q",
                 "-X", "check.crcs=true", "-m", "30"],
                capture_output=True, text=True, timeout=PRODUCE_TIMEOUT, check=False,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr[-3000:]
            msgs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
            assert [m["offset"] for m in msgs] == list(range(len(expected[p]))), f"kcat via {reader} partition {p}"
            assert [(m["key"], m["payload"]) for m in msgs] == expected[p], f"kcat via {reader} partition {p}"
            assert all(m.get("headers") == ["via", str(via)] for m in msgs)
