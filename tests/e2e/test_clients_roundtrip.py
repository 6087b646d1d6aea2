"""Real Kafka clients cannot tell Tidelog from Kafka: each one writes 10,000+ records (keys,
headers, timestamps) to its own 3-partition topic over a real socket to the real ``tidelog run``
subprocess, and the records are read back byte-exact, in order, at offsets 0,1,2,... per partition —
by the same client where it can consume without consumer groups, and by confluent-kafka.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from .conftest import NODE_DIR
from .helpers import (
    PRODUCE_TIMEOUT,
    aiokafka_read,
    assert_acks_in_order,
    assert_same_records,
    confluent_produce,
    confluent_read,
    kafka_python_read,
    make_records,
    read_got_jsonl,
    write_jsonl,
)

N = 10_000
PARTS = 3


# --------------------------------------------------------------------------- confluent-kafka


def test_confluent_kafka_roundtrip(module_broker, topic_factory):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "confluent")
    recs = make_records(N, PARTS, seed=1)
    # librdkafka's defaults (acks=all) plus a little linger so batches hold many records.
    acked = confluent_produce(bootstrap, topic, recs, **{"linger.ms": 5})
    assert_acks_in_order(recs, acked, "confluent-kafka producer")
    got = confluent_read(bootstrap, topic, range(PARTS), start=0)
    assert_same_records(recs, got, PARTS, "confluent-kafka -> confluent-kafka")


# --------------------------------------------------------------------------- kafka-python


def test_kafka_python_roundtrip_default_producer(module_broker, topic_factory):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "kafka-python")
    recs = make_records(N, PARTS, seed=2)
    # DEFAULT producer settings: in kafka-python 3.x that is enable_idempotence=True, acks=all.
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    assert prod.config["enable_idempotence"] is True
    try:
        futs = [
            prod.send(
                topic,
                value=r.value,
                key=r.key,
                headers=list(r.headers),
                partition=r.partition,
                timestamp_ms=r.timestamp,
            )
            for r in recs
        ]
        prod.flush(PRODUCE_TIMEOUT)
        metas = [f.get(timeout=PRODUCE_TIMEOUT) for f in futs]
    finally:
        prod.close(30)
    assert_acks_in_order(recs, [(m.partition, m.offset) for m in metas], "kafka-python producer")
    assert_same_records(recs, kafka_python_read(bootstrap, topic, PARTS), PARTS, "kafka-python -> kafka-python")
    assert_same_records(
        recs,
        confluent_read(bootstrap, topic, range(PARTS), start=0),
        PARTS,
        "kafka-python -> confluent-kafka",
    )


# --------------------------------------------------------------------------- aiokafka


@pytest.mark.asyncio
async def test_aiokafka_roundtrip(module_broker, topic_factory):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "aiokafka")
    recs = make_records(N, PARTS, seed=3)
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)  # defaults (acks=1 in aiokafka)
    await prod.start()
    try:
        async with asyncio.timeout(PRODUCE_TIMEOUT):
            futs = [
                await prod.send(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    timestamp_ms=r.timestamp,
                    headers=list(r.headers),
                )
                for r in recs
            ]
            metas = await asyncio.gather(*futs)
    finally:
        await prod.stop()
    assert_acks_in_order(recs, [(m.partition, m.offset) for m in metas], "aiokafka producer")
    assert_same_records(recs, await aiokafka_read(bootstrap, topic, PARTS), PARTS, "aiokafka -> aiokafka")
    got = await asyncio.to_thread(confluent_read, bootstrap, topic, range(PARTS), 0)
    assert_same_records(recs, got, PARTS, "aiokafka -> confluent-kafka")


# --------------------------------------------------------------------------- kafkajs (node)


def run_node(node: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [node, str(NODE_DIR / "roundtrip.js"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
        check=False,
    )
    assert res.returncode == 0, f"node roundtrip.js {args[0]} failed ({res.returncode}):\n{res.stderr[-4000:]}"
    return res


def test_kafkajs_roundtrip(module_broker, topic_factory, node, tmp_path: Path):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "kafkajs")
    recs = make_records(N, PARTS, seed=4)
    write_jsonl(tmp_path / "in.jsonl", recs)
    run_node(node, "produce", bootstrap, topic, str(tmp_path / "in.jsonl"), str(tmp_path / "acks.json"))
    result = json.loads((tmp_path / "acks.json").read_text())
    assert result["sent"] == N
    # Each send() answers one base offset per partition; consecutive sends must tile 0,1,2,...
    nxt: dict[int, int] = defaultdict(int)
    for p, base, count in result["acks"]:
        assert base == nxt[p], f"kafkajs send acked partition {p} at base offset {base}, expected {nxt[p]}"
        nxt[p] += count
    assert sum(nxt.values()) == N

    run_node(node, "consume", bootstrap, topic, str(PARTS), str(tmp_path / "out.jsonl"))
    assert_same_records(recs, read_got_jsonl(tmp_path / "out.jsonl"), PARTS, "kafkajs -> kafkajs (raw fetch)")
    assert_same_records(
        recs, confluent_read(bootstrap, topic, range(PARTS), start=0), PARTS, "kafkajs -> confluent-kafka"
    )


# --------------------------------------------------------------------------- kcat


KCAT_RUNS_PER_PARTITION = 2
KCAT_PER_RUN = 1667  # 3 partitions x 2 runs x 1667 = 10,002 records


def kcat_lines(rnd: random.Random, partition: int, run: int) -> list[tuple[str, str]]:
    alphabet = string.ascii_letters + string.digits + "+/=_-.,;!?#"
    out = []
    for i in range(KCAT_PER_RUN):
        key = f"p{partition}-r{run}-{i:05d}"
        value = "".join(rnd.choices(alphabet, k=rnd.randint(1, 1000)))
        out.append((key, value))
    return out


def test_kcat_roundtrip(module_broker, topic_factory, kcat, tmp_path: Path):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "kcat")
    rnd = random.Random(5)

    # kcat -L sees the topic with 3 partitions led by broker 0.
    md = subprocess.run(
        [kcat, "-b", bootstrap, "-L", "-J", "-t", topic, "-m", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert md.returncode == 0, md.stderr
    meta = json.loads(md.stdout)
    (t,) = [t for t in meta["topics"] if t["topic"] == topic]
    assert sorted(p["partition"] for p in t["partitions"]) == list(range(PARTS))
    assert {p["leader"] for p in t["partitions"]} == {0}

    # Produce: -K key delimiter, -H headers (kcat applies -H to every message of a run, so each
    # run of each partition carries its own header set, including a repeated key).
    expected: dict[int, list[tuple[str, str, list[str], int, int]]] = defaultdict(list)
    for p in range(PARTS):
        for run in range(KCAT_RUNS_PER_PARTITION):
            lines = kcat_lines(rnd, p, run)
            hdrs = [("source", "kcat"), ("run", f"p{p}r{run}"), ("dup", "1"), ("dup", "2=two")]
            f = tmp_path / f"in-{p}-{run}.txt"
            f.write_text("".join(f"{k}:{v}\n" for k, v in lines))
            cmd = [
                kcat,
                "-b",
                bootstrap,
                "-P",
                "-t",
                topic,
                "-p",
                str(p),
                "-K",
                ":",
                "-X",
                "acks=all",
                "-m",
                "30",
            ]
            for hk, hv in hdrs:
                cmd += ["-H", f"{hk}={hv}"]
            cmd += ["-l", str(f)]  # -l: split the one input file on the delimiter (newline)
            t0 = int(time.time() * 1000)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=PRODUCE_TIMEOUT, check=False)
            t1 = int(time.time() * 1000)
            assert res.returncode == 0, f"kcat produce failed: {res.stderr[-3000:]}"
            assert "ERROR" not in res.stderr, res.stderr[-3000:]
            flat_hdrs = [x for kv in hdrs for x in kv]
            expected[p].extend((k, v, flat_hdrs, t0, t1) for k, v in lines)
    assert sum(len(v) for v in expected.values()) >= N

    # Read back with kcat (no -G: no consumer group), JSON envelope per message.
    by_conf = {(g.partition, g.offset): g for g in confluent_read(bootstrap, topic, range(PARTS), start=0)}
    for p in range(PARTS):
        res = subprocess.run(
            [
                kcat,
                "-b",
                bootstrap,
                "-C",
                "-t",
                topic,
                "-p",
                str(p),
                "-o",
                "beginning",
                "-e",
                "-J",
                "-q",
                "-X",
                "check.crcs=true",
                "-m",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=PRODUCE_TIMEOUT,
            check=False,
        )
        assert res.returncode == 0, f"kcat consume failed: {res.stderr[-3000:]}"
        msgs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        exp = expected[p]
        assert [m["offset"] for m in msgs] == list(range(len(exp))), (
            f"partition {p}: kcat read {len(msgs)} records / offsets not 0..{len(exp) - 1}"
        )
        for m, (k, v, hdrs, t0, t1) in zip(msgs, exp, strict=True):
            where = f"partition {p} offset {m['offset']}"
            assert m["partition"] == p
            assert m["key"] == k, f"{where}: key {m['key']!r} != {k!r}"
            assert m["payload"] == v, f"{where}: payload differs"
            assert m.get("headers") == hdrs, f"{where}: headers {m.get('headers')} != {hdrs}"
            assert m["tstype"] == "create", f"{where}: timestamp type {m['tstype']}"
            # kcat stamps CreateTime itself at produce time: it must lie within that kcat run.
            assert t0 - 1 <= m["ts"] <= t1 + 1, f"{where}: timestamp {m['ts']} outside [{t0}, {t1}]"
            g = by_conf[(p, m["offset"])]
            assert (g.key, g.value, g.timestamp) == (k.encode(), v.encode(), m["ts"]), f"{where}: confluent disagrees"
            assert [x for hk, hv in g.headers for x in (hk, hv.decode())] == hdrs
    assert len(by_conf) == sum(len(v) for v in expected.values())
