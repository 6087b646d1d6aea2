"""The per-connection bookkeeping (brokers/connection.py) and the fetch response budget
(brokers/response_memory.py): what is held, when reading pauses, when a connection counts as idle."""

from __future__ import annotations

import asyncio

from brokers.connection import Connection, ConnectionLimits, Request
from brokers.memory import TRIM_AFTER_BYTES, Trimmer
from brokers.response_memory import RequestMemory, ResponseMemory

LIMITS = ConnectionLimits(max_inflight=3, max_queued_bytes=100, idle_s=10.0, frame_timeout_s=2.0)


def _conn(memory: ResponseMemory | None = None) -> Connection:
    return Connection(LIMITS, memory or ResponseMemory(1000), now=0.0)


def test_budget_grants_what_is_left_and_settles_to_what_was_read() -> None:
    memory = ResponseMemory(100)
    first, second = RequestMemory(memory), RequestMemory(memory)
    a = first.reserve(70)
    b = second.reserve(70)
    assert (a.held, b.held, memory.used) == (70, 30, 100)
    assert second.reserve(10).held == 0  # spent: the fetch reads its first batch only
    b.settle(45)  # the first batch was bigger than the grant
    assert memory.used == 115
    a.settle(20)
    assert memory.used == 65
    assert a.grow_to(70) == 55  # a long poll's next round takes what is left again
    first.release()
    second.release()
    assert memory.used == 0
    assert memory.peak == 115


def test_release_is_idempotent_and_settle_after_release_holds_nothing() -> None:
    memory = ResponseMemory(100)
    request = RequestMemory(memory)
    lease = request.reserve(50)
    request.release()
    request.release()
    lease.release()
    lease.settle(80)  # a handler finishing after its connection closed
    assert memory.used == 0


def test_reading_pauses_at_the_inflight_bound_and_the_queued_bytes_bound() -> None:
    conn = _conn()
    requests = [Request(1, RequestMemory(conn.memory)) for _ in range(3)]
    for r in requests[:2]:
        conn.add(r)
    assert not conn.full
    conn.add(requests[2])
    assert conn.full  # three unanswered
    conn.started(requests[0])
    conn.finished(requests[0], [b"x" * 150], now=1.0)
    assert conn.answers_waiting and conn.backlog == 150
    conn.written(requests[0], now=2.0)
    assert not conn.full and not conn.answers_waiting and conn.backlog == 0
    assert list(conn.unanswered) == requests[1:]


def test_written_releases_the_requests_fetch_memory() -> None:
    memory = ResponseMemory(1000)
    conn = _conn(memory)
    request = Request(1, RequestMemory(memory))
    conn.add(request)
    conn.started(request)
    request.memory.reserve(400)
    conn.finished(request, [b"y" * 400], now=1.0)
    assert memory.used == 400
    conn.written(request, now=1.5)
    assert memory.used == 0 and request.response is None


def test_read_deadline_frame_then_recheck_then_idle() -> None:
    conn = _conn()
    assert conn.read_deadline(0.0) == (10.0, "idle")
    conn.read(now=3.0, partial=True)
    assert conn.read_deadline(3.5) == (5.0, "frame")  # the frame started at 3.0
    conn.read(now=4.0, partial=True)
    assert conn.read_deadline(4.0) == (5.0, "frame")  # still the same frame
    conn.read(now=4.5, partial=False)
    request = Request(1, RequestMemory(conn.memory))
    conn.add(request)
    conn.started(request)
    assert conn.read_deadline(5.0) == (6.0, "recheck")  # a long poll: the idle clock does not run
    conn.finished(request, None, now=7.0)
    assert conn.read_deadline(7.0) == (17.0, "idle")


def test_resumed_restarts_the_frame_clock() -> None:
    conn = _conn()
    conn.read(now=1.0, partial=True)
    conn.resumed(now=9.0)  # reading was paused by the broker, not the client
    assert conn.read_deadline(9.0) == (11.0, "frame")


def test_idle_counts_write_progress_as_activity() -> None:
    conn = _conn()
    assert not conn.idle(5.0, write_buffer=0)
    assert not conn.idle(12.0, write_buffer=500)  # the client took some bytes since last looked at
    assert not conn.idle(21.0, write_buffer=400)
    assert conn.idle(31.5, write_buffer=400)  # nothing moved for idle_s


def test_close_cancels_what_did_not_start_and_reads_and_keeps_writes_running() -> None:
    async def run() -> None:
        memory = ResponseMemory(1000)
        conn = Connection(LIMITS, memory, now=0.0)
        never = asyncio.Event()

        async def wait() -> None:
            await never.wait()

        waiting, fetch, produce = (Request(key, RequestMemory(memory)) for key in (3, 1, 0))
        for r in (produce, fetch, waiting):
            r.task = asyncio.create_task(wait())
            conn.add(r)
        conn.started(produce)
        conn.started(fetch)
        fetch.memory.reserve(300)
        left = conn.close(cancel_started=frozenset({1}))
        await asyncio.sleep(0)
        assert left == [produce.task]
        assert fetch.task is not None and fetch.task.cancelled()
        assert waiting.task is not None and waiting.task.cancelled()
        assert memory.used == 0 and not conn.unanswered
        conn.finished(produce, [b"late"], now=1.0)  # its answer is dropped
        assert produce.response is None and conn.backlog == 0
        never.set()
        await asyncio.gather(*left)

    asyncio.run(run())


def test_trimmer_trims_after_big_connections_at_most_once_per_interval() -> None:
    trimmer = Trimmer(interval_s=1.0)
    assert not trimmer.after_release(TRIM_AFTER_BYTES - 1, now=0.0)  # held little: nothing to give back
    assert trimmer.after_release(TRIM_AFTER_BYTES, now=0.0)
    assert not trimmer.after_release(TRIM_AFTER_BYTES, now=0.5)
    assert trimmer.after_release(TRIM_AFTER_BYTES, now=1.5)
