"""The bookie TCP server and client on real sockets on 127.0.0.1 (in-process bookie): pipelining,
out-of-order answers, bad input, CRCs, reconnects, timeouts, registration in the metadata store."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie import wire
from storage.bookie.bookie import Bookie
from storage.bookie.registry import BookieAddress, BookieRegistration, BookieWatcher
from storage.bookie.server import BookieServer
from storage.bookie.tcp_client import TcpBookieClient
from storage.entry import BookieUnavailable, CorruptEntry, entry_crc
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger
from storage.ledger.client import QuorumLedgerClient

WAIT = 30.0


def data(ledger_id: int, entry_id: int, size: int = 300) -> bytes:
    head = f"({ledger_id}~{entry_id})".encode()
    return (head * (size // len(head) + 1))[:size]


class Served:
    """A bookie in this process, served on a real socket."""

    def __init__(self, bookie: Bookie, server: BookieServer) -> None:
        self.bookie = bookie
        self.server = server

    @property
    def port(self) -> int:
        return self.server.address[1]

    def client(self) -> TcpBookieClient:
        return TcpBookieClient(self.bookie.bookie_id, "127.0.0.1", self.port)


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    bookie = await Bookie.open(tmp_path / "bookie", bookie_id="b-1")
    server = BookieServer(bookie)
    await server.start("127.0.0.1", 0)
    try:
        yield Served(bookie, server)
    finally:
        await server.stop()
        await bookie.close()


class Raw:
    """A raw connection speaking frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = wire.ResponseDecoder()
        self.got: list[wire.Response] = []

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, request: wire.Request) -> None:
        self.writer.writelines(wire.encode_request(request))

    def send_bytes(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def receive(self, n: int = 1) -> list[wire.Response]:
        async with asyncio.timeout(WAIT):
            while len(self.got) < n:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed by the bookie")
                self.got.extend(self.decoder.feed(chunk))
        out, self.got = self.got[:n], self.got[n:]
        return out

    async def closed_by_peer(self) -> bool:
        async with asyncio.timeout(WAIT):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:
                pass
        return True

    def close(self) -> None:
        self.writer.close()


def add(rid: int, ledger_id: int, entry_id: int, payload: bytes, *, recovery: bool = False) -> wire.AddRequest:
    return wire.AddRequest(rid, ledger_id, entry_id, entry_id - 1, 0, entry_crc(payload), recovery, payload)


# --- the server -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_pipelined_adds_share_group_commits(served: Served) -> None:
    raw = await Raw.open(served.port)
    before = served.bookie.journal.stats().fsyncs
    for i in range(2000):
        raw.send(add(i + 1, 1, i, data(1, i)))
    answers = await raw.receive(2000)
    assert sorted(a.request_id for a in answers) == list(range(1, 2001))
    assert all(a.code is wire.Code.OK and a.kind is wire.Kind.ADD for a in answers)
    fsyncs = served.bookie.journal.stats().fsyncs - before
    assert fsyncs < 1000  # one connection, many entries per fsync
    assert [e.payload for e in await served.bookie.read_range(1, 0, 1999)] == [data(1, i) for i in range(2000)]
    raw.close()


@pytest.mark.asyncio
async def test_answers_come_back_as_requests_finish_not_in_order(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    await served.bookie.add_entry(1, 0, -1, b"zero")
    real = os.fdatasync
    blocked = threading.Event()
    release = threading.Event()

    def fdatasync(fd: int) -> None:
        blocked.set()
        release.wait(WAIT)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    raw = await Raw.open(served.port)
    raw.send(add(1, 1, 1, b"one"))  # held in its fsync
    assert await asyncio.to_thread(blocked.wait, WAIT)
    raw.send(wire.ReadRequest(2, 1, 0))
    raw.send(wire.ReadLacRequest(3, 1))
    first_two = await raw.receive(2)
    assert {a.request_id for a in first_two} == {2, 3}  # answered while the add is still not durable
    release.set()
    (last,) = await raw.receive(1)
    assert (last.request_id, last.code) == (1, wire.Code.OK)
    raw.close()


@pytest.mark.asyncio
async def test_a_bad_frame_closes_only_that_connection(served: Served) -> None:
    good, bad = await Raw.open(served.port), await Raw.open(served.port)
    good.send(add(1, 5, 0, b"before"))
    assert (await good.receive())[0].code is wire.Code.OK
    bad.send(add(1, 5, 1, b"also fine"))
    assert (await bad.receive())[0].code is wire.Code.OK
    bad.send_bytes(struct.pack(">II", 5, 1) + b"\xc1")  # a frame whose header is not msgpack
    assert await bad.closed_by_peer()
    oversized = await Raw.open(served.port)
    oversized.send_bytes(struct.pack(">I", wire.MAX_FRAME_SIZE + 1))
    assert await oversized.closed_by_peer()
    good.send(add(2, 5, 2, b"after"))
    assert (await good.receive())[0].code is wire.Code.OK
    good.send(wire.ReadRangeRequest(3, 5, 0, 2, 1 << 20))
    (answer,) = await good.receive()
    assert [bytes(e.payload) for e in answer.entries] == [b"before", b"also fine", b"after"]
    good.close()


@pytest.mark.asyncio
async def test_unusable_requests_are_answered_and_the_connection_kept(served: Served) -> None:
    raw = await Raw.open(served.port)
    head = msgpack.packb([9, wire.Kind.HEALTH, 1])  # a future protocol version
    raw.send_bytes(struct.pack(">II", 4 + len(head), len(head)) + head)
    raw.send(wire.AddRequest(2, 1, 0, -1, 0, entry_crc(b"right") ^ 1, False, b"right"))  # damaged in transit
    raw.send(wire.ReadRequest(3, 1, 0))
    head = msgpack.packb([wire.VERSION, wire.Kind.READ_RANGE, 4, 1, 5, 2, 100])
    raw.send_bytes(struct.pack(">II", 4 + len(head), len(head)) + head)
    raw.send(wire.HealthRequest(5))
    answers = {a.request_id: a for a in await raw.receive(5)}
    assert answers[1].code is wire.Code.UNSUPPORTED_VERSION
    assert answers[2].code is wire.Code.CORRUPT
    assert answers[3].code is wire.Code.NO_SUCH_ENTRY  # the damaged add stored nothing
    assert answers[4].code is wire.Code.BAD_REQUEST
    assert answers[5].code is wire.Code.OK and answers[5].health is not None
    assert answers[5].health["bookie_id"] == "b-1"
    raw.close()


@pytest.mark.asyncio
async def test_backpressure_limits_in_flight_requests_without_stalling(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    server = BookieServer(bookie, max_in_flight=3, max_in_flight_bytes=10_000)
    _, port = await server.start("127.0.0.1", 0)
    client = TcpBookieClient(bookie.bookie_id, "127.0.0.1", port)
    await asyncio.wait_for(
        asyncio.gather(
            *(client.add(1, i, i - 1, 0, data(1, i, 4000), entry_crc(data(1, i, 4000))) for i in range(300))
        ),
        WAIT,
    )
    assert len(await bookie.read_range(1, 0, 299)) == 300
    await client.close()
    await server.stop()
    await bookie.close()


# --- the client ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_client_maps_every_answer(served: Served) -> None:
    client = served.client()
    assert client.bookie_id == "b-1"
    await asyncio.gather(
        *(client.add(3, i, i - 1, 10 * (i + 1), data(3, i, 10), entry_crc(data(3, i, 10))) for i in range(50))
    )
    entry = await client.read(3, 7)
    assert (entry.entry_id, entry.ledger_length, entry.payload) == (7, 80, data(3, 7, 10))
    assert [e.entry_id for e in await client.read_range(3, 10, 60)] == list(range(10, 50))
    assert await client.read_lac(3) == 48
    assert await client.fence(3) == 48
    with pytest.raises(LedgerFenced):
        await client.add(3, 50, 49, 0, b"late", entry_crc(b"late"))
    await client.add(3, 50, 49, 0, b"recovery", entry_crc(b"recovery"), recovery=True)
    with pytest.raises(NoSuchEntry):
        await client.read(3, 51)
    with pytest.raises(NoSuchEntry):
        await client.read_range(3, 51, 60)
    health = await client.health()
    assert health.ok and health.bookie_id == "b-1" and health.entries == 51
    await client.delete_ledger(3)
    with pytest.raises(NoSuchLedger):
        await client.read(3, 0)
    assert client.connects == 1  # all of it over one connection
    await client.close()
    with pytest.raises(BookieUnavailable):
        await client.read_lac(3)


@pytest.mark.asyncio
async def test_corrupt_entries_are_never_returned(served: Served) -> None:
    client = served.client()
    for i in range(5):
        await client.add(1, i, i - 1, 0, data(1, i), entry_crc(data(1, i)))
    where = served.bookie.entry_location(1, 2)
    assert where is not None
    path, offset, size = where
    with open(path, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0x55]))
    with pytest.raises(CorruptEntry):
        await client.read(1, 2)
    assert [e.entry_id for e in await client.read_range(1, 0, 4)] == [0, 1]  # stops before the damage
    assert (await client.read(1, 3)).payload == data(1, 3)
    await client.close()


async def _fake_bookie(handler: object) -> tuple[asyncio.Server, int]:
    """A server that answers requests with ``handler(request) -> Response | None`` (None: never answer)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = wire.RequestDecoder()
        while chunk := await reader.read(65536):
            for request in decoder.feed(chunk):
                assert not isinstance(request, wire.Response)
                answer = handler(request)  # type: ignore[operator]
                if answer is not None:
                    writer.writelines(wire.encode_response(answer))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.asyncio
async def test_the_client_checks_read_crcs_in_transit() -> None:
    def handler(request: wire.Request) -> wire.Response:
        good, bad = wire.WireEntry(0, 4, entry_crc(b"good"), b"good"), wire.WireEntry(1, 8, entry_crc(b"bad!"), b"bad?")
        if isinstance(request, wire.ReadRangeRequest):
            return wire.Response(request.request_id, wire.Kind.READ_RANGE, entries=(good, bad))
        return wire.Response(request.request_id, wire.Kind.READ, entries=(bad,))

    server, port = await _fake_bookie(handler)
    client = TcpBookieClient("fake", "127.0.0.1", port)
    with pytest.raises(CorruptEntry, match="CRC"):
        await client.read(1, 1)
    assert [e.payload for e in await client.read_range(1, 0, 1)] == [b"good"]  # the damaged one is left out
    await client.close()
    server.close()


@pytest.mark.asyncio
async def test_requests_time_out_as_bookie_unavailable() -> None:
    server, port = await _fake_bookie(lambda request: None)  # accepts, reads, never answers
    client = TcpBookieClient("mute", "127.0.0.1", port, request_timeout=0.3)
    with pytest.raises(BookieUnavailable, match="no answer"):
        await asyncio.wait_for(client.read_lac(1), WAIT)
    with pytest.raises(BookieUnavailable):
        await asyncio.wait_for(client.add(1, 0, -1, 1, b"x", entry_crc(b"x")), WAIT)
    await client.close()
    server.close()


@pytest.mark.asyncio
async def test_reconnects_after_a_drop_and_backs_off_while_down(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="r")
    server = BookieServer(bookie)
    _, port = await server.start("127.0.0.1", 0)
    client = TcpBookieClient("r", "127.0.0.1", port, initial_backoff=0.2, max_backoff=0.2)
    await client.add(1, 0, -1, 0, b"a", entry_crc(b"a"))
    server.drop_connections()  # the network drops the connection
    for _ in range(1000):  # the client notices the drop (no request in flight)
        if not client.connected:
            break
        await asyncio.sleep(0.005)
    await client.add(1, 1, 0, 0, b"b", entry_crc(b"b"))  # a new connection, transparently
    assert client.connects == 2

    await server.stop()  # the bookie goes away
    for _ in range(1000):
        if not client.connected:
            break
        await asyncio.sleep(0.005)
    with pytest.raises(BookieUnavailable, match="cannot connect"):
        await client.read(1, 0)
    with pytest.raises(BookieUnavailable, match="retrying"):  # within the backoff: fails at once
        await client.read(1, 0)
    server = BookieServer(bookie)
    await server.start("127.0.0.1", port)
    for _ in range(1000):  # bounded: the backoff is 0.2 s
        try:
            assert (await client.read(1, 1)).payload == b"b"
            break
        except BookieUnavailable:
            await asyncio.sleep(0.02)
    assert client.connects == 3
    await client.close()
    await server.stop()
    await bookie.close()


@pytest.mark.asyncio
async def test_requests_in_flight_fail_when_the_connection_drops(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync
    blocked = threading.Event()
    release = threading.Event()

    def fdatasync(fd: int) -> None:
        blocked.set()
        release.wait(WAIT)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    client = served.client()
    pending = asyncio.ensure_future(client.add(1, 0, -1, 0, b"x", entry_crc(b"x")))
    assert await asyncio.to_thread(blocked.wait, WAIT)
    served.server.drop_connections()
    with pytest.raises(BookieUnavailable):
        await asyncio.wait_for(pending, WAIT)
    release.set()
    await client.close()


# --- registration ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_registration_and_the_watcher_keep_the_live_set(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(None)
    keys = Keys("reg")
    ledgers = QuorumLedgerClient(store, keys, {})
    bookies = [await Bookie.open(tmp_path / f"b{i}", bookie_id=f"b{i}") for i in range(3)]
    servers = [BookieServer(b) for b in bookies]
    ports = [(await s.start("127.0.0.1", 0))[1] for s in servers]
    regs = [BookieRegistration(store, keys, BookieAddress(f"b{i}", "127.0.0.1", ports[i]), ttl=0.5) for i in range(3)]
    await regs[0].start()
    watcher = BookieWatcher(store, keys, ledgers)
    await watcher.start()
    assert ledgers.live_bookies == ("b0",)
    await regs[1].start()
    await regs[2].start()
    async with asyncio.timeout(WAIT):
        await watcher.wait_for(3)
    assert sorted(ledgers.live_bookies) == ["b0", "b1", "b2"]
    writer = await ledgers.create_ledger(3, 3, 2)
    assert await writer.append(b"over tcp") == 0

    await regs[1].stop()  # clean shutdown: the key vanishes at once
    async with asyncio.timeout(WAIT):
        while "b1" in ledgers.live_bookies:
            await asyncio.sleep(0.01)
    lease = regs[2]._lease
    assert lease is not None
    await store.expire_lease(lease.id)  # the lease is lost while the bookie lives: it registers again
    async with asyncio.timeout(WAIT):
        while regs[2].registrations < 2 or "b2" not in ledgers.live_bookies:
            await asyncio.sleep(0.01)
    assert sorted(watcher.bookies) == ["b0", "b2"]
    assert watcher.bookies["b2"].port == ports[2]

    await watcher.stop()
    assert ledgers.live_bookies == ()
    for reg in regs:
        await reg.stop()
    for server in servers:
        await server.stop()
    for bookie in bookies:
        await bookie.close()
    await store.close()


def test_a_disk_error_crosses_the_wire_as_a_disk_error() -> None:
    """A bookie whose disk is full answers DISK, and the client raises a DiskError again, so the broker can
    answer KAFKA_STORAGE_ERROR rather than NOT_ENOUGH_REPLICAS."""
    from storage.bookie.journal import BookieDiskError
    from storage.bookie.server import error_code
    from storage.bookie.tcp_client import wire_error
    from storage.ledger.api import DiskError

    assert error_code(BookieDiskError("no space")) is wire.Code.DISK
    assert error_code(BookieUnavailable("closed")) is wire.Code.UNAVAILABLE
    assert isinstance(wire_error(wire.Code.DISK, "no space"), DiskError)
    assert not isinstance(wire_error(wire.Code.UNAVAILABLE, "closed"), DiskError)
