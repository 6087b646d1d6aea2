"""Memory figures of one module each (issue 15): the tail cache's and in-flight entries' byte counts, the
producer table's estimate, and when the idle trimmer decides to trim (its decision only: nothing here trims or
reads the process heap)."""

from __future__ import annotations

import asyncio

import pytest

from brokers.log.cache import TailBudget, TailCache
from brokers.log.inflight import InflightEntries, PendingEntry
from brokers.log.producers import PRODUCER_BYTES, ProducerTable
from brokers.log.types import LogMemory
from brokers.memory import IDLE_AFTER_S, TRIM_AFTER_BYTES, HeapFigures, IdleTrimmer, limit_arenas
from metadata.models import ProducerSnapshotEntry


def test_tail_cache_counts_what_it_holds_up_to_its_budget() -> None:
    cache = TailCache(1000)
    assert cache.memory_bytes == 0
    cache.add(0, 9, memoryview(bytes(400)))
    cache.add(10, 19, memoryview(bytes(400)))
    assert cache.memory_bytes == 800
    cache.add(20, 29, memoryview(bytes(400)))  # over the budget: the oldest goes
    assert cache.memory_bytes == 800
    cache.add(30, 39, memoryview(bytes(5000)))  # one entry larger than the budget stays alone
    assert cache.memory_bytes == 5000
    cache.truncate_after(30)
    assert cache.memory_bytes == 0
    cache.add(40, 49, memoryview(bytes(10)))
    cache.clear()
    assert cache.memory_bytes == 0


def test_inflight_counts_unconfirmed_entry_bytes() -> None:
    entries = InflightEntries()
    a = PendingEntry(0, 4, 0, bytearray(300), [])
    b = PendingEntry(5, 9, 0, bytearray(200), [])
    entries.push(a)
    entries.push(b)
    assert entries.memory_bytes == 500
    assert entries.pop_front() is a
    assert entries.memory_bytes == 200
    entries.clear()
    assert entries.memory_bytes == 0


def test_producer_table_estimate_and_log_memory_total() -> None:
    table = ProducerTable(tuple(ProducerSnapshotEntry(pid, 0, ((0, 4, 0, 4),)) for pid in range(3)))
    assert table.memory_bytes() == 3 * PRODUCER_BYTES
    assert LogMemory(tail_cache=10, inflight=20, producer_state=30).total == 60


def test_idle_trimmer_trims_once_after_a_busy_period_goes_idle() -> None:
    trimmer = IdleTrimmer(heap_figures=lambda: HeapFigures(0, TRIM_AFTER_BYTES))
    assert not trimmer.step(0.0, 1.0)  # idle from the start: nothing to give back
    assert not trimmer.step(0.0, IDLE_AFTER_S * 2)
    assert not trimmer.step(0.9, 1.0)  # busy
    assert not trimmer.step(0.0, IDLE_AFTER_S / 2)  # idle, not yet long enough
    assert trimmer.step(0.0, IDLE_AFTER_S / 2)  # idle long enough after being busy
    assert not trimmer.step(0.0, IDLE_AFTER_S)  # trimmed already: no second trim without new activity
    assert not trimmer.step(0.5, 1.0)  # busy again
    assert not trimmer.step(0.0, IDLE_AFTER_S / 2)  # the idle time counts from the last busy check
    assert trimmer.step(0.0, IDLE_AFTER_S / 2)


def test_idle_trimmer_task_trims_in_a_thread_after_busy_then_idle() -> None:
    cpu = [0.0]
    asked: list[int] = []

    def free() -> HeapFigures:
        asked.append(1)
        return HeapFigures(in_use=5, free=0)  # nothing worth trimming: the decision is made, trim() is not called

    async def scenario() -> IdleTrimmer:
        trimmer = IdleTrimmer(cpu=lambda: cpu[0], heap_figures=free, check_s=0.01, idle_after_s=0.03)
        task = asyncio.create_task(trimmer.run())
        try:
            for _ in range(5):  # busy: a full core
                cpu[0] += 0.02
                await asyncio.sleep(0.01)
            for _ in range(200):  # bounded wait for the idle check
                if asked:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
        return trimmer

    trimmer = asyncio.run(scenario())
    assert asked  # it looked at the free heap once idle after the busy period
    assert trimmer.trims == 0  # too little free heap to be worth a trim
    assert trimmer.heap == HeapFigures(in_use=5, free=0)  # what the gauges export until the next idle check


def test_tail_budget_bounds_every_cache_together_oldest_first() -> None:
    budget = TailBudget(1000)
    a, b = TailCache(800, budget), TailCache(800, budget)
    a.add(0, 0, memoryview(bytes(300)))
    b.add(0, 0, memoryview(bytes(300)))
    a.add(1, 1, memoryview(bytes(300)))
    assert (a.memory_bytes, b.memory_bytes, budget.used) == (600, 300, 900)
    b.add(1, 1, memoryview(bytes(300)))  # 1200 > 1000: a's entry 0 (the oldest anywhere) goes
    assert (a.memory_bytes, b.memory_bytes, budget.used) == (300, 600, 900)
    assert a.read(0, 10_000, 10) is None and a.read(1, 10_000, 10) is not None
    b.add(2, 2, memoryview(bytes(300)))  # next oldest: b's entry 0; a keeps its newest
    assert (a.memory_bytes, b.memory_bytes, budget.used) == (300, 600, 900)
    a.clear()  # a partition closed: its bytes leave the budget
    assert budget.used == 600
    b.truncate_after(2)
    assert budget.used == b.memory_bytes == 300


def test_tail_budget_keeps_its_eviction_order_bounded() -> None:
    budget = TailBudget(10**9)  # never over: stale order records must still be dropped
    cache = TailCache(1000, budget)
    for i in range(20_000):
        cache.add(i, i, memoryview(bytes(100)))
    assert cache.memory_bytes == budget.used == 1000
    assert len(budget._order) <= 2 * len(cache) + 1024 + 1


def test_no_broker_wide_bound_when_zero() -> None:
    budget = TailBudget(0)
    caches = [TailCache(500, budget) for _ in range(4)]
    for c in caches:
        c.add(0, 0, memoryview(bytes(400)))
    assert budget.used == 1600 and all(c.memory_bytes == 400 for c in caches)


def test_limit_arenas_leaves_an_operator_choice_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False  # the environment decides; nothing is changed in this process
