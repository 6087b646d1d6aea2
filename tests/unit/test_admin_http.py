"""brokers/admin_http.py over real sockets on 127.0.0.1, serving a constructed snapshot; and the CLI that
reads it (brokers/cli/offload.py). The broker process around it is tests/e2e/test_offload_status.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from brokers import cli
from brokers.admin_http import MAX_HEAD, AdminServer
from brokers.cli.offload import render
from brokers.metrics import BrokerFigures, PartitionFigures, offload_status

FIGURES = BrokerFigures(
    node_id=1, tiering=True, offload_enabled=True, held_bytes=2048, high_water_bytes=1 << 20,
    partitions=(
        PartitionFigures("orders", 0, high_watermark=900, ledgers=3, segments=2, tiered_bytes=5000, backlog_ledgers=2,
                         backlog_bytes=2048, lag_seconds=3.5, last_error="ObjectStoreUnavailable('s3\nrefused')"),
        PartitionFigures("__consumer_offsets", 0, high_watermark=4, ledgers=1),
    ),
)  # fmt: skip
HANG_GUARD = 10.0


class Source:
    """The figures the server serves; ``fail`` makes the next calls raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> BrokerFigures:
        self.calls += 1
        if self.fail:
            raise RuntimeError("figures unavailable")
        return FIGURES


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[int, Source]]:
    source = Source()
    server = AdminServer(source, head_timeout=0.3)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port, source
    finally:
        await server.stop()


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read the whole answer: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(HANG_GUARD):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.startswith("HTTP/1.1 ")
    assert int(headers["content-length"]) == len(body) or data.startswith(b"HEAD ")  # HEAD: GET's length
    return int(status_line.split()[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n".encode()


@pytest.mark.asyncio
async def test_metrics_and_offload_json(served: tuple[int, Source]) -> None:
    port, _ = served
    status, headers, body = await exchange(port, get("/metrics"))
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'tidelog_offload_backlog_ledgers{partition="0",topic="orders"} 2.0\n' in body.decode()
    assert "process_resident_memory_bytes " in body.decode()  # the process-wide registry comes first
    assert headers["connection"] == "close"
    status, headers, body = await exchange(port, get("/v1/offload"))
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == offload_status(FIGURES)
    status, _, body = await exchange(port, get("/v1/offload?topic=orders"))
    assert [p["topic"] for p in json.loads(body)["partitions"]] == ["orders"]
    status, headers, body = await exchange(port, get("/metrics", "HEAD"))
    assert (status, body) == (200, b"") and headers["content-type"].startswith("text/plain")
    assert int(headers["content-length"]) > 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),  # a TLS hello
        (b"GET\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"b" * (MAX_HEAD + 10) + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n", 431),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"DELETE /v1/offload HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1/offload?topic=a&topic=b HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/offload?unknown=1 HTTP/1.1\r\n\r\n", 400),
        (b"GET http://[::1/metrics HTTP/1.1\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_their_status_and_the_server_carries_on(
    served: tuple[int, Source], request_bytes: bytes, expected: int
) -> None:
    port, source = served
    status, headers, body = await exchange(port, request_bytes)
    assert status == expected, body
    assert body.startswith(str(expected).encode())
    if expected == 405:
        assert headers["allow"] == "GET, HEAD"
    if expected != 400 or b"topic" not in request_bytes:
        assert source.calls == 0  # refused before any figure was taken
    assert (await exchange(port, get("/metrics")))[0] == 200


@pytest.mark.asyncio
async def test_idle_and_slow_clients_time_out_without_holding_up_others(served: tuple[int, Source]) -> None:
    port, _ = served
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)  # sends nothing
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    await slow_writer.drain()
    assert (await exchange(port, get("/v1/offload")))[0] == 200  # served meanwhile
    for reader, writer in ((idle_reader, idle_writer), (slow_reader, slow_writer)):
        async with asyncio.timeout(HANG_GUARD):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


