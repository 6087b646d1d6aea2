"""brokers/cli/client.py over real 127.0.0.1 sockets: against a scripted Kafka server (for the protocol's corners:
version fallback, out-of-order answers, timeouts, lost connections, coordinator retries) and against the
real broker server (Broker + KafkaServer, in-memory ledgers)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from brokers.broker import Broker
from brokers.cli.client import (
    BrokerUnreachable,
    Connection,
    KafkaClient,
    KafkaError,
    Node,
    RequestTimeout,
    UnsupportedVersion,
    decode_response,
    encode_request,
    parse_bootstrap,
    request_module,
)
from brokers.codec.frame import RequestHead, encode_response, peek_request_head
from brokers.config import BrokerConfig, ConfigError
from brokers.group_admin import EARLIEST, LATEST, list_offsets
from brokers.handlers.base import make, response_module
from brokers.server import KafkaServer
from metadata.embedded import EmbeddedMetadataStore
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient
from tests.scripted_broker import FULL, NO_THROTTLE, api_versions_body, body_bytes, coordinator_answer
from tests.scripted_broker import scripted as scripted  # the fixture

pytestmark = pytest.mark.asyncio


# --------------------------------------------------------------------------- encoding


async def test_request_frames_decode_as_the_broker_decodes_them() -> None:
    for api_key, version in ((18, 0), (18, 3), (3, 1), (3, 12), (10, 3), (10, 6)):
        mod = request_module(api_key, version)
        cls = load_request_schema(api_key, version)
        request = make(cls, client_software_name="t", client_software_version="1", topics=None,
                       allow_auto_topic_creation=False, include_topic_authorized_operations=False,
                       key="g", key_type=0, coordinator_keys=("a", "b"))
        assert mod.__name__.endswith(f"v{version}.request")
        frame = encode_request(request, 77, "cli")
        (size,) = struct.unpack_from(">i", frame, 0)
        assert size == len(frame) - 4
        body = frame[4:]
        head = peek_request_head(body)
        assert (head.api_key, head.api_version, head.correlation_id) == (api_key, version, 77)
        header, used = entity_reader(cls.__header_schema__)(body, 0)
        decoded, end = entity_reader(cls)(body, used)
        assert decoded == request and used + end == len(body)  # the reader returns bytes consumed
        if hasattr(header, "client_id"):
            assert header.client_id == "cli"


async def test_responses_decode_with_either_header_version() -> None:
    for api_key, version in ((10, 3), (10, 4), (3, 8), (3, 9)):
        cls = load_response_schema(api_key, version)
        response = make(cls, throttle_time=NO_THROTTLE, error_code=ErrorCode.none, error_message=None, node_id=4,
                        host="h", port=9, coordinators=(), brokers=(), topics=(), cluster_id="c", controller_id=4)
        flexible = cls.__header_schema__.__flexible__
        frame = b"".join(encode_response(123, flexible, [body_bytes(response)]))[4:]
        assert decode_response(frame, api_key, version) == (123, response)


async def test_api_versions_unsupported_version_answer_is_read_as_v0() -> None:
    body = body_bytes(api_versions_body(0, {18: (0, 2)}, ErrorCode.unsupported_version))
    frame = b"".join(encode_response(5, False, [body]))[4:]
    corr, resp = decode_response(frame, 18, 3)
    assert corr == 5 and resp.error_code == ErrorCode.unsupported_version
    assert [(a.api_key, a.max_version) for a in resp.api_keys] == [(18, 2)]


async def test_bootstrap_parsing() -> None:
    assert parse_bootstrap("127.0.0.1:9092, 127.0.0.1:9093") == [("127.0.0.1", 9092), ("127.0.0.1", 9093)]
    for bad in ("", "host", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ConfigError):
            parse_bootstrap(bad)


# --------------------------------------------------------------------------- one connection


async def test_negotiation_falls_back_when_the_broker_is_older(scripted: Any) -> None:
    async def respond(head: RequestHead, request: Any) -> Any:
        assert head.api_key == 18 and head.api_version == 3
        return body_bytes(api_versions_body(0, {18: (0, 2), 3: (0, 9)}, ErrorCode.unsupported_version))

    b = await scripted(respond, ranges={18: (0, 2), 3: (0, 9)})
    conn = await Connection.open("127.0.0.1", b.port, request_timeout=10)
    try:
        assert [h.api_version for h, _ in b.requests(18)] == [3, 2]
        assert conn.versions == {18: (0, 2), 3: (0, 9)}
        assert conn.version(3, 1, 12) == 9
        assert conn.supports(3, 9) and not conn.supports(3, 10) and not conn.supports(16)
        with pytest.raises(UnsupportedVersion, match="ListGroups"):
            conn.version(16, 0, 5)
        with pytest.raises(UnsupportedVersion, match="offers v0-v9"):
            conn.version(3, 10, 12)
    finally:
        await conn.close()


async def test_pipelined_requests_are_matched_by_correlation_id(scripted: Any) -> None:
    release = asyncio.Event()

    async def respond(head: RequestHead, request: Any) -> Any:
        if request.key == "slow":
            await release.wait()
        elif request.key == "fast":
            release.set()  # answered first, while "slow" is still pending
        mod = response_module(10, head.api_version)
        return make(mod.FindCoordinatorResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                    error_message=None, node_id=len(request.key), host=request.key, port=1)

    b = await scripted(respond, ranges={**FULL, 10: (0, 3)})
    conn = await Connection.open("127.0.0.1", b.port, request_timeout=10)
    try:
        mod = request_module(10, 3)
        slow, fast = await asyncio.gather(
            conn.send(mod.FindCoordinatorRequest(key="slow", key_type=0)),
            conn.send(mod.FindCoordinatorRequest(key="fast", key_type=0)),
        )
        assert (slow.host, slow.node_id, fast.host, fast.node_id) == ("slow", 4, "fast", 4)
        corrs = [h.correlation_id for h, _ in b.requests(10)]
        assert len(set(corrs)) == 2
    finally:
        await conn.close()


async def test_a_timed_out_request_leaves_the_connection_usable(scripted: Any) -> None:
    answered = asyncio.Event()

    async def respond(head: RequestHead, request: Any) -> Any:
        if request.key == "never-in-time":
            await answered.wait()  # answered only after the client gave up: the late answer must be ignored
        mod = response_module(10, head.api_version)
        return make(mod.FindCoordinatorResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                    error_message=None, node_id=1, host=request.key, port=1)

    b = await scripted(respond, ranges={**FULL, 10: (0, 3)})
    conn = await Connection.open("127.0.0.1", b.port, request_timeout=10)
    try:
        mod = request_module(10, 3)
        with pytest.raises(RequestTimeout, match="FindCoordinator"):
            await conn.send(mod.FindCoordinatorRequest(key="never-in-time", key_type=0), request_timeout=0.2)
        answered.set()
        resp = await conn.send(mod.FindCoordinatorRequest(key="next", key_type=0))
        assert resp.host == "next" and not conn.closed
    finally:
        await conn.close()


async def test_a_lost_connection_fails_pending_requests_and_later_ones(scripted: Any) -> None:
    b = None

    async def respond(head: RequestHead, request: Any) -> Any:
        assert b is not None
        for w in b.writers:
            w.close()
        return None

    b = await scripted(respond)
    conn = await Connection.open("127.0.0.1", b.port, request_timeout=10)
    mod = request_module(10, 3)
    with pytest.raises(BrokerUnreachable, match="closed the connection"):
        await conn.send(mod.FindCoordinatorRequest(key="g", key_type=0))
    assert conn.closed
    with pytest.raises(BrokerUnreachable):
        await conn.send(mod.FindCoordinatorRequest(key="g", key_type=0))
    await conn.close()


async def test_unreachable_addresses_are_reported_together(scripted: Any) -> None:
    b = await scripted()
    port = b.port
    await b.stop()  # nothing listens there any more
    client = KafkaClient(f"127.0.0.1:{port},127.0.0.1:1", timeout=5)
    with pytest.raises(BrokerUnreachable, match=rf"127\.0\.0\.1:{port}: Connection refused.*127\.0\.0\.1:1"):
        await client.any_connection()
    await client.close()


# --------------------------------------------------------------------------- coordinators


async def test_coordinators_are_looked_up_in_one_batch_and_retried_while_loading(scripted: Any) -> None:
    calls = 0

    async def respond(head: RequestHead, request: Any) -> Any:
        nonlocal calls
        calls += 1
        loading = ErrorCode.coordinator_load_in_progress if calls == 1 else ErrorCode.none
        answers = [(k, loading if k == "b" else ErrorCode.none) for k in request.coordinator_keys]
        return coordinator_answer(head.api_version, answers, 9999)

    b = await scripted(respond)
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        found = await client.find_coordinators(["a", "b", "a"])
        assert found == {"a": Node(7, "127.0.0.1", 9999), "b": Node(7, "127.0.0.1", 9999)}
        assert [r.coordinator_keys for _, r in b.requests(10)] == [("a", "b"), ("b",)]
        await client.find_coordinators(["a", "b"])  # cached: no new request
        assert len(b.requests(10)) == 2


async def test_a_coordinator_lookup_error_is_raised(scripted: Any) -> None:
    async def respond(head: RequestHead, request: Any) -> Any:
        return coordinator_answer(head.api_version, [(k, ErrorCode.group_authorization_failed)
                                                     for k in request.coordinator_keys], 1)

    b = await scripted(respond)
    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        with pytest.raises(KafkaError, match="GROUP_AUTHORIZATION_FAILED") as info:
            await client.find_coordinators(["g"])
        assert info.value.code == ErrorCode.group_authorization_failed


async def test_group_call_looks_the_coordinator_up_again_when_it_moved(scripted: Any) -> None:
    async def respond(head: RequestHead, request: Any) -> Any:
        return coordinator_answer(head.api_version, [(k, ErrorCode.none) for k in request.coordinator_keys], b.port)

    b = await scripted(respond)
    codes = [ErrorCode.not_coordinator, ErrorCode.coordinator_load_in_progress, ErrorCode.none]
    used: list[str] = []

    async def call(conn: Connection) -> tuple[str, ErrorCode]:
        used.append(conn.address)
        return f"attempt {len(used)}", codes[len(used) - 1]

    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        assert await client.group_call("g", call) == "attempt 3"
    assert used == [f"127.0.0.1:{b.port}"] * 3
    assert len(b.requests(10)) == 3  # each NOT_COORDINATOR / LOAD_IN_PROGRESS forgot the cached coordinator


async def test_group_call_reconnects_when_the_coordinator_connection_drops(scripted: Any) -> None:
    dropped = 0

    async def respond(head: RequestHead, request: Any) -> Any:
        nonlocal dropped
        if head.api_key == 10:
            return coordinator_answer(head.api_version, [(k, ErrorCode.none) for k in request.coordinator_keys], b.port)
        if not dropped:  # the coordinator dies mid-request (and comes back for the next connection)
            dropped += 1
            for w in b.writers:
                w.close()
            return None
        mod = response_module(16, head.api_version)
        return make(mod.ListGroupsResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none, groups=())

    b = await scripted(respond)

    async def call(conn: Connection) -> tuple[int, ErrorCode]:
        resp = await conn.send(request_module(16, 4).ListGroupsRequest(states_filter=()))
        return len(resp.groups), resp.error_code

    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=10) as client:
        assert await client.group_call("g", call) == 0
    assert dropped == 1 and len(b.writers) == 2  # a second connection was made


async def test_group_call_gives_up_after_the_timeout(scripted: Any) -> None:
    async def respond(head: RequestHead, request: Any) -> Any:
        return coordinator_answer(head.api_version, [(k, ErrorCode.none) for k in request.coordinator_keys], b.port)

    b = await scripted(respond)

    async def call(conn: Connection) -> tuple[None, ErrorCode]:
        return None, ErrorCode.coordinator_load_in_progress

    async with KafkaClient(f"127.0.0.1:{b.port}", timeout=0.5) as client:
        with pytest.raises(KafkaError, match="COORDINATOR_LOAD_IN_PROGRESS"):
            await client.group_call("g", call)


# --------------------------------------------------------------------------- the real broker server


@pytest_asyncio.fixture
async def real_broker(tmp_path: Path) -> AsyncIterator[str]:
    with socket.socket() as s:  # a free port, so the broker advertises the address it listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = await EmbeddedMetadataStore.open(tmp_path / "metadata")
    broker = Broker(BrokerConfig(data_dir=str(tmp_path), port=port, num_partitions=2), store, MemoryLedgerClient())
    server = KafkaServer(broker)
    await broker.start()
    await server.start("127.0.0.1", port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop()
        await broker.stop()
        await store.close()


async def create_topic(conn: Connection, name: str, partitions: int) -> None:
    mod = conn.module(19, 2, 7)
    resp = await conn.send(make(
        mod.CreateTopicsRequest, timeout=datetime.timedelta(seconds=10), validate_only=False,
        topics=(mod.CreatableTopic(name=name, num_partitions=partitions, replication_factor=1, assignments=(),
                                   configs=()),),
    ))
    assert resp.topics[0].error_code == ErrorCode.none


async def produce(conn: Connection, topic: str, partition: int, records: int) -> int:
    mod = conn.module(0, 3, 9)
    resp = await conn.send(make(
        mod.ProduceRequest, transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10),
        topic_data=(make(mod.TopicProduceData, name=topic, partition_data=(
            make(mod.PartitionProduceData, index=partition, records=make_batch(records)),)),),
    ))
    part = resp.responses[0].partition_responses[0]
    assert part.error_code == ErrorCode.none
    return int(part.base_offset)


async def test_against_the_real_server_metadata_produce_and_list_offsets(real_broker: str) -> None:
    async with KafkaClient(real_broker, timeout=10) as client:
        assert await client.partitions(["absent"]) == {}  # Metadata never creates topics
        conn = await client.any_connection()
        await create_topic(conn, "t", 2)
        assert await produce(conn, "t", 1, 5) == 0
        assert await produce(conn, "t", 1, 3) == 5
        assert await client.partitions(["t", "absent"]) == {"t": {0: 0, 1: 0}}
        assert set(client.nodes) == {0}
        offsets = await list_offsets(client, {("t", 0): LATEST, ("t", 1): LATEST})
        assert offsets == {("t", 0): 0, ("t", 1): 8}
        assert await list_offsets(client, {("t", 1): EARLIEST}) == {("t", 1): 0}
        assert await list_offsets(client, {("t", 1): 1_000 + 1}) == {("t", 1): 1}  # first record at/after ts 1001
        assert await list_offsets(client, {("t", 1): 10**12}) == {("t", 1): -1}  # no such timestamp
        with pytest.raises(KafkaError, match="t:5 does not exist"):
            await list_offsets(client, {("t", 5): LATEST})
        coordinator = await client.find_coordinators(["g1", "g2"])
        assert coordinator["g1"].node_id == 0
        with pytest.raises(UnsupportedVersion, match="Metadata v13-v13"):
            conn.version(3, 13, 13)
        many = await asyncio.gather(*(client.metadata([]) for _ in range(50)))  # pipelined on one connection
        assert all(len(m.brokers) == 1 for m in many)
