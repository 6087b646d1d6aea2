"""/metrics, /healthz and /readyz of a real ``tidelog run --admin`` process under a little load (issue 12: metrics
people already chart), and the Grafana dashboard: every metric name its panels' PromQL uses is one this broker
(or, for the bookie-only journal series, a bookie) exports — the name list is scraped, not written down here.

One broker for the module; its traffic: a 3-partition topic produced with confluent-kafka (acks=all), read back,
half of it committed by a consumer group, and one produce to a partition that does not exist (an error code).
The Prometheus server scraping a whole dev cluster is tests/cluster/test_prometheus.py (slow).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from . import kafka_wire as wire
from .broker_process import BrokerProcess, free_port
from .helpers import confluent_produce, confluent_read, create_topic, make_records

DASHBOARD = Path(__file__).resolve().parents[2] / "compose" / "grafana" / "dashboards" / "tidelog.json"
TOPIC = "metered"
GROUP = "metered-readers"
RECORDS = 300
UNKNOWN_TOPIC_OR_PARTITION = 3
PARTITIONS = 3
BOOKIE_ONLY = frozenset({"tidelog_bookie_journal_fsync_seconds"})
"""Series a bookie process exports (its journal); an embedded broker runs its bookies in-process, so they are
there too — but the dashboard check must not depend on that, hence listed."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=30) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def samples(text: str) -> Samples:
    """(sample name, labels) -> value, with prometheus_client's own parser of the text format."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lb), v in got.items() if n == name and want <= lb)


def status(admin: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, str]]:
    """A broker with --admin after the module's traffic; yields (broker, admin HOST:PORT)."""
    admin = f"127.0.0.1:{free_port()}"
    broker = BrokerProcess(tmp_path_factory.mktemp("metrics") / "data", extra_args=["--admin", admin]).start()
    try:
        bootstrap = broker.bootstrap
        create_topic(bootstrap, TOPIC, PARTITIONS)
        confluent_produce(bootstrap, TOPIC, make_records(RECORDS, PARTITIONS, seed=12), acks="all")
        read = confluent_read(bootstrap, TOPIC, range(PARTITIONS))
        assert len(read) == RECORDS
        ends = {p: max(g.offset for g in read if g.partition == p) + 1 for p in range(PARTITIONS)}
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
        try:  # the group has read half of each partition
            consumer.commit(offsets=[TopicPartition(TOPIC, p, end // 2) for p, end in ends.items()],
                            asynchronous=False)  # fmt: skip
        finally:
            consumer.close()
        with wire.connect(bootstrap) as sock:  # a produce to a partition that does not exist: an error code
            batch = wire.record_batch([wire.Record(b"k", b"v")], int(time.time() * 1000))
            sock.sendall(wire.produce_request(9, TOPIC, 99, batch, correlation_id=1))
            assert wire.parse_produce_response(9, wire.recv_frame(sock)).error_code == UNKNOWN_TOPIC_OR_PARTITION
        yield broker, admin
    finally:
        broker.close()


def test_series_of_a_loaded_broker_have_sane_values(loaded: tuple[BrokerProcess, str]) -> None:
    _broker, admin = loaded
    content_type, text = scrape(admin)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(text)
    # traffic per topic
    assert value(got, "tidelog_topic_messages_in_total", topic=TOPIC) == RECORDS
    bytes_in = value(got, "tidelog_topic_bytes_in_total", topic=TOPIC)
    assert bytes_in > RECORDS  # batches with their headers
    assert value(got, "tidelog_topic_bytes_out_total", topic=TOPIC) >= bytes_in  # all of it read back once
    # requests: counted, timed in all four parts, produce waited on the bookies
    assert value(got, "tidelog_requests_total", request="Produce") >= 1
    for part in ("total", "queue", "local", "remote"):
        assert value(got, f"tidelog_request_{part}_time_seconds_count", request="Produce") >= 1, part
        assert value(got, f"tidelog_request_{part}_time_seconds_count", request="Fetch") >= 1, part
    assert value(got, "tidelog_request_remote_time_seconds_sum", request="Produce") > 0
    total = value(got, "tidelog_request_total_time_seconds_sum", request="Produce")
    assert total >= value(got, "tidelog_request_remote_time_seconds_sum", request="Produce")
    assert value(got, "tidelog_purgatory_wait_seconds_count", operation="produce") >= 1
    assert value(got, "tidelog_purgatory_size", operation="produce") == 0  # nothing waits now
    assert value(got, "tidelog_connections_accepted_total") >= 1
    # storage: ledger adds reached the ack quorum; the in-process bookies synced their journal
    assert value(got, "tidelog_ledger_add_seconds_count") >= 1
    assert value(got, "tidelog_ledger_add_bytes_total") >= bytes_in
    assert value(got, "tidelog_bookie_journal_fsync_seconds_count") >= 1
    # the consumer group: committed half, so lag is the other half
    committed = value(got, "tidelog_consumer_group_committed_offset", group=GROUP, topic=TOPIC)
    lag = value(got, "tidelog_consumer_group_lag", group=GROUP, topic=TOPIC)
    assert committed > 0 and lag > 0 and committed + lag == RECORDS
    # the process
    assert value(got, "process_resident_memory_bytes") > 10 << 20
    assert value(got, "process_cpu_seconds_total") > 0
    assert any(n == "tidelog_gc_pause_seconds_count" for n, _ in got)
    # snapshot series of the owned partitions (the offload collector)
    assert value(got, "tidelog_partition_high_watermark", topic=TOPIC) == RECORDS


def test_error_codes_are_counted_by_name(loaded: tuple[BrokerProcess, str]) -> None:
    got = samples(scrape(loaded[1])[1])
    assert value(got, "tidelog_request_errors_total", request="Produce", error="UNKNOWN_TOPIC_OR_PARTITION") == 1
    errors = {dict(lb)["error"] for (n, lb), _v in got.items() if n == "tidelog_request_errors_total"}
    assert all(re.fullmatch(r"[A-Z_]+", e) for e in errors), errors


def test_healthz_and_readyz(loaded: tuple[BrokerProcess, str]) -> None:
    admin = loaded[1]
    assert status(admin, "/healthz") == (200, "ok\n")
    code, body = status(admin, "/readyz")
    assert (code, json.loads(body)) == (200, {"ready": True})


# --- the Grafana dashboard -------------------------------------------------------------------------

PROMQL_WORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
})  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions (followed by "("), label
    names (inside {} or the lists of by/without/on/ignoring/group_*), keywords, durations or template
    variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legend)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    stack = list(board["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
    return out


def test_promql_names_are_extracted() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le, request) (rate(tidelog_request_total_time_seconds_bucket'
        '{request="Produce"}[$__rate_interval])))'
    ) == {"tidelog_request_total_time_seconds_bucket"}
    assert promql_metric_names("sum(increase(a_total[5m])) / on(instance) group_left(x) b > bool 0") == {"a_total", "b"}


def test_every_dashboard_query_names_an_exported_metric(loaded: tuple[BrokerProcess, str]) -> None:
    exported = {name for name, _labels in samples(scrape(loaded[1])[1])}
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    used: dict[str, str] = {}
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        used.update(dict.fromkeys(names, title))
    missing = {name: title for name, title in used.items() if name not in exported
               and name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") not in BOOKIE_ONLY}
    # series created on first use (a takeover, a move, an object-store error) may have no sample yet: their
    # metadata (HELP/TYPE) is exported all the same
    families = {f.name for f in text_string_to_metric_families(scrape(loaded[1])[1])}
    missing = {n: t for n, t in missing.items() if _family_of(n) not in families}
    assert not missing, f"dashboard panels use metrics the broker does not export: {missing}"


def _family_of(sample_name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name