@pytest.mark.asyncio
async def test_a_client_that_closes_at_once_gets_nothing_and_breaks_nothing(served: tuple[int, Source]) -> None:
    port, _ = served
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()
    assert (await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n"))[0] == 200


@pytest.mark.asyncio
async def test_a_failing_figures_source_is_a_500_and_the_next_request_is_served(served: tuple[int, Source]) -> None:
    port, source = served
    source.fail = True
    status, _, body = await exchange(port, get("/metrics"))
    assert status == 500 and b"see the broker log" in body
    source.fail = False
    assert (await exchange(port, get("/metrics")))[0] == 200


@pytest.mark.asyncio
async def test_stop_closes_open_connections() -> None:
    server = AdminServer(Source(), head_timeout=60)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0)  # let the server accept it
    async with asyncio.timeout(HANG_GUARD):
        await server.stop()
        assert await reader.read() == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# --- tidelog offload status ----------------------------------------------------------------------


async def run_cli(argv: list[str]) -> int:
    """``tidelog ARGV`` in a thread (it blocks on HTTP while the server runs on this loop)."""
    main: Callable[[list[str]], int] = cli.main
    return await asyncio.to_thread(main, argv)


@pytest.mark.asyncio
async def test_cli_table_json_and_topic(served: tuple[int, Source], capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = served
    assert await run_cli(["offload", "status", "--admin", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out
    assert out == render(offload_status(FIGURES)) + "\n"
    assert "waiting    2 ledgers, 2.0 KiB, oldest 3.5s (backpressure above 1.0 MiB)" in out
    row = next(line for line in out.splitlines() if line.startswith("orders"))
    assert row.split() == ["orders", "0", "2", "2.0", "KiB", "3.5s", "2", "4.9", "KiB", "0", "900", "yes"]
    assert "  orders/0: ObjectStoreUnavailable('s3 refused')" in out  # one line per error
    assert "__consumer_offsets" not in out  # internal topics only with --internal
    assert await run_cli(["offload", "status", "--admin", f"127.0.0.1:{port}", "--internal"]) == 0
    assert "__consumer_offsets" in capsys.readouterr().out
    assert await run_cli(["offload", "status", "--admin", f"127.0.0.1:{port}", "--json", "--topic", "orders"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == offload_status(FIGURES, topic="orders")


@pytest.mark.asyncio
async def test_cli_errors(served: tuple[int, Source], capsys: pytest.CaptureFixture[str]) -> None:
    port, source = served
    source.fail = True
    assert await run_cli(["offload", "status", "--admin", f"127.0.0.1:{port}"]) == 1
    assert "answered 500 Internal Server Error" in capsys.readouterr().err
    server = AdminServer(Source())
    closed = await server.start("127.0.0.1", 0)
    await server.stop()  # nothing listens there now
    assert await run_cli(["offload", "status", "--admin", f"127.0.0.1:{closed}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tidelog offload: error: cannot reach the broker's admin endpoint at 127.0.0.1:{closed}")
    for bad in (["offload", "status"], ["offload", "status", "--admin", "nohost"],
                ["offload", "status", "--admin", "127.0.0.1:1", "--timeout", "0"], ["offload"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            await run_cli(bad)
        assert exit_info.value.code == 2


@pytest.mark.asyncio
async def test_healthz_and_readyz_follow_the_readiness_check() -> None:
    reason: list[str | None] = ["the Kafka listener is not up"]
    stopped: list[bool] = []

    async def on_stop() -> None:
        stopped.append(True)

    server = AdminServer(Source(), ready=lambda: reason[0], on_stop=on_stop)
    port = await server.start("127.0.0.1", 0)
    try:
        assert (await exchange(port, get("/healthz")))[::2] == (200, b"ok\n")
        status, headers, body = await exchange(port, get("/readyz"))
        assert (status, headers["content-type"]) == (503, "application/json")
        assert json.loads(body) == {"ready": False, "reason": "the Kafka listener is not up"}
        reason[0] = None
        status, _, body = await exchange(port, get("/readyz"))
        assert (status, json.loads(body)) == (200, {"ready": True})
        assert (await exchange(port, get("/readyz", "POST")))[0] == 405
    finally:
        await server.stop()
    assert stopped == [True]
