"""Compressed record batches pass through Tidelog untouched and every client reads them back.

confluent-kafka (librdkafka's codecs) writes gzip, snappy, lz4 and zstd batches; the stored batches
are checked on the wire (raw Fetch: attributes carry the codec, CRC-32C valid), and kafka-python,
aiokafka and confluent-kafka read every record back byte-exact. The other direction too: aiokafka
(cramjam codecs) writes each codec and confluent-kafka reads it.

kafka-python 3.0.12 decodes snappy/lz4/zstd through python-snappy / lz4 / zstandard, which the test
extras install, so every read below runs kafka-python's own codecs.
"""

from __future__ import annotations

import asyncio
import random
import subprocess

import kafka.codec as kp_codec
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from .helpers import (
    Rec,
    aiokafka_read,
    assert_acks_in_order,
    assert_same_records,
    confluent_read,
    kafka_python_read,
)
from .kafka_wire import fetch_all_batches

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
N = 3000
PARTS = 2


def compressible_records(n: int, seed: int) -> list[Rec]:
    """Text-like values (compress well) with a random tail, keys, headers, explicit timestamps."""
    rnd = random.Random(seed)
    words = [b"tide", b"log", b"broker", b"ledger", b"bookie", b"segment", b"offset", b"kafka", b"\x00\xff"]
    base = 1_700_000_000_000
    out = []
    for i in range(n):
        value = b" ".join(rnd.choice(words) for _ in range(rnd.randint(0, 200))) + rnd.randbytes(rnd.randint(0, 16))
        headers = (("codec-test", str(i).encode()),) if i % 3 else ()
        key = None if i % 11 == 0 else f"key-{i % 50}".encode()
        out.append(Rec(i % PARTS, key, value, headers, base + i))
    return out


@pytest.fixture
def kafka_python_codecs() -> list[str]:
    """kafka-python decodes with its own codec packages (python-snappy, lz4, zstandard: test extras)."""
    assert kp_codec.has_snappy() and kp_codec.has_lz4() and kp_codec.has_zstd(), (
        "kafka-python lacks a codec package; `pip install -e '.[test]'` installs python-snappy, lz4, zstandard"
    )
    return []


def assert_stored_compressed(bootstrap: str, topic: str, codec: str, n_expected: int) -> None:
    total = 0
    compressed = 0
    for p in range(PARTS):
        for b in fetch_all_batches(bootstrap, topic, p):
            assert b.crc_ok, f"{topic}/{p}: batch at {b.base_offset} fails its CRC-32C"
            total += b.last_offset_delta + 1
            if b.attributes & 0x07 == CODECS[codec]:
                compressed += 1
            else:
                assert b.attributes & 0x07 == 0, f"batch at {b.base_offset}: codec bits {b.attributes & 7}"
    assert total == n_expected
    assert compressed > 0, (
        f"no {codec}-compressed batch stored in {topic}: the producer sent its batches uncompressed. "
        "librdkafka does that silently when the broker's ApiVersions answer makes it believe the codec "
        "is unsupported (lz4 needs FindCoordinator v0 advertised; librdkafka <= 2.11 needs Produce v0 "
        "advertised for gzip/snappy/lz4 — Kafka 4.0 advertises Produce 0..N for that reason, KAFKA-18659)"
    )


@pytest.mark.parametrize("codec", list(CODECS))
def test_confluent_compressed_read_by_every_client(module_broker, topic_factory, kafka_python_codecs, codec):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, f"comp-{codec}")
    recs = compressible_records(N, seed=CODECS[codec])

    acked: list[tuple[int, int] | None] = [None] * N
    errors = []

    def cb(i: int):  # type: ignore[no-untyped-def]
        def on_delivery(err, msg):  # type: ignore[no-untyped-def]
            if err:
                errors.append(str(err))
            else:
                acked[i] = (msg.partition(), msg.offset())

        return on_delivery

    prod = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20, "acks": "all"})
    for i, r in enumerate(recs):
        prod.produce(
            topic,
            r.value,
            r.key,
            partition=r.partition,
            timestamp=r.timestamp,
            headers=list(r.headers),
            on_delivery=cb(i),
        )
        prod.poll(0)
    assert prod.flush(120) == 0
    assert not errors, errors[:5]
    assert_acks_in_order(recs, [a for a in acked if a], f"confluent {codec} producer")

    assert_stored_compressed(bootstrap, topic, codec, N)
    assert_same_records(recs, confluent_read(bootstrap, topic, range(PARTS), start=0), PARTS, f"{codec}: confluent")
    assert_same_records(recs, kafka_python_read(bootstrap, topic, PARTS), PARTS, f"{codec}: kafka-python")
    got = asyncio.run(aiokafka_read(bootstrap, topic, PARTS))
    assert_same_records(recs, got, PARTS, f"{codec}: aiokafka")


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.asyncio
async def test_aiokafka_compressed_read_by_confluent(module_broker, topic_factory, codec):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, f"aiocomp-{codec}")
    recs = compressible_records(1000, seed=7)
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=20, acks="all")
    await prod.start()
    try:
        async with asyncio.timeout(120):
            futs = [
                await prod.send(
                    topic,
                    r.value,
                    r.key,
                    partition=r.partition,
                    timestamp_ms=r.timestamp,
                    headers=list(r.headers),
                )
                for r in recs
            ]
            metas = await asyncio.gather(*futs)
    finally:
        await prod.stop()
    assert_acks_in_order(recs, [(m.partition, m.offset) for m in metas], f"aiokafka {codec} producer")
    await asyncio.to_thread(assert_stored_compressed, bootstrap, topic, codec, len(recs))
    got = await asyncio.to_thread(confluent_read, bootstrap, topic, range(PARTS), 0)
    assert_same_records(recs, got, PARTS, f"aiokafka {codec} -> confluent")


@pytest.mark.parametrize("codec", list(CODECS))
def test_kcat_compressed(module_broker, topic_factory, kcat, codec):
    """kcat bundles an older librdkafka (2.0.2): its codec negotiation must see a Kafka-like broker too."""
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, 1, f"kcatcomp-{codec}")
    lines = [f"kcat {codec} record {i} " + "tide log " * (i % 40) for i in range(2000)]
    res = subprocess.run(
        [
            kcat,
            "-b",
            bootstrap,
            "-P",
            "-t",
            topic,
            "-p",
            "0",
            "-X",
            f"compression.codec={codec}",
            "-X",
            "linger.ms=20",
            "-m",
            "30",
        ],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    total = 0
    compressed = 0
    for b in fetch_all_batches(bootstrap, topic, 0):
        assert b.crc_ok
        total += b.last_offset_delta + 1
        compressed += b.attributes & 0x07 == CODECS[codec]
    assert total == len(lines)
    got = confluent_read(bootstrap, topic, [0], start=0)
    assert [g.value for g in got] == [line.encode() for line in lines]
    assert compressed > 0, (
        f"kcat (librdkafka 2.0.2) sent {codec} batches uncompressed: it decided the broker does not support "
        f"{codec}. librdkafka <= 2.11 enables gzip/snappy/lz4 only if ApiVersions lists Produce v0 (Kafka 4.0 "
        "keeps advertising Produce 0..N for this, KAFKA-18659); lz4 also needs FindCoordinator v0 listed."
    )
