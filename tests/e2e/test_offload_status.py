"""Issue 5, "offload lag and backlog are visible": a real ``tidelog run --admin HOST:PORT`` process, records
produced with confluent-kafka, ``/metrics`` scraped over a real socket, and ``tidelog offload status`` run as
a real command.

* Local object store: once offloaded, the segments are counted and the backlog is 0; bad HTTP input gets
  its status (garbage 400, a huge header 431, POST 405, unknown path 404, an idle client 408) while the
  Kafka listener keeps serving.
* moto S3 stopped (SIGSTOP): every closed ledger shows up as backlog, with its bytes, a growing lag and the
  last error, in the metrics and in ``tidelog offload status``; once moto resumes the backlog drains to 0.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.moto_server import MotoServer

from .broker_process import BrokerProcess, free_port, tidelog_command
from .helpers import Rec, confluent_produce, confluent_read, create_topic

WAIT = 90.0  # hang guard only
SMALL = {
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "300",  # the last ledger closes (and is offloaded) soon after producing stops
    "num.partitions": "1",
}
RECORDS = 600
VALUE = 700  # bytes: 600 records are ~420 KB, some seven 64 KiB ledgers
SMALL_BATCHES = {"linger.ms": 5, "batch.size": 16384}  # entries of a few batches: ledgers roll over at 64 KiB
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\})? (\S+)')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')

Metrics = dict[tuple[str, str, int], float]
"""(name, topic, partition) -> value; broker-wide series have topic "" and partition -1."""


def scrape(port: int) -> Metrics:
    """GET /metrics over a socket; checks status and content type. Series with labels other than topic and
    partition (per API, per operation...) are left out."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, body
    assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    out: Metrics = {}
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.fullmatch(line)
        assert match is not None, line
        name, labels, value = match.groups()
        got = dict(LABEL.findall(labels or ""))
        if set(got) - {"topic", "partition"}:
            continue
        partition = got.get("partition")
        out[(name, got.get("topic", ""), -1 if partition is None else int(partition))] = float(value)
    return out


