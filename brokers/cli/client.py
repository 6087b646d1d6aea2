"""A small asyncio Kafka client for the CLI, benchmarks and tests (its admin operations: brokers/group_admin.py).

It speaks the wire protocol with kio's message classes: one :class:`Connection` per broker negotiates
versions with ApiVersions and pipelines requests, matching responses by correlation id; a
:class:`KafkaClient` bootstraps from ``host:port`` addresses, keeps the broker list from Metadata, and
routes group requests to the group's coordinator (FindCoordinator, retried while it moves or loads).
Framing is ``brokers/codec/frame.py``'s decoder; everything that touches a socket lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

from kio.index import load_payload_module, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.index import api_key_map
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from brokers.codec.frame import FrameDecoder, FrameError
from brokers.config import ConfigError, parse_hostport
from brokers.handlers.base import make
from brokers.handlers.base import ms as ms_delta

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
SOFTWARE_NAME = "tidelog-client"
SOFTWARE_VERSION = "0.1.0"
API_VERSIONS, METADATA, FIND_COORDINATOR, LIST_OFFSETS = 18, 3, 10, 2
ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS = 45, 46
GROUP_KEY, TRANSACTION_KEY = 0, 1
COORDINATOR_MOVED = frozenset(
    {ErrorCode.not_coordinator, ErrorCode.coordinator_not_available, ErrorCode.coordinator_load_in_progress}
)
_SIZE = struct.Struct(">i")
_HEAD = struct.Struct(">ih")  # response: correlation id, then (ApiVersions) the body's error code


class ClientError(Exception):
    """A request could not be answered: the broker is unreachable, too old, or kept failing."""


class BrokerUnreachable(ClientError):
    """No TCP connection to the broker (or it closed the connection)."""


class RequestTimeout(ClientError):
    """No response within the timeout."""


class UnsupportedVersion(ClientError):
    """The broker supports none of the versions of an API this client can speak."""


class KafkaError(ClientError):
    """The broker answered with an error code the caller cannot carry on from."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Node:
    """A broker as Metadata or FindCoordinator names it."""

    node_id: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (id: {self.node_id})"


def api_name(api_key: int) -> str:
    """Kafka's name of an API, e.g. ListGroups."""
    name = api_key_map.get(api_key)
    return "".join(w.capitalize() for w in name.split("_")) if name else f"API {api_key}"


def error_name(code: ErrorCode) -> str:
    """Kafka's spelling of an error code, e.g. NON_EMPTY_GROUP."""
    return code.name.upper()


@cache
def request_module(api_key: int, version: int) -> ModuleType:
    """kio's module of request classes for one API version."""
    return load_payload_module(api_key, version, EntityType.request)


def encode_request(request: Any, correlation_id: int, client_id: str | None) -> bytes:
    """A complete request frame (size prefix, header, body) for a kio request instance."""
    header_cls = request.__header_schema__
    header = make(
        header_cls, request_api_key=request.__api_key__, request_api_version=request.__version__,
        correlation_id=correlation_id, client_id=client_id,
    )
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    entity_writer(header_cls)(buf, header)
    entity_writer(type(request))(buf, request)
    data = buf.getbuffer()
    _SIZE.pack_into(data, 0, len(data) - 4)
    return bytes(data)


def decode_response(frame: bytes, api_key: int, version: int) -> tuple[int, Any]:
    """(correlation id, kio response) from a response frame without its size prefix.

    An ApiVersions answer of UNSUPPORTED_VERSION comes in v0's format whatever was asked (KIP-511).
    """
    if len(frame) < 4:
        raise FrameError(f"response of {len(frame)} bytes has no header")
    (correlation_id,) = _SIZE.unpack_from(frame, 0)
    if api_key == API_VERSIONS and len(frame) >= _HEAD.size:
        if _HEAD.unpack_from(frame, 0)[1] == ErrorCode.unsupported_version.value:
            try:
                return correlation_id, _decode_body(frame, API_VERSIONS, 0)
            except Exception:  # librdkafka's mock cluster sends neither v0 nor the asked version: just retry at v0
                return correlation_id, _VersionsRefused(ErrorCode.unsupported_version, ())
    return correlation_id, _decode_body(frame, api_key, version)


@dataclass(frozen=True, slots=True)
class _VersionsRefused:
    """An ApiVersions refusal whose body could not be read; the client falls back to ApiVersions v0."""

    error_code: ErrorCode
    api_keys: tuple[Any, ...]


def _decode_body(frame: bytes, api_key: int, version: int) -> Any:
    cls = load_response_schema(api_key, version)
    _, used = entity_reader(cls.__header_schema__)(frame, 0)
    body, _ = entity_reader(cls)(frame, used)
    return body


