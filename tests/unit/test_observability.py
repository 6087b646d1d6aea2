"""brokers/observability/ and storage/metrics.py without a broker: API names and the unknown bucket, error codes
found at every depth of a kio response, the request latency split, the cluster ownership hooks, the
object-store decorator's bytes and errors, GC pause timing. Values are read from the process registry as
differences (other tests in the process count too)."""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace

import pytest
from kio.schema.errors import ErrorCode
from prometheus_client import REGISTRY

from brokers.handlers.base import NO_THROTTLE, make, response_module
from brokers.observability import cluster_metrics, process, requests, traffic
from brokers.observability.groups import GroupLag, GroupOffsetFigures
from storage.metrics import object_store_request
from storage.objectstore.api import ObjectStoreUnavailable


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_api_names_are_kafkas_and_unknown_keys_share_one_bucket() -> None:
    assert (requests.api_name(0), requests.api_name(1), requests.api_name(2)) == ("Produce", "Fetch", "ListOffsets")
    assert requests.api_name(68) == "ConsumerGroupHeartbeat"
    assert requests.api_name(9999) == requests.api_name(-1) == requests.UNKNOWN_API


def test_error_codes_are_counted_at_every_level_of_a_response() -> None:
    mod = response_module(0, 9)
    parts = (
        make(mod.PartitionProduceResponse, index=0, error_code=ErrorCode.none, base_offset=0, log_append_time=None,
             log_start_offset=0, record_errors=(), error_message=None),
        make(mod.PartitionProduceResponse, index=1, error_code=ErrorCode.not_leader_or_follower, base_offset=-1,
             log_append_time=None, log_start_offset=-1, record_errors=(), error_message=None),
        make(mod.PartitionProduceResponse, index=2, error_code=ErrorCode.not_leader_or_follower, base_offset=-1,
             log_append_time=None, log_start_offset=-1, record_errors=(), error_message=None),
    )  # fmt: skip
    topic = make(mod.TopicProduceResponse, name="t", partition_responses=parts)
    response = make(mod.ProduceResponse, responses=(topic,), throttle_time=NO_THROTTLE)
    before = sample("tidelog_request_errors_total", request="Produce", error="NOT_LEADER_OR_FOLLOWER")
    requests.count_errors(0, response)
    after = sample("tidelog_request_errors_total", request="Produce", error="NOT_LEADER_OR_FOLLOWER")
    assert after - before == 2
    assert sample("tidelog_request_errors_total", request="Produce", error="NONE") == 0  # NONE is not counted

    fetch = response_module(1, 12)
    top = make(fetch.FetchResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.fetch_session_id_not_found,
               session_id=0, responses=(), node_endpoints=())  # fmt: skip
    before = sample("tidelog_request_errors_total", request="Fetch", error="FETCH_SESSION_ID_NOT_FOUND")
    requests.count_errors(1, top)
    assert sample("tidelog_request_errors_total", request="Fetch", error="FETCH_SESSION_ID_NOT_FOUND") == before + 1


@pytest.mark.asyncio
async def test_a_request_is_split_into_queue_local_and_remote_time() -> None:
    name = "ListGroups"  # an API no other unit test here times
    count = {part: sample(f"tidelog_request_{part}_time_seconds_count", request=name)
             for part in ("total", "queue", "local", "remote")}  # fmt: skip
    remote_sum = sample("tidelog_request_remote_time_seconds_sum", request=name)
    timing = requests.RequestTiming()
    await asyncio.sleep(0.02)  # queued
    timing.start(16)
    token = requests.current.set(timing)
    try:
        with traffic.purgatory("fetch"):
            await asyncio.sleep(0.05)  # waited on others
    finally:
        requests.current.reset(token)
    timing.end()
    timing.written(16)
    for part, before in count.items():
        assert sample(f"tidelog_request_{part}_time_seconds_count", request=name) == before + 1, part
    assert sample("tidelog_request_remote_time_seconds_sum", request=name) - remote_sum >= 0.04
    assert timing.began - timing.arrived >= 0.015
    assert timing.remote >= 0.04 and timing.ended - timing.began >= timing.remote


def test_a_request_that_never_ran_is_not_observed() -> None:
    before = sample("tidelog_request_total_time_seconds_count", request="DeleteGroups")
    timing = requests.RequestTiming()
    timing.written(42)  # closed before its handler started
    assert sample("tidelog_request_total_time_seconds_count", request="DeleteGroups") == before


