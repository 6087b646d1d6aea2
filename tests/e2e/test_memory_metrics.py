"""Memory figures of a real ``tidelog run --admin`` process (issue 15): ``tidelog_partition_memory_bytes`` per
owned partition and ``tidelog_broker_memory_bytes{component}``.

The broker runs with a 1 MiB tail cache per partition and 1.5 MiB for all partitions together, so the bounds
are reached with little data. The figures must be non-zero once a partition holds data, grow with the data up
to the cache bound (plus one entry and producer state), agree with the component sums, shrink for the
partition with the oldest data when another one fills the broker-wide budget, and go away when the topic is
deleted. Nothing here reads
the process's heap or RSS (those depend on the whole process, not on what the test did).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from .broker_process import BrokerProcess, free_port
from .helpers import create_topic

CACHE = 1024 * 1024
TOTAL = 1536 * 1024
TOPIC = "memory-a"
OTHER = "memory-b"
VALUE = 1000


def scrape(admin: str) -> tuple[dict[tuple[str, int], float], dict[str, float]]:
    """(topic, partition) -> tidelog_partition_memory_bytes, and component -> tidelog_broker_memory_bytes."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    parts: dict[tuple[str, int], float] = {}
    components: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tidelog_partition_memory_bytes":
                parts[(s.labels["topic"], int(s.labels["partition"]))] = s.value
            elif s.name == "tidelog_broker_memory_bytes":
                components[s.labels["component"]] = s.value
    return parts, components


def produce(bootstrap: str, topic: str, partition: int, count: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    payload = os.urandom(VALUE)
    for _ in range(count):
        while True:
            try:
                p.produce(topic, payload, partition=partition)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, str]]:
    admin = f"127.0.0.1:{free_port()}"
    configs = [f"tail.cache.bytes.per.partition={CACHE}", f"tail.cache.total.bytes={TOTAL}"]
    args = ["--admin", admin] + [arg for kv in configs for arg in ("--config", kv)]
    proc = BrokerProcess(tmp_path_factory.mktemp("memory") / "data", extra_args=args).start()
    try:
        create_topic(proc.bootstrap, TOPIC, 2)
        create_topic(proc.bootstrap, OTHER, 1)
        yield proc, admin
    finally:
        proc.close()


def test_partition_memory_grows_to_the_cache_bound_and_goes_on_delete(broker: tuple[BrokerProcess, str]) -> None:
    proc, admin = broker
    parts, _ = scrape(admin)
    assert parts.get((TOPIC, 0), 0) == 0  # not loaded yet (logs load on first use), or empty

    produce(proc.bootstrap, TOPIC, 0, 200)  # ~200 KB: under the cache bound, all of it cached
    parts, components = scrape(admin)
    small = parts[(TOPIC, 0)]
    assert 200 * VALUE <= small <= CACHE, small
    assert parts.get((TOPIC, 1), 0) == 0
    assert components["inflight"] == 0  # every entry acknowledged: none waits
    assert components["producer_state"] > 0  # the idempotent producer is remembered

    produce(proc.bootstrap, TOPIC, 0, 3000)  # ~3 MB: the cache keeps its bound
    parts, components = scrape(admin)
    big = parts[(TOPIC, 0)]
    assert small < big, (small, big)
    # the bound: the cache budget, plus at most one entry over it (a batch of at most batch.size, 1 MB) and the
    # producer state (an estimate of ~2 KB per producer, two tables)
    assert big <= CACHE + 1_000_000 + 16 * 1024, big
    assert components["tail_cache"] >= big - components["producer_state"]
    assert sum(parts.values()) == pytest.approx(
        components["tail_cache"] + components["inflight"] + components["producer_state"]
    )
    assert components["fetch_responses"] >= 0

    produce(proc.bootstrap, TOPIC, 1, 1000)  # ~1 MB more elsewhere: over the broker-wide budget
    parts, components = scrape(admin)
    assert parts[(TOPIC, 1)] >= 900 * VALUE, parts  # the newest data stays
    assert parts[(TOPIC, 0)] < big, parts  # partition 0's oldest entries made room
    assert components["tail_cache"] <= TOTAL + 1_000_000, components  # the budget, plus at most one entry

    produce(proc.bootstrap, OTHER, 0, 100)
    admin_client = AdminClient({"bootstrap.servers": proc.bootstrap})
    admin_client.delete_topics([TOPIC], operation_timeout=30)[TOPIC].result(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts, components = scrape(admin)
        if (TOPIC, 0) not in parts:
            break
        time.sleep(0.2)
    assert (TOPIC, 0) not in parts and (TOPIC, 1) not in parts, parts
    assert parts[(OTHER, 0)] >= 100 * VALUE  # the other topic keeps its figure
    assert components["tail_cache"] < big  # the deleted partition's cache is no longer counted
