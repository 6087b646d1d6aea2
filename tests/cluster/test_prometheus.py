"""Issue 12, must-show 3: a real Prometheus server (Debian's ``prometheus``) scrapes every broker and every bookie
of a dev cluster (``tidelog broker --admin``, ``tidelog bookie --admin``) under a little load, and its HTTP API
shows the series of docs/operations.md "## Metrics" with sane values: bytes and messages in per topic, request
counts and the four latency parts, purgatory waits, ledger adds on the brokers, journal fsyncs on the bookies,
object-store puts from offload, consumer-group lag (the coordinator reads the high watermarks of partitions it
does not own from their owners), partitions owned, process figures; and every broker is ready.

Slow (a dev cluster plus Prometheus: about a minute); tests/e2e/test_metrics_endpoint.py is the fast variant
(one broker, scraped directly).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from brokers.devcluster import DevCluster
from tests.e2e.broker_process import free_port
from tests.e2e.helpers import confluent_produce, confluent_read, create_topic, make_records
from tests.etcd_server import etcd_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)"),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (make system-deps)"),
]

TOPIC = "scraped"
GROUP = "scraped-readers"
PARTITIONS = 6
RECORDS = 3000
WAIT_S = 120.0  # a hang guard for each condition, not a timing claim
BROKER_ARGS = [  # small ledgers that close soon after producing stops: offload puts segments in the object store
    "--config", "ledger.rollover.bytes=65536", "--config", "ledger.rollover.ms=300",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("prom"), brokers=3, bookies=3, broker_args=BROKER_ARGS) as c:
        yield c


@pytest.fixture(scope="module")
def prometheus(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus server scraping the cluster every second; yields its HTTP address."""
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "tidelog-broker", "static_configs": [{"targets": [b.admin for b in cluster.brokers]}]},
            {"job_name": "tidelog-bookie",
             "static_configs": [{"targets": [f"127.0.0.1:{b.admin_port}" for b in cluster.bookies]}]},
        ],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    log = open(work / "prometheus.log", "wb")  # closed below
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address={address}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _until("Prometheus ready", lambda: _http_ok(address, "/-/ready"), proc, work)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def loaded(cluster: DevCluster) -> DevCluster:
    """The module's load: RECORDS records produced (acks=all) to a 6-partition topic, all read back, and a
    group's commit of half of each partition."""
    bootstrap = cluster.bootstrap
    create_topic(bootstrap, TOPIC, PARTITIONS)
    confluent_produce(bootstrap, TOPIC, make_records(RECORDS, PARTITIONS, seed=3, max_value=600), acks="all")
    read = confluent_read(bootstrap, TOPIC, range(PARTITIONS))
    assert len(read) == RECORDS
    ends = {p: max(g.offset for g in read if g.partition == p) + 1 for p in range(PARTITIONS)}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(TOPIC, p, end // 2) for p, end in ends.items()], asynchronous=False)
    finally:
        consumer.close()
    return cluster


def _http_ok(address: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _until(what: str, ok: Callable[[], bool], proc: subprocess.Popen[bytes], work: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ok():
        assert proc.poll() is None, f"prometheus exited: {(work / 'prometheus.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S}s"
        time.sleep(0.5)


def query(prometheus: str, promql: str) -> list[tuple[dict[str, str], float]]:
    """An instant query through Prometheus's HTTP API: [(labels, value)]."""
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


def scalar(prometheus: str, promql: str) -> float | None:
    got = query(prometheus, promql)
    return got[0][1] if got else None


CHECKS: list[tuple[str, Callable[[float], bool]]] = [
    ('count(up{job="tidelog-broker"} == 1)', lambda v: v == 3),
    ('count(up{job="tidelog-bookie"} == 1)', lambda v: v == 3),
    (f'sum(tidelog_topic_messages_in_total{{topic="{TOPIC}"}})', lambda v: v == RECORDS),
    (f'sum(tidelog_topic_bytes_in_total{{topic="{TOPIC}"}})', lambda v: v > RECORDS * 10),
    (f'sum(tidelog_topic_bytes_out_total{{topic="{TOPIC}"}})', lambda v: v > RECORDS * 10),
    ('sum(tidelog_requests_total{request="Produce"})', lambda v: v >= 1),
    ('sum(tidelog_requests_total{request="Metadata"})', lambda v: v >= 1),
    ('sum(tidelog_request_total_time_seconds_count{request="Produce"})', lambda v: v >= 1),
    ('sum(tidelog_request_queue_time_seconds_count{request="Produce"})', lambda v: v >= 1),
    ('sum(tidelog_request_local_time_seconds_count{request="Produce"})', lambda v: v >= 1),
    ('sum(tidelog_request_remote_time_seconds_sum{request="Produce"})', lambda v: v > 0),
    ('sum(tidelog_request_remote_time_seconds_count{request="Fetch"})', lambda v: v >= 1),
    ('sum(tidelog_request_total_time_seconds_sum{request="Produce"})'
     ' / sum(tidelog_request_total_time_seconds_count{request="Produce"})', lambda v: 0 < v < 10),
    ('sum(tidelog_purgatory_wait_seconds_count{operation="produce"})', lambda v: v >= 1),
    ('sum(tidelog_purgatory_wait_seconds_count{operation="fetch"})', lambda v: v >= 1),
    ("sum(tidelog_connections_accepted_total)", lambda v: v >= 1),
    ("count(tidelog_connections)", lambda v: v == 3),
    ('sum(tidelog_ledger_add_seconds_count{job="tidelog-broker"})', lambda v: v >= 1),
    ('sum(tidelog_ledger_add_bytes_total{job="tidelog-broker"})', lambda v: v > RECORDS * 10),
    ('sum(tidelog_bookie_journal_fsync_seconds_count{job="tidelog-bookie"})', lambda v: v >= 1),
    ('sum(tidelog_object_store_request_seconds_count{operation="put"})', lambda v: v >= 1),
    ('sum(tidelog_object_store_bytes_total{operation="put"})', lambda v: v > 0),
    ("count(tidelog_broker_offload_lag_seconds)", lambda v: v == 3),
    (f'sum(tidelog_consumer_group_committed_offset{{group="{GROUP}",topic="{TOPIC}"}})',
     lambda v: 0 < v < RECORDS),
    (f'count(tidelog_consumer_group_lag{{group="{GROUP}",topic="{TOPIC}"}})', lambda v: v == PARTITIONS),
    (f'sum(tidelog_consumer_group_lag{{group="{GROUP}"}}) + sum(tidelog_consumer_group_committed_offset'
     f'{{group="{GROUP}"}})', lambda v: v == RECORDS),
    ("count(tidelog_partitions_owned)", lambda v: v == 3),
    (f"sum(tidelog_partitions_owned) >= {PARTITIONS}", lambda v: v >= PARTITIONS),
    ("sum(tidelog_partitions_owned) - count(tidelog_partition_high_watermark)", lambda v: v == 0),  # loaded = owned
    (f"sum(tidelog_partition_takeover_seconds_count) >= {PARTITIONS}", lambda v: v >= PARTITIONS),
    ("count(tidelog_partition_moves_total)", lambda v: v == 3),
    ("count(tidelog_partition_failovers_total)", lambda v: v == 3),
    ('min(process_resident_memory_bytes{job=~"tidelog-.*"})', lambda v: v > 10 << 20),
    ('count(process_cpu_seconds_total{job=~"tidelog-.*"} > 0)', lambda v: v == 6),
    ('sum(tidelog_gc_pause_seconds_count{job="tidelog-broker"})', lambda v: v >= 0),
]  # fmt: skip


def test_prometheus_scrapes_the_series_with_sane_values(loaded: DevCluster, prometheus: str) -> None:
    deadline = time.monotonic() + WAIT_S
    pending = list(CHECKS)
    last: dict[str, float | None] = {}
    while pending and time.monotonic() < deadline:
        for promql, ok in list(pending):
            last[promql] = got = scalar(prometheus, promql)
            if got is not None and ok(got):
                pending.remove((promql, ok))
        if pending:
            time.sleep(1.0)
    assert not pending, "not as expected within the guard: " + "; ".join(f"{q} = {last[q]}" for q, _ in pending)
    print("\nPrometheus saw: " + "; ".join(f"{q} = {last[q]:g}" for q, _ in CHECKS if last[q] is not None))


def test_every_broker_is_ready_and_healthy(loaded: DevCluster) -> None:
    for b in loaded.brokers:
        assert _http_ok(b.admin, "/healthz")
        with urllib.request.urlopen(f"http://{b.admin}/readyz", timeout=10) as resp:
            assert (resp.status, json.loads(resp.read())) == (200, {"ready": True})