class Connection:
    """One TCP connection to a broker: negotiated API versions and pipelined, correlated requests."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, client_id: str, timeout: float
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.timeout = timeout
        self.versions: dict[int, tuple[int, int]] = {}
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._pending: dict[int, tuple[asyncio.Future[Any], int, int]] = {}
        self._closed: ClientError | None = None
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(
        cls, host: str, port: int, *, client_id: str = SOFTWARE_NAME, request_timeout: float = DEFAULT_TIMEOUT
    ) -> Connection:
        """Connect and negotiate API versions; raises BrokerUnreachable, RequestTimeout or UnsupportedVersion.

        ``request_timeout`` bounds the connect and, by default, every request on the connection."""
        address = f"{host}:{port}"
        try:
            async with asyncio.timeout(request_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise BrokerUnreachable(f"cannot connect to {address}: timed out after {request_timeout:g}s") from None
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise BrokerUnreachable(f"cannot connect to {address}: {reason}") from None
        conn = cls(reader, writer, address, client_id, request_timeout)
        try:
            await conn._negotiate()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _negotiate(self) -> None:
        version = 3  # the newest kio message; v4 only changes what a broker may answer
        for _ in range(2):
            mod = request_module(API_VERSIONS, version)
            resp = await self.send(
                make(mod.ApiVersionsRequest, client_software_name=SOFTWARE_NAME,
                     client_software_version=SOFTWARE_VERSION)
            )
            ranges = {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in resp.api_keys}
            if resp.error_code == ErrorCode.none:
                self.versions = ranges
                return
            if resp.error_code != ErrorCode.unsupported_version:
                raise KafkaError(
                    resp.error_code, f"ApiVersions to {self.address} failed: {error_name(resp.error_code)}"
                )
            version = min(version, ranges[API_VERSIONS][1]) if API_VERSIONS in ranges else 0
        raise UnsupportedVersion(f"{self.address} accepts no ApiVersions version this client speaks")

    def version(self, api_key: int, lo: int, hi: int) -> int:
        """The newest version of an API in ``lo..hi`` that the broker supports."""
        have = self.versions.get(api_key)
        if have is None or have[1] < lo or have[0] > hi:
            offered = "none" if have is None else f"v{have[0]}-v{have[1]}"
            raise UnsupportedVersion(
                f"{self.address} does not support {api_name(api_key)} v{lo}-v{hi} (it offers {offered})"
            )
        return min(hi, have[1])

    def supports(self, api_key: int, lo: int = 0) -> bool:
        have = self.versions.get(api_key)
        return have is not None and have[1] >= lo

    def module(self, api_key: int, lo: int, hi: int) -> ModuleType:
        """kio's request module at the version :meth:`version` picks."""
        return request_module(api_key, self.version(api_key, lo, hi))

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def send(self, request: Any, request_timeout: float | None = None) -> Any:
        """Send a kio request and wait for its response (requests may be pipelined)."""
        wait = self.timeout if request_timeout is None else request_timeout
        if self._closed is not None:
            raise self._closed
        correlation_id = self._next_id
        self._next_id = (self._next_id + 1) & 0x7FFFFFFF
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = (fut, int(request.__api_key__), int(request.__version__))
        try:
            self._writer.write(encode_request(request, correlation_id, self.client_id))
            async with asyncio.timeout(wait):
                await self._writer.drain()
                return await fut
        except TimeoutError:
            raise RequestTimeout(
                f"no response from {self.address} to {api_name(request.__api_key__)} within {wait:g}s"
            ) from None
        except (ConnectionError, OSError) as e:
            self._fail(BrokerUnreachable(f"connection to {self.address} lost: {e}"))
            raise self._closed or BrokerUnreachable(str(e)) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(MAX_RESPONSE_BYTES)
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise BrokerUnreachable(f"{self.address} closed the connection")
                for frame in decoder.feed(data):
                    self._deliver(frame)
        except ClientError as e:
            self._fail(e)
        except (ConnectionError, OSError) as e:
            self._fail(BrokerUnreachable(f"connection to {self.address} lost: {e}"))
        except Exception as e:  # an undecodable response: nothing more on this connection can be trusted
            self._fail(ClientError(f"bad response from {self.address}: {e!r}"))
            self._writer.close()

    def _deliver(self, frame: bytes) -> None:
        (correlation_id,) = _SIZE.unpack_from(frame, 0) if len(frame) >= 4 else (-1,)
        entry = self._pending.get(correlation_id)
        if entry is None:
            return  # its caller gave up (timeout)
        fut, api_key, version = entry
        _, body = decode_response(frame, api_key, version)
        if not fut.done():
            fut.set_result(body)

    def _fail(self, error: ClientError) -> None:
        if self._closed is None:
            self._closed = error
        for fut, _, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(self._closed)

    async def close(self) -> None:
        self._fail(BrokerUnreachable(f"connection to {self.address} closed"))
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def parse_bootstrap(value: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]``; raises ConfigError naming the bad part."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ConfigError("bootstrap address is empty")
    return [parse_hostport(p, "bootstrap address") for p in parts]


