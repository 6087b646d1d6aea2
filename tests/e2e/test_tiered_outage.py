"""Issue 9: offloaded data read while the object store is down — an error the client sees, never silence.

A ``tidelog run`` process on moto S3 over HTTP, every record offloaded (small ledgers, age rollover) and no
block cache (``tiered.block.cache.bytes=0``), so every read of old data is a GET. moto is then SIGSTOPped:
a raw Fetch from offset 0 must answer the partition with KAFKA_STORAGE_ERROR (56) after the broker's
bounded retries — not an empty success, which a consumer cannot tell from "no data" — and /metrics counts
the failed reads. After SIGCONT a confluent-kafka consumer reads every record back byte-exact.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
import uuid
from pathlib import Path

from tests.moto_server import MotoServer

from . import kafka_wire as kw
from .broker_process import BrokerProcess, free_port
from .helpers import (
    assert_acks_in_order,
    assert_same_records,
    confluent_produce,
    confluent_read,
    create_topic,
    make_records,
)
from .test_tiered import wait_all_offloaded

BUCKET = "tidelog-outage"
KAFKA_STORAGE_ERROR = 56
CONFIGS = {
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "300",
    "tail.cache.bytes.per.partition": "65536",
    "tiered.block.cache.bytes": "0",
}
FETCH_GUARD = 60.0  # hang guard only: the broker answers within its read bound (5 s)


def metric(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def raw_fetch(bootstrap: str, topic: str, offset: int) -> tuple[kw.FetchPartition, float]:
    """One Fetch of partition 0 at ``offset``; its partition result and how long the answer took."""
    with kw.connect(bootstrap, timeout=FETCH_GUARD) as sock:
        version = kw.pick_version(kw.api_versions(sock), kw.API_FETCH, 4, 11)
        started = time.monotonic()
        sock.sendall(kw.fetch_request(version, topic, 0, offset, correlation_id=11, max_wait_ms=100))
        part = kw.parse_fetch_response(version, kw.recv_frame(sock))
        return part, time.monotonic() - started


def test_fetch_of_offloaded_data_while_the_object_store_is_stopped(tmp_path: Path) -> None:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        url = server.s3_url(BUCKET, "outage")  # the store's own timeouts stay at their (long) defaults
        pid = server._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        admin_port = free_port()
        configs = {**CONFIGS, "admin.listen": f"127.0.0.1:{admin_port}"}
        broker = BrokerProcess(tmp_path / "data", configs=configs, extra_args=["--object-store", url]).start()
        topic = f"outage-{uuid.uuid4().hex[:8]}"
        try:
            create_topic(broker.bootstrap, topic, 1)
            recs = make_records(600, 1, seed=9, max_value=600)
            acked: list[tuple[int, int]] = []
            for i in range(0, len(recs), 50):  # many entries: the oldest are in no cache, only in segments
                acked += confluent_produce(broker.bootstrap, topic, recs[i : i + 50])
            wait_all_offloaded(broker.bootstrap, topic, parts=1)
            before = metric(admin_port, "tidelog_tiered_read_failures_total")
            os.kill(pid, signal.SIGSTOP)
            try:
                part, took = raw_fetch(broker.bootstrap, topic, 0)
                outcome = f"error {part.error_code}, {len(part.records)} bytes"
                assert part.error_code == KAFKA_STORAGE_ERROR, f"fetch during the outage: {outcome}"
                assert part.records == b""
                failures = metric(admin_port, "tidelog_tiered_read_failures_total")
                assert failures > before
            finally:
                os.kill(pid, signal.SIGCONT)
            got = confluent_read(broker.bootstrap, topic, [0], start=0)
            assert_acks_in_order(recs, acked, "confluent-kafka producer")
            assert_same_records(recs, got, 1, "confluent-kafka after the object store came back")
            print(f"\nfetch during the outage answered {part.error_code} in {took:.1f}s; "
                  f"read failures counted {failures - before:.0f}; read back {len(got)} records")  # fmt: skip
        finally:
            broker.close()
