"""Request decoding speed: kio's native reader alone against the request check (brokers/codec/request_check.py)
in front of it, as the broker's ``_dispatch`` runs them on every request.

    .venv/bin/python bench/decode.py [--seconds 0.2] [--repeat 15]

Representative requests, written by kio: Produce v9 with 1 and with 10 partitions of a 16 KiB record batch,
Fetch v13 with 3 partitions, Metadata v12 with 10 topics, OffsetCommit v9 (1 topic, 3 partitions). For each,
requests decoded per second (best of ``--repeat`` rounds of ``--seconds``, the three taking turns) for: the
check alone, kio alone (header + body), check + kio; and the check's share of check + kio's time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kio.index import load_request_schema
from kio.schema.fetch.v13 import request as fetch13
from kio.schema.metadata.v12 import request as metadata12
from kio.schema.offset_commit.v9 import request as commit9
from kio.schema.produce.v9 import request as produce9
from kio.serial import entity_reader

from brokers.codec.request_check import check_request
from tests.request_samples import encode_request
from tests.segment_data import make_batch

KiB = 1024


def produce(partitions: int) -> bytes:
    batch = make_batch(0, 16, 1_700_000_000_000, value_size=KiB - 40)  # 16 records, ~16 KiB
    body = produce9.ProduceRequest(
        transactional_id=None,
        acks=-1,  # type: ignore[arg-type]
        timeout=datetime.timedelta(seconds=30),  # type: ignore[arg-type]
        topic_data=(
            produce9.TopicProduceData(
                name="bench-topic",  # type: ignore[arg-type]
                partition_data=tuple(
                    produce9.PartitionProduceData(index=i, records=batch)  # type: ignore[arg-type]
                    for i in range(partitions)
                ),
            ),
        ),
    )
    return encode_request(0, 9, body, client_id="rdkafka")


def fetch() -> bytes:
    body = fetch13.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=500),  # type: ignore[arg-type]
        min_bytes=1,  # type: ignore[arg-type]
        max_bytes=52_428_800,  # type: ignore[arg-type]
        topics=(
            fetch13.FetchTopic(
                topic_id=uuid.UUID(int=0x1234),
                partitions=tuple(
                    fetch13.FetchPartition(partition=i, fetch_offset=1_000_000 + i, partition_max_bytes=1 << 20)  # type: ignore[arg-type]
                    for i in range(3)
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    return encode_request(1, 13, body, client_id="rdkafka")


def metadata() -> bytes:
    body = metadata12.MetadataRequest(
        topics=tuple(
            metadata12.MetadataRequestTopic(topic_id=None, name=f"topic-{i:02d}")  # type: ignore[arg-type]
            for i in range(10)
        ),
        include_topic_authorized_operations=False,
    )
    return encode_request(3, 12, body, client_id="rdkafka")


def offset_commit() -> bytes:
    body = commit9.OffsetCommitRequest(
        group_id="bench-group",  # type: ignore[arg-type]
        generation_id_or_member_epoch=3,  # type: ignore[arg-type]
        member_id="rdkafka-5b8e0c2e-8a4b-4b8e-9a61-0f1e2d3c4b5a",
        group_instance_id=None,
        topics=(
            commit9.OffsetCommitRequestTopic(
                name="bench-topic",  # type: ignore[arg-type]
                partitions=tuple(
                    commit9.OffsetCommitRequestPartition(
                        partition_index=i,  # type: ignore[arg-type]
                        committed_offset=123_456 + i,  # type: ignore[arg-type]
                        committed_metadata="",
                    )
                    for i in range(3)
                ),
            ),
        ),
    )
    return encode_request(8, 9, body, client_id="rdkafka")


CASES: list[tuple[str, int, int, Callable[[], bytes]]] = [
    ("Produce v9, 1 partition x 16 KiB", 0, 9, lambda: produce(1)),
    ("Produce v9, 10 partitions x 16 KiB", 0, 9, lambda: produce(10)),
    ("Fetch v13, 3 partitions", 1, 13, fetch),
    ("Metadata v12, 10 topics", 3, 12, metadata),
    ("OffsetCommit v9, 3 partitions", 8, 9, offset_commit),
]


def _batch_size(fn: Callable[[], object]) -> int:
    """Calls per timed batch: about 5 ms worth."""
    batch = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - t0 > 0.005:
            return batch
        batch *= 2


def rates(fns: list[Callable[[], object]], seconds: float, repeat: int) -> list[float]:
    """Best calls per second of each function; the functions take turns (``repeat`` rounds of ``seconds``
    each), so that a burst of load from elsewhere on the machine hits them alike and the best round of each
    is comparable."""
    batches = [_batch_size(fn) for fn in fns]
    best = [0.0] * len(fns)
    for _ in range(repeat):
        for k, (fn, batch) in enumerate(zip(fns, batches, strict=True)):
            n = 0
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                for _ in range(batch):
                    fn()
                n += batch
            best[k] = max(best[k], n / elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("| request | frame bytes | check alone (req/s) | kio alone (req/s) | check + kio (req/s) | check's share |")
    print("|---|---|---|---|---|---|")
    for name, api_key, version, build in CASES:
        frame = build()
        cls: Any = load_request_schema(api_key, version)
        read_header, read_body = entity_reader(cls.__header_schema__), entity_reader(cls)
        check_request(frame, api_key, version)  # compile the plan outside the timing, as the broker's cache does

        def kio(frame: bytes = frame, rh: Any = read_header, rb: Any = read_body) -> object:
            _, used = rh(frame, 0)
            return rb(frame, used)

        def checked(frame: bytes = frame, k: int = api_key, v: int = version, kio: Any = kio) -> object:
            check_request(frame, k, v)
            return kio()

        def check(frame: bytes = frame, k: int = api_key, v: int = version) -> None:
            check_request(frame, k, v)

        r_check, r_kio, r_both = rates([check, kio, checked], args.seconds, args.repeat)
        share = 1 - r_both / r_kio
        us = 1e6 / r_check
        print(
            f"| {name} | {len(frame):,} | {r_check:,.0f} ({us:.1f} µs) | {r_kio:,.0f} | {r_both:,.0f} | {share:.0%} |"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