class KafkaClient:
    """Connections to a cluster: bootstrap, the broker list, partition leaders and group coordinators.

    ``timeout`` bounds every request and every retry loop (a hang guard, not a tuning knob).
    """

    def __init__(self, bootstrap: str, *, client_id: str = SOFTWARE_NAME, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.timeout = timeout
        self.nodes: dict[int, Node] = {}
        self._conns: dict[tuple[str, int], Connection] = {}
        self._connecting = asyncio.Lock()
        self._coordinators: dict[tuple[int, str], Node] = {}

    async def __aenter__(self) -> KafkaClient:
        await self.any_connection()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()

    async def connect(self, host: str, port: int) -> Connection:
        """The open connection to ``host:port``, made if needed (once, however many callers ask at once)."""
        conn = self._conns.get((host, port))
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting:
            conn = self._conns.get((host, port))
            if conn is None or conn.closed:
                conn = await Connection.open(host, port, client_id=self.client_id, request_timeout=self.timeout)
                self._conns[(host, port)] = conn
            return conn

    async def any_connection(self) -> Connection:
        """A connection to some broker: an open one, else the first bootstrap address that answers."""
        for conn in self._conns.values():
            if not conn.closed:
                return conn
        errors = []
        for host, port in self.bootstrap:
            try:
                return await self.connect(host, port)
            except BrokerUnreachable as e:
                errors.append(str(e))
        raise BrokerUnreachable("; ".join(errors))

    async def node(self, node_id: int) -> Connection:
        """A connection to the broker with this id (Metadata refreshed if it is not known yet)."""
        if node_id not in self.nodes:
            await self.metadata([])
        found = self.nodes.get(node_id)
        if found is None:
            raise ClientError(f"broker {node_id} is not in the cluster's metadata")
        return await self.connect(found.host, found.port)

    async def metadata(self, topics: Sequence[str] | None, *, auto_create: bool = False) -> Any:
        """A Metadata response (``None``: every topic; ``[]``: brokers only); refreshes the broker list.

        Topics are created by this request only with ``auto_create`` (as a producer's Metadata asks, where the
        cluster allows it: auto.create.topics.enable).
        """
        conn = await self.any_connection()
        mod = conn.module(METADATA, 4, 12)
        wanted = None
        if topics is not None:
            wanted = tuple(make(mod.MetadataRequestTopic, name=t, topic_id=None) for t in topics)
        resp = await conn.send(
            make(mod.MetadataRequest, topics=wanted, allow_auto_topic_creation=auto_create,
                 include_cluster_authorized_operations=False, include_topic_authorized_operations=False)
        )
        self.nodes = {int(b.node_id): Node(int(b.node_id), b.host, int(b.port)) for b in resp.brokers}
        return resp

    async def partitions(self, topics: Iterable[str]) -> dict[str, dict[int, int]]:
        """For each existing topic among ``topics``: partition -> leader id. Missing topics are left out."""
        names = sorted(set(topics))
        if not names:
            return {}
        resp = await self.metadata(names)
        out: dict[str, dict[int, int]] = {}
        for t in resp.topics:
            if t.error_code == ErrorCode.none:
                out[t.name] = {int(p.partition_index): int(p.leader_id) for p in t.partitions}
        return out

    # ------------------------------------------------------------------ coordinators

    async def find_coordinators(self, keys: Sequence[str], key_type: int = GROUP_KEY) -> dict[str, Node]:
        """The coordinator of each key (batched where the broker allows), retried while none is available."""
        todo = [k for k in dict.fromkeys(keys) if (key_type, k) not in self._coordinators]
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while todo:
            conn = await self.any_connection()
            version = conn.version(FIND_COORDINATOR, 1, 6)
            mod = request_module(FIND_COORDINATOR, version)
            answers: list[tuple[str, Any]] = []
            if version >= 4:
                resp = await conn.send(mod.FindCoordinatorRequest(key_type=key_type, coordinator_keys=tuple(todo)))
                answers = [(c.key, c) for c in resp.coordinators]
            else:
                for key in todo:
                    answers.append((key, await conn.send(mod.FindCoordinatorRequest(key=key, key_type=key_type))))
            retry: list[str] = []
            for key, a in answers:
                if a.error_code == ErrorCode.none:
                    self._coordinators[(key_type, key)] = Node(int(a.node_id), a.host, int(a.port))
                elif a.error_code in COORDINATOR_MOVED:
                    retry.append(key)
                else:
                    detail = f": {a.error_message}" if a.error_message else ""
                    raise KafkaError(a.error_code, f"no coordinator for {key!r}: {error_name(a.error_code)}{detail}")
            todo = retry
            if todo:
                if time.monotonic() + delay > deadline:
                    raise RequestTimeout(f"no coordinator available for {', '.join(todo)} within {self.timeout:g}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return {k: self._coordinators[(key_type, k)] for k in keys}

    def forget_coordinator(self, key: str, key_type: int = GROUP_KEY) -> None:
        self._coordinators.pop((key_type, key), None)

    async def coordinator(self, group_id: str) -> Connection:
        """A connection to the group's coordinator."""
        found = (await self.find_coordinators([group_id]))[group_id]
        return await self.connect(found.host, found.port)

    async def group_call(
        self, group_id: str, call: Callable[[Connection], Awaitable[tuple[T, ErrorCode]]]
    ) -> T:
        """Run ``call`` on the group's coordinator; it returns (result, error code). While the error says the
        coordinator moved or is loading, look it up again and retry (bounded by the client timeout)."""
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            lost: BrokerUnreachable | None = None
            try:
                result, code = await call(await self.coordinator(group_id))
            except BrokerUnreachable as e:  # the coordinator went away mid-call: it may be back, or moved
                lost, code = e, ErrorCode.coordinator_not_available
            if lost is None and code not in COORDINATOR_MOVED:
                return result
            self.forget_coordinator(group_id)
            if time.monotonic() + delay > deadline:
                if lost is not None:
                    raise lost
                raise KafkaError(
                    code, f"group {group_id!r}: coordinator still {error_name(code)} after {self.timeout:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ partition moves

    async def alter_partition_reassignments(
        self, moves: Mapping[tuple[str, int], int | None]
    ) -> dict[tuple[str, int], str | None]:
        """Request moves ((topic, partition) -> target node id; None cancels). Returns the error per
        partition (None: accepted) - the broker's error name and message."""
        conn = await self.any_connection()
        mod = conn.module(ALTER_PARTITION_REASSIGNMENTS, 0, 1)
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), target in sorted(moves.items(), key=lambda kv: kv[0]):
            replicas = None if target is None else (target,)
            by_topic.setdefault(topic, []).append(
                make(mod.ReassignablePartition, partition_index=partition, replicas=replicas)
            )
        resp = await conn.send(
            make(
                mod.AlterPartitionReassignmentsRequest, timeout=ms_delta(int(self.timeout * 1000)),
                allow_replication_factor_change=True,
                topics=tuple(make(mod.ReassignableTopic, name=t, partitions=tuple(ps)) for t, ps in by_topic.items()),
            )
        )
        if resp.error_code != ErrorCode.none:
            raise KafkaError(resp.error_code, f"AlterPartitionReassignments: {error_name(resp.error_code)}: "
                             f"{resp.error_message or ''}")
        out: dict[tuple[str, int], str | None] = {}
        for t in resp.responses:
            for p in t.partitions:
                err = None
                if p.error_code != ErrorCode.none:
                    err = error_name(p.error_code) + (f": {p.error_message}" if p.error_message else "")
                out[(t.name, int(p.partition_index))] = err
        return out

    async def list_partition_reassignments(self) -> dict[tuple[str, int], tuple[list[int], list[int], list[int]]]:
        """Moves in progress: (topic, partition) -> (replicas, adding, removing)."""
        conn = await self.any_connection()
        mod = conn.module(LIST_PARTITION_REASSIGNMENTS, 0, 0)
        resp = await conn.send(
            make(mod.ListPartitionReassignmentsRequest, timeout=ms_delta(int(self.timeout * 1000)), topics=None)
        )
        if resp.error_code != ErrorCode.none:
            raise KafkaError(resp.error_code, f"ListPartitionReassignments: {error_name(resp.error_code)}")
        return {
            (t.name, int(p.partition_index)): (
                [int(r) for r in p.replicas], [int(r) for r in p.adding_replicas], [int(r) for r in p.removing_replicas]
            )
            for t in resp.topics
            for p in t.partitions
        }
