"""BlockCache: LRU order, the byte budget, and one load per block however many readers ask at once."""

from __future__ import annotations

import asyncio

import pytest

from storage.segment.cache import BlockCache


def test_lru_eviction_keeps_the_budget() -> None:
    cache = BlockCache(300)
    for i in range(3):
        cache.put(("a", i), bytes(100))
    assert cache.size == 300 and len(cache) == 3
    assert cache.get(("a", 0)) is not None  # 0 becomes the most recently used
    cache.put(("a", 3), bytes(100))
    assert ("a", 1) not in cache
    assert all(k in cache for k in [("a", 0), ("a", 2), ("a", 3)])
    cache.put(("b", 0), bytes(250))  # evicts as many as needed
    assert cache.size <= 300
    assert ("b", 0) in cache and ("a", 3) not in cache
    assert cache.stats().evictions == 4  # a1, then a0, a2, a3


def test_a_block_larger_than_the_budget_is_not_kept() -> None:
    cache = BlockCache(100)
    cache.put(("a", 0), bytes(50))
    cache.put(("big", 0), bytes(101))
    assert ("big", 0) not in cache and ("a", 0) in cache and cache.size == 50
    zero = BlockCache(0)
    zero.put(("a", 0), b"x")
    assert len(zero) == 0


def test_replacing_and_discarding_account_bytes() -> None:
    cache = BlockCache(1000)
    cache.put(("a", 0), bytes(100))
    cache.put(("a", 0), bytes(200))
    cache.put(("a", 1), bytes(50))
    cache.put(("b", 0), bytes(10))
    assert cache.size == 260
    cache.discard_object("a")
    assert cache.size == 10 and len(cache) == 1


@pytest.mark.asyncio
async def test_concurrent_loads_of_one_block_share_one_call() -> None:
    cache = BlockCache(10_000)
    calls = 0
    gate = asyncio.Event()

    async def load() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"block"

    waiters = [asyncio.create_task(cache.get_or_load(("k", 1), load)) for _ in range(20)]
    await asyncio.sleep(0)
    assert cache.is_loading(("k", 1))
    gate.set()
    assert await asyncio.gather(*waiters) == [b"block"] * 20
    assert calls == 1
    stats = cache.stats()
    assert (stats.misses, stats.coalesced) == (1, 19)
    assert await cache.get_or_load(("k", 1), load) == b"block" and calls == 1
    assert cache.stats().hits == 1


@pytest.mark.asyncio
async def test_a_failed_load_reaches_every_waiter_and_the_next_call_retries() -> None:
    cache = BlockCache(10_000)
    attempts = 0
    gate = asyncio.Event()

    async def load() -> bytes:
        nonlocal attempts
        attempts += 1
        await gate.wait()
        if attempts == 1:
            raise OSError("store down")
        return b"ok"

    waiters = [asyncio.create_task(cache.get_or_load(("k", 0), load)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert not cache.is_loading(("k", 0)) and ("k", 0) not in cache
    assert await cache.get_or_load(("k", 0), load) == b"ok"
    assert attempts == 2


@pytest.mark.asyncio
async def test_a_cancelled_reader_does_not_cancel_the_load_others_wait_for() -> None:
    cache = BlockCache(10_000)
    gate = asyncio.Event()

    async def load() -> bytes:
        await gate.wait()
        return b"data"

    first = asyncio.create_task(cache.get_or_load(("k", 0), load))
    second = asyncio.create_task(cache.get_or_load(("k", 0), load))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await second == b"data"
    assert first.cancelled()
    assert ("k", 0) in cache


@pytest.mark.asyncio
async def test_close_cancels_loads_in_flight() -> None:
    cache = BlockCache(10_000)
    never = asyncio.Event()

    async def load() -> bytes:
        await never.wait()
        return b""

    task = cache.load_task(("k", 0), load)
    cache.put(("j", 0), b"x")
    await cache.close()
    assert task.cancelled() and cache.size == 0 and not cache.is_loading(("k", 0))