def test_ownership_hooks_count_moves_failovers_and_owned_partitions() -> None:
    owned, moves, failovers = (sample("tidelog_partitions_owned"), sample("tidelog_partition_moves_total"),
                               sample("tidelog_partition_failovers_total"))  # fmt: skip
    takeovers = sample("tidelog_partition_takeover_seconds_count", reason="failover")
    cluster_metrics.partition_taken("obs-t", 0, "move", 0.2)
    cluster_metrics.partition_taken("obs-t", 1, "failover", 3.5)
    cluster_metrics.partition_taken("obs-t", 1, "failover", 1.0)  # taken again: owned once, counted twice
    cluster_metrics.partition_taken("obs-t", 2, "start", 0.01)
    assert sample("tidelog_partitions_owned") == owned + 3
    assert sample("tidelog_partition_moves_total") == moves + 1
    assert sample("tidelog_partition_failovers_total") == failovers + 2
    assert sample("tidelog_partition_takeover_seconds_count", reason="failover") == takeovers + 2
    cluster_metrics.partition_released("obs-t", 0)
    cluster_metrics.partition_released("obs-t", 0)  # releasing one not owned: no-op
    cluster_metrics.partition_taken("obs-t", 5, "bogus", 0.0)  # type: ignore[arg-type]  # bucketed as start
    assert sample("tidelog_partition_takeover_seconds_count", reason="bogus") == 0
    for p in (1, 2, 5):
        cluster_metrics.partition_released("obs-t", p)
    assert sample("tidelog_partitions_owned") == owned


class _Store:
    @object_store_request("get")
    async def get(self, key: str) -> bytes:
        if key == "down":
            raise ObjectStoreUnavailable("refused")
        return b"x" * 100

    @object_store_request("put")
    async def put(self, key: str, data: bytes | memoryview, if_absent: bool = True) -> None:
        return None


@pytest.mark.asyncio
async def test_object_store_requests_are_timed_and_their_bytes_and_errors_counted() -> None:
    store = _Store()
    got_bytes, put_bytes = sample("tidelog_object_store_bytes_total", operation="get"), sample(
        "tidelog_object_store_bytes_total", operation="put")  # fmt: skip
    errors = sample("tidelog_object_store_errors_total", operation="get", error="ObjectStoreUnavailable")
    gets = sample("tidelog_object_store_request_seconds_count", operation="get")
    assert await store.get("k") == b"x" * 100
    await store.put("k", memoryview(b"y" * 30))
    with pytest.raises(ObjectStoreUnavailable):
        await store.get("down")
    assert sample("tidelog_object_store_bytes_total", operation="get") == got_bytes + 100
    assert sample("tidelog_object_store_bytes_total", operation="put") == put_bytes + 30
    assert sample("tidelog_object_store_errors_total", operation="get", error="ObjectStoreUnavailable") == errors + 1
    assert sample("tidelog_object_store_request_seconds_count", operation="get") == gets + 2  # failures timed too


def test_gc_pauses_are_timed_per_generation() -> None:
    process.install()
    process.install()  # idempotent
    assert gc.callbacks.count(process._on_gc) == 1
    before = sample("tidelog_gc_pause_seconds_count", generation="2")
    gc.collect()
    time.sleep(0)
    assert sample("tidelog_gc_pause_seconds_count", generation="2") == before + 1


class _Log:
    def __init__(self, topic_id: str, partition: int, high_watermark: int) -> None:
        self.topic_id, self.partition, self.high_watermark = topic_id, partition, high_watermark


class _Topic:
    def __init__(self, name: str, topic_id: str, partitions: int) -> None:
        self.name, self.topic_id, self.partitions = name, topic_id, partitions


class _Broker:
    """What GroupLag reads of a broker: loaded logs, topics, the coordinator's shards."""

    def __init__(self, *, embedded: bool) -> None:
        from brokers.groups.shard import CommittedOffset

        topic = _Topic("orders", "id-1", 2)
        self.topics = SimpleNamespace(by_id={"id-1": topic}.get, get={"orders": topic}.get)
        self.logs = SimpleNamespace(all=lambda: [_Log("id-1", 0, 500)], take_on_first_use=embedded)
        offsets = {"billing": {("orders", 0): CommittedOffset(420, -1, "", 0),
                               ("orders", 1): CommittedOffset(7, -1, "", 0)}}  # fmt: skip
        shard = SimpleNamespace(active=True, offsets=offsets)
        self.groups = SimpleNamespace(shards={0: shard})
        self.config = SimpleNamespace(advertised=("127.0.0.1", 1))  # nothing listens: a refresh would fail


@pytest.mark.asyncio
async def test_group_lag_uses_local_watermarks_and_never_asks_an_embedded_broker() -> None:
    lag = GroupLag(_Broker(embedded=True))  # type: ignore[arg-type]
    got = lag.figures()
    assert got == (
        GroupOffsetFigures("billing", "orders", 0, committed=420, high_watermark=500),
        GroupOffsetFigures("billing", "orders", 1, committed=7, high_watermark=None),  # not loaded: no lag
    )
    assert lag._task is None  # embedded: no self-query that would load the idle partition
    cluster = GroupLag(_Broker(embedded=False))  # type: ignore[arg-type]
    cluster.figures()
    assert cluster._task is not None  # a cluster broker reads orders/1's watermark from its owner
    await cluster.close()  # the refresh (to a closed port) stops without raising