def wait_for(port: int, topic: str, what: str, ok: Callable[[Metrics], bool]) -> Metrics:
    """Scrape until ``ok`` holds (WAIT is a hang guard)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = scrape(port)
        if ok(got):
            return got
        shown = {k: v for k, v in got.items() if k[1] in (topic, "")}
        assert time.monotonic() < deadline, f"{what}: not after {WAIT}s; last scrape: {shown}"
        time.sleep(0.2)


def status_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``tidelog offload status --admin 127.0.0.1:PORT ARGS`` as a subprocess."""
    return subprocess.run(
        [*tidelog_command(), "offload", "status", "--admin", f"127.0.0.1:{port}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def records(n: int) -> list[Rec]:
    now = int(time.time() * 1000)
    return [Rec(0, f"k{i}".encode(), bytes([i % 251]) * VALUE, (), now) for i in range(n)]


def raw_http(port: int, data: bytes) -> bytes:
    """Send raw bytes to the admin port and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_offloaded_figures_and_bad_http_input_local_store(broker_factory: Callable[..., BrokerProcess]) -> None:
    port = free_port()
    broker = broker_factory(configs={**SMALL, "admin.listen": f"127.0.0.1:{port}"})  # the config key, not --admin
    idle = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing: must get 408 later
    topic = f"obs-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    recs = records(RECORDS)
    assert len(confluent_produce(broker.bootstrap, topic, recs, **SMALL_BATCHES)) == RECORDS

    # the last ledger closes by age; then every record is in a segment and nothing waits
    got = wait_for(port, topic, "everything offloaded", lambda m: (
        m.get(("tidelog_partition_tiered_bytes", topic, 0), 0) >= RECORDS * VALUE
        and m[("tidelog_offload_backlog_ledgers", topic, 0)] == 0
    ))  # fmt: skip
    assert got[("tidelog_partition_high_watermark", topic, 0)] == RECORDS
    segments = got[("tidelog_partition_segments", topic, 0)]
    assert segments >= RECORDS * VALUE // 65536  # one per 64 KiB ledger
    assert got[("tidelog_offload_segments_total", "", -1)] >= segments
    assert got[("tidelog_broker_offload_backlog_ledgers", "", -1)] == 0
    assert got[("tidelog_offload_bytes_total", "", -1)] >= got[("tidelog_partition_tiered_bytes", topic, 0)]
    assert got[("tidelog_offload_backlog_bytes", topic, 0)] == 0
    assert got[("tidelog_broker_offload_backlog_bytes", "", -1)] == 0
    assert got[("tidelog_offload_lag_seconds", topic, 0)] == 0
    assert got[("tidelog_offload_failing", topic, 0)] == 0
    assert got[("tidelog_partition_log_start_offset", topic, 0)] == 0
    assert got[("tidelog_offload_enabled", "", -1)] == 1

    shown = status_cli(port, "--topic", topic)
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith(topic))
    assert (row[1], row[2], row[-3], row[-2], row[-1]) == ("0", "0", "0", str(RECORDS), "-"), shown.stdout
    as_json = json.loads(status_cli(port, "--json", "--topic", topic).stdout)
    assert as_json["partitions"][0]["segments"] == segments and as_json["totals"]["ledgers_waiting"] == 0

    # bad input on the admin port: each gets its status, the Kafka listener is unaffected
    assert raw_http(port, b"\x00\x01garbage\xff\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nX-Huge: " + b"h" * 100_000 + b"\r\n\r\n"
    assert raw_http(port, huge).startswith(b"HTTP/1.1 431 ")
    post = raw_http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert post.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in post
    assert raw_http(port, b"GET /admin HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    more = records(50)
    assert [o for _p, o in confluent_produce(broker.bootstrap, topic, more)] == list(range(RECORDS, RECORDS + 50))
    back = confluent_read(broker.bootstrap, topic, [0], start=0)
    assert [(g.offset, g.value) for g in back] == [(i, r.value) for i, r in enumerate(recs + more)]
    chunks = []
    while chunk := idle.recv(4096):  # the server times the idle client out (after 10 s)
        chunks.append(chunk)
    idle.close()
    assert b"".join(chunks).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert scrape(port)[("tidelog_partition_high_watermark", topic, 0)] == RECORDS + 50


def test_backlog_lag_and_error_visible_while_the_object_store_is_stopped(
    tmp_path: Path, finish: list[BrokerProcess]
) -> None:
    with MotoServer() as moto:
        bucket = "tidelog-status"
        moto.create_bucket(bucket)
        url = moto.s3_url(bucket, "stopped", connect_timeout="300ms", request_timeout="1s", max_retries="0",
                          retry_timeout="1s")  # fmt: skip
        pid = moto._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        port = free_port()
        broker = BrokerProcess(
            tmp_path / "data", configs=SMALL, extra_args=["--admin", f"127.0.0.1:{port}", "--object-store", url]
        )
        finish.append(broker.start())
        topic = f"stuck-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap, topic, 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            recs = records(RECORDS)
            assert len(confluent_produce(broker.bootstrap, topic, recs, **SMALL_BATCHES)) == RECORDS
            # every ledger closes (the last by age) and none can be offloaded: all of them wait, with the error
            stuck = wait_for(port, topic, "backlog of every ledger, lag and error", lambda m: (
                m[("tidelog_offload_backlog_bytes", topic, 0)] >= RECORDS * VALUE
                and m[("tidelog_offload_lag_seconds", topic, 0)] > 0
                and m[("tidelog_offload_failing", topic, 0)] == 1
            ))  # fmt: skip
            waiting = stuck[("tidelog_offload_backlog_ledgers", topic, 0)]
            assert waiting >= RECORDS * VALUE // 65536  # each 64 KiB ledger counts, not only the one being tried
            assert stuck[("tidelog_broker_offload_backlog_ledgers", "", -1)] >= waiting
            assert stuck[("tidelog_broker_offload_backlog_bytes", "", -1)] >= RECORDS * VALUE
            assert stuck[("tidelog_broker_offload_failing_partitions", "", -1)] >= 1
            assert stuck[("tidelog_partition_segments", topic, 0)] == 0
            assert stuck[("tidelog_offload_retries_total", "", -1)] >= 1

            shown = status_cli(port)
            assert shown.returncode == 0, shown.stderr
            row = next(line.split() for line in shown.stdout.splitlines() if line.startswith(topic))
            assert int(row[2]) >= waiting and row[-1] == "yes", shown.stdout
            assert float(row[5].rstrip("s")) > 0  # OLDEST
            error = next(line for line in shown.stdout.splitlines() if line.startswith(f"  {topic}/0: "))
            assert "ObjectStore" in error, shown.stdout
            later = scrape(port)
            assert later[("tidelog_offload_lag_seconds", topic, 0)] > stuck[("tidelog_offload_lag_seconds", topic, 0)]
        finally:
            os.kill(pid, signal.SIGCONT)

        drained = wait_for(port, topic, "backlog drained after the store resumed", lambda m: (
            m[("tidelog_offload_backlog_ledgers", topic, 0)] == 0
            and m[("tidelog_offload_failing", topic, 0)] == 0
            and m[("tidelog_partition_segments", topic, 0)] > 0
        ))  # fmt: skip
        assert drained[("tidelog_offload_backlog_bytes", topic, 0)] == 0
        assert drained[("tidelog_offload_lag_seconds", topic, 0)] == 0
        assert drained[("tidelog_partition_tiered_bytes", topic, 0)] >= RECORDS * VALUE
        assert drained[("tidelog_offload_segments_total", "", -1)] >= drained[("tidelog_partition_segments", topic, 0)]
        shown = status_cli(port, "--topic", topic)
        assert shown.returncode == 0 and "last offload errors" not in shown.stdout, shown.stdout
        back = confluent_read(broker.bootstrap, topic, [0], start=0)
        assert [g.value for g in back] == [r.value for r in recs]
        broker.stop()
        gone = status_cli(port)
        assert gone.returncode == 1 and "cannot reach the broker's admin endpoint" in gone.stderr
