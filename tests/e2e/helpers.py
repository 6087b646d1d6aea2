"""Shared pieces of the end-to-end tests: topics, deterministic records, readers, comparisons."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTP
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTP

TOPIC_TIMEOUT = 60.0
PRODUCE_TIMEOUT = 180.0  # hang guards only


# --------------------------------------------------------------------------- topics


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    configs: dict[str, str] | None = None,
    timeout: float = TOPIC_TIMEOUT,
) -> None:
    """CreateTopics through confluent-kafka's AdminClient; waits until Metadata shows every partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs or {})],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    futures[name].result(timeout)
    wait_for_partitions(bootstrap, name, partitions, timeout, admin)


def wait_for_partitions(
    bootstrap: str,
    name: str,
    partitions: int,
    timeout: float = TOPIC_TIMEOUT,
    admin: AdminClient | None = None,
) -> None:
    admin = admin or AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=10)
        t = md.topics.get(name)
        last = t
        if (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} never showed {partitions} led partitions in Metadata; last: {last}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Rec:
    partition: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int  # CreateTime, ms

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "key": None if self.key is None else base64.b64encode(self.key).decode(),
            "value": base64.b64encode(self.value).decode(),
            "headers": [[k, base64.b64encode(v).decode()] for k, v in self.headers],
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class Got:
    """A record as a client read it back."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


def make_records(n: int, partitions: int, seed: int, max_value: int = 1024, base_ts: int | None = None) -> list[Rec]:
    """Deterministic, varied records: binary keys (every 10th null), binary values 0..max_value bytes
    (some empty), 0-3 headers with binary (sometimes empty) values, duplicate header keys adjacent,
    and CreateTime timestamps in the past that are deliberately not monotonic."""
    rnd = random.Random(seed)
    base = base_ts if base_ts is not None else int(time.time() * 1000) - 2 * 86_400_000
    out = []
    for i in range(n):
        key = None if i % 10 == 3 else f"k{i:06d}-".encode() + rnd.randbytes(rnd.randint(0, 12))
        size = 0 if i % 97 == 0 else rnd.randint(1, max_value)
        value = rnd.randbytes(size)
        headers: list[tuple[str, bytes]] = []
        for h in range(rnd.randint(0, 3)):
            hv = b"" if rnd.random() < 0.1 else rnd.randbytes(rnd.randint(1, 24))
            headers.append((f"h{h}-{'x' * rnd.randint(0, 3)}", hv))
        if i % 13 == 0:  # a repeated header key, adjacent so every client can keep the order
            headers += [("dup", b"first"), ("dup", b"second")]
        ts = base + i * 5 + rnd.randint(-3, 3)
        out.append(Rec(rnd.randrange(partitions), key, value, tuple(headers), ts))
    return out


def write_jsonl(path: Path, records: Iterable[Rec]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), separators=(",", ":")))
            f.write("\n")


def read_got_jsonl(path: Path) -> list[Got]:
    out = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            out.append(
                Got(
                    partition=int(d["partition"]),
                    offset=int(d["offset"]),
                    key=None if d["key"] is None else base64.b64decode(d["key"]),
                    value=None if d["value"] is None else base64.b64decode(d["value"]),
                    headers=tuple((k, base64.b64decode(v)) for k, v in d["headers"]),
                    timestamp=int(d["timestamp"]),
                )
            )
    return out


# --------------------------------------------------------------------------- readers


def consumer_config(bootstrap: str, **extra: object) -> dict[str, object]:
    """confluent-kafka consumer without consumer-group use: group.id is mandatory in the Python
    binding, but with assign() and explicit offsets nothing is committed or fetched from a group."""
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": "tidelog-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "check.crcs": True,  # verify every batch's CRC-32C as it arrives from the broker
        "enable.partition.eof": True,
    }
    conf.update(extra)
    return conf


def confluent_read(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    start: int = OFFSET_BEGINNING,
    until: dict[int, int] | None = None,
    timeout: float = 120.0,
    **conf: object,
) -> list[Got]:
    """Read each partition from ``start`` (an offset or OFFSET_BEGINNING/END) to its end.

    ``until`` maps partition -> exclusive end offset; without it a partition is done at its first
    PARTITION_EOF (the high watermark at that moment).
    """
    parts = list(partitions)
    c = Consumer(consumer_config(bootstrap, **conf))
    out: list[Got] = []
    try:
        c.assign([TopicPartition(topic, p, start) for p in parts])
        pending = set(parts)
        next_off: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"confluent read of {topic} unfinished after {timeout}s; pending {pending}, "
                    f"positions {next_off}, read {len(out)}"
                )
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == -191:  # _PARTITION_EOF
                        p = m.partition()
                        if until is None or next_off.get(p, -1) >= until.get(p, 0):
                            pending.discard(p)
                        continue
                    raise KafkaException(err)
                p = m.partition()
                _ts_type, ts = m.timestamp()
                out.append(Got(p, m.offset(), m.key(), m.value(), tuple(m.headers() or ()), ts))
                next_off[p] = m.offset() + 1
                if until is not None and next_off[p] >= until.get(p, 0):
                    pending.discard(p)
    finally:
        c.close()
    return out


def high_watermarks(bootstrap: str, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
    c = Consumer(consumer_config(bootstrap))
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in partitions}
    finally:
        c.close()


# --------------------------------------------------------------------------- comparisons


def by_partition(got: Iterable[Got]) -> dict[int, list[Got]]:
    out: dict[int, list[Got]] = defaultdict(list)
    for g in got:
        out[g.partition].append(g)
    return out


def _describe(x: object) -> str:
    s = repr(x)
    return s if len(s) < 400 else s[:400] + "..."


def assert_same_records(
    expected: list[Rec], got: Iterable[Got], partitions: int, who: str, check_timestamps: bool = True
) -> None:
    """Byte-exact keys/values/headers/timestamps, in produce order per partition, offsets 0,1,2,..."""
    exp = defaultdict(list)
    for r in expected:
        exp[r.partition].append(r)
    gotp = by_partition(got)
    assert set(gotp) <= set(range(partitions)), f"{who}: records in unknown partitions {set(gotp)}"
    for p in range(partitions):
        e, g = exp.get(p, []), gotp.get(p, [])
        offsets = [x.offset for x in g]
        if offsets != list(range(len(offsets))):
            bad = next(i for i, o in enumerate(offsets) if o != i)
            raise AssertionError(
                f"{who}: partition {p} offsets not 0,1,2,...: index {bad} has offset "
                f"{offsets[bad]} (around: {offsets[max(0, bad - 3) : bad + 4]})"
            )
        assert len(g) == len(e), f"{who}: partition {p}: produced {len(e)} records, read back {len(g)}"
        for i, (er, gr) in enumerate(zip(e, g, strict=True)):
            problems = []
            if gr.key != er.key:
                problems.append(f"key {_describe(gr.key)} != {_describe(er.key)}")
            if gr.value != er.value:
                problems.append(f"value ({len(gr.value or b'')} bytes) != expected ({len(er.value)} bytes)")
            if tuple(gr.headers) != tuple(er.headers):
                problems.append(f"headers {_describe(gr.headers)} != {_describe(er.headers)}")
            if check_timestamps and gr.timestamp != er.timestamp:
                problems.append(f"timestamp {gr.timestamp} != {er.timestamp}")
            if problems:
                raise AssertionError(
                    f"{who}: partition {p} offset {gr.offset} (record #{i} of that partition): " + "; ".join(problems)
                )


# --------------------------------------------------------------------------- client helpers


def assert_acks_in_order(recs: list[Rec], acked: list[tuple[int, int]], who: str) -> None:
    """The offset each record was acknowledged at: 0,1,2,... per partition, in produce order."""
    assert len(acked) == len(recs), f"{who}: {len(acked)} acks for {len(recs)} records"
    nxt: dict[int, int] = defaultdict(int)
    for i, (r, (p, off)) in enumerate(zip(recs, acked, strict=True)):
        assert p == r.partition, f"{who}: record #{i} acked on partition {p}, sent to {r.partition}"
        assert off == nxt[p], f"{who}: record #{i} acked at {p}/{off}, expected offset {nxt[p]}"
        nxt[p] += 1


def confluent_produce(bootstrap: str, topic: str, recs: list[Rec], **conf: object) -> list[tuple[int, int]]:
    acked: list[tuple[int, int] | None] = [None] * len(recs)
    errors: list[str] = []

    def on_delivery(i: int):  # type: ignore[no-untyped-def]
        def cb(err, msg):  # type: ignore[no-untyped-def]
            if err is not None:
                errors.append(f"#{i}: {err}")
            else:
                acked[i] = (msg.partition(), msg.offset())

        return cb

    p = Producer({"bootstrap.servers": bootstrap, **conf})
    for i, r in enumerate(recs):
        while True:
            try:
                p.produce(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    timestamp=r.timestamp,
                    headers=list(r.headers),
                    on_delivery=on_delivery(i),
                )
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    left = p.flush(PRODUCE_TIMEOUT)
    assert left == 0, f"{left} records still undelivered after {PRODUCE_TIMEOUT}s"
    assert not errors, f"delivery errors: {errors[:10]}"
    return [a for a in acked if a is not None]


def kafka_python_read(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> list[Got]:
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        check_crcs=True,
        request_timeout_ms=60_000,
    )
    try:
        tps = [KpTP(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        out: list[Got] = []
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, (
                f"kafka-python read unfinished: { {tp.partition: c.position(tp) for tp in tps} } / {ends}"
            )
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                out.extend(
                    Got(tp.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp) for m in msgs
                )
        return out
    finally:
        c.close()


async def aiokafka_read(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> list[Got]:
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        check_crcs=True,
    )
    await c.start()
    try:
        tps = [AioTP(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Got] = []
        async with asyncio.timeout(timeout):
            while True:
                positions = {tp: await c.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    return out
                batch = await c.getmany(timeout_ms=500, max_records=5000)
                for tp, msgs in batch.items():
                    out.extend(
                        Got(tp.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp) for m in msgs
                    )
    finally:
        await c.stop()
