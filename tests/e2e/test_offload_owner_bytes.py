"""Offload from the owner's bytes (issue 15) with a real ``tidelog run`` process, moto S3 over HTTP and
confluent-kafka: the broker builds its segments from the entries it wrote (``segments_from_owner`` in
``/v1/offload``, no bookie read); while the object store is stopped the waiting ledgers' bytes show per
partition (``owner_bytes``); after a kill -9 the restarted broker — a takeover as far as the bytes go — reads
those ledgers back from the bookies (``segments_from_bookies``). Every segment object is whole and valid,
and every record reads back byte-exact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.objectstore import open_object_store
from storage.segment.format import verify_object
from tests.moto_server import MotoServer

from .broker_process import BrokerProcess, free_port
from .helpers import Rec, confluent_produce, confluent_read, create_topic

WAIT = 90.0  # hang guard only
CONFIGS = {
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "300",  # the last ledger closes (and is offloaded) soon after producing stops
    "num.partitions": "1",
}
RECORDS = 500
VALUE = 700
SMALL_BATCHES = {"linger.ms": 5, "batch.size": 16384}


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/offload", timeout=10) as response:
        return dict(json.loads(response.read()))


def wait_status(port: int, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        got = status(port)
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"{what}: not after {WAIT}s; last: {got}"
        time.sleep(0.2)


def partition(got: dict[str, Any], topic: str) -> dict[str, Any]:
    return next(p for p in got["partitions"] if p["topic"] == topic)


def records(n: int, salt: int) -> list[Rec]:
    now = int(time.time() * 1000)
    return [Rec(0, f"k{i}".encode(), bytes([(i + salt) % 251]) * VALUE, (), now) for i in range(n)]


def test_segments_from_owner_bytes_then_from_the_bookies_after_a_kill(
    tmp_path: Path, finish: list[BrokerProcess]
) -> None:
    with MotoServer() as moto:
        bucket = "tidelog-owner"
        moto.create_bucket(bucket)
        url = moto.s3_url(bucket, "owner", connect_timeout="300ms", request_timeout="2s", max_retries="0",
                          retry_timeout="1s")  # fmt: skip
        moto_pid = moto._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        port = free_port()
        broker = BrokerProcess(
            tmp_path / "data", configs=CONFIGS, extra_args=["--admin", f"127.0.0.1:{port}", "--object-store", url]
        )
        finish.append(broker.start())
        topic = f"owner-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap, topic, 1)
        first = records(RECORDS, 0)
        assert len(confluent_produce(broker.bootstrap, topic, first, **SMALL_BATCHES)) == RECORDS

        done = wait_status(port, "everything offloaded", lambda s: (  # the last ledger too, closed by age
            partition(s, topic)["ledgers_waiting"] == 0 and partition(s, topic)["offloaded_bytes"] >= RECORDS * VALUE
        ))  # fmt: skip
        totals = done["totals"]
        assert totals["segments_from_owner"] == totals["segments_offloaded"] >= 5
        assert totals["segments_from_bookies"] == 0
        assert partition(done, topic)["owner_bytes"] == 0  # offloaded, and no ledger open: nothing kept

        os.kill(moto_pid, signal.SIGSTOP)
        try:
            second = records(RECORDS, 7)
            assert len(confluent_produce(broker.bootstrap, topic, second, **SMALL_BATCHES)) == RECORDS
            stuck = wait_status(port, "closed ledgers waiting, their bytes kept", lambda s: (
                partition(s, topic)["ledgers_waiting"] >= 3 and partition(s, topic)["owner_bytes"] >= 3 * 60_000
            ))  # fmt: skip
            assert stuck["totals"]["owner_bytes"] >= partition(stuck, topic)["owner_bytes"]
            broker.kill9()  # the kept bytes die with the process
        finally:
            os.kill(moto_pid, signal.SIGCONT)

        broker.start()
        drained = wait_status(port, "backlog offloaded by the restarted broker", lambda s: any(
            p["topic"] == topic and p["ledgers_waiting"] == 0 and p["high_watermark"] == 2 * RECORDS
            for p in s["partitions"]
        ) and s["totals"]["segments_from_bookies"] >= 3)  # fmt: skip
        assert drained["totals"]["segments_from_bookies"] >= 3

        back = confluent_read(broker.bootstrap, topic, [0], start=0)
        assert [(g.offset, g.value) for g in back] == [(i, r.value) for i, r in enumerate(first + second)]

        async def check_objects() -> int:
            objects = open_object_store(url)
            try:
                listed = await objects.list("")
                for meta in listed:
                    if meta.key.endswith(".seg"):
                        verify_object(await objects.get(meta.key))
                return sum(1 for m in listed if m.key.endswith(".seg"))
            finally:
                await objects.close()

        assert asyncio.run(check_objects()) >= 7
