"""The block cache: segment blocks in LRU order under one byte budget shared by every segment reader.

Loads are de-duplicated: while a block is being fetched its future is registered, and every reader that
wants it awaits that future (shielded, so a cancelled reader never cancels a load others wait for). One
fetch may produce a run of consecutive blocks (``load_run``: one ranged GET, split into blocks). A block
larger than the whole budget is handed out but not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

BlockKey = tuple[str, int]
"""(object key, block number)."""
Block = bytes | memoryview
"""A block's bytes: its own object, or a slice of the buffer of the GET that fetched a run of blocks."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made: hits, misses (a load started), coalesced (joined a load in
    flight), evictions, and the bytes and blocks held now."""

    hits: int
    misses: int
    coalesced: int
    evictions: int
    bytes: int
    blocks: int


class BlockCache:
    """LRU of immutable blocks keyed by (object key, block number), bounded by ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self._budget = budget_bytes
        self._blocks: OrderedDict[BlockKey, Block] = OrderedDict()
        self._bytes = 0
        self._loading: dict[BlockKey, asyncio.Future[Block]] = {}
        self._tasks: set[asyncio.Task[Sequence[Block]]] = set()
        self._hits = self._misses = self._coalesced = self._evictions = 0

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._coalesced, self._evictions, self._bytes, len(self._blocks))

    def is_loading(self, key: BlockKey) -> bool:
        return key in self._loading

    def get(self, key: BlockKey) -> Block | None:
        """The block if cached (it becomes the most recently used)."""
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
            self._hits += 1
        return data

    def put(self, key: BlockKey, data: Block) -> None:
        """Keep ``data`` as the most recently used block, evicting the least recently used over budget.

        A block that is a slice of a larger GET buffer is counted at its own length; the buffer is freed
        once every block sliced from it is gone (at most one GET's worth more than the budget)."""
        old = self._blocks.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        if len(data) > self._budget:
            return
        self._blocks[key] = data
        self._bytes += len(data)
        while self._bytes > self._budget:
            _, evicted = self._blocks.popitem(last=False)
            self._bytes -= len(evicted)
            self._evictions += 1

    def discard_object(self, object_key: str) -> None:
        """Drop every cached block of one object (it was deleted)."""
        for key in [k for k in self._blocks if k[0] == object_key]:
            self._bytes -= len(self._blocks.pop(key))

    async def get_or_load(self, key: BlockKey, load: Callable[[], Awaitable[Block]]) -> Block:
        """The cached block, or the result of ``load()`` (started once however many callers ask)."""
        data = self.get(key)
        if data is not None:
            return data
        return await asyncio.shield(self.load_task(key, load))

    def loading(self, key: BlockKey) -> asyncio.Future[Block] | None:
        """The future of a block being fetched now, if it is."""
        return self._loading.get(key)

    def join(self, key: BlockKey) -> asyncio.Future[Block] | None:
        """Like ``loading``, counted as a coalesced request: the caller waits for a fetch in flight."""
        pending = self._loading.get(key)
        if pending is not None:
            self._coalesced += 1
        return pending

    def load_task(self, key: BlockKey, load: Callable[[], Awaitable[Block]]) -> asyncio.Future[Block]:
        """A future of the block: done at once if cached, else the one load in flight (started if needed)."""
        data = self._blocks.get(key)
        if data is not None:
            done: asyncio.Future[Block] = asyncio.get_running_loop().create_future()
            done.set_result(data)
            return done
        pending = self._loading.get(key)
        if pending is not None:
            self._coalesced += 1
            return pending

        async def one() -> Sequence[Block]:
            return [await load()]

        return self.load_run([key], one)[0]

    def load_run(
        self, keys: Sequence[BlockKey], load: Callable[[], Awaitable[Sequence[Block]]]
    ) -> list[asyncio.Future[Block]]:
        """Fetch several blocks with one ``load()`` returning their bytes in order; a future per block.

        None of ``keys`` may be cached or loading already (check with ``in`` and ``loading``).
        """
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in keys]
        for key, fut in zip(keys, futures, strict=True):
            if key in self._loading or key in self._blocks:
                raise ValueError(f"block {key} is already cached or loading")
            self._loading[key] = fut
            fut.add_done_callback(_retrieve)
        self._misses += len(keys)
        task = loop.create_task(_call(load))
        task.add_done_callback(lambda t: self._loaded(keys, futures, t))
        self._tasks.add(task)
        return futures

    def _loaded(
        self, keys: Sequence[BlockKey], futures: list[asyncio.Future[Block]], task: asyncio.Task[Sequence[Block]]
    ) -> None:
        self._tasks.discard(task)
        error: BaseException | None = None
        if task.cancelled():
            error = asyncio.CancelledError()
        else:
            error = task.exception()
        parts: Sequence[Block] = () if error is not None else task.result()
        if error is None and len(parts) != len(keys):
            error = RuntimeError(f"a run load returned {len(parts)} blocks for {len(keys)}")
        for i, (key, fut) in enumerate(zip(keys, futures, strict=True)):
            if self._loading.get(key) is fut:
                del self._loading[key]
            if fut.done():
                continue
            if error is None:
                self.put(key, parts[i])
                fut.set_result(parts[i])
            elif isinstance(error, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(error)

    async def close(self) -> None:
        """Cancel loads in flight and drop every block."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._blocks.clear()
        self._bytes = 0


async def _call(load: Callable[[], Awaitable[Sequence[Block]]]) -> Sequence[Block]:
    return await load()


def _retrieve(fut: asyncio.Future[Block]) -> None:
    """Mark a block future's exception as seen: a load nobody awaits any more is not an unhandled error."""
    if not fut.cancelled():
        fut.exception()
