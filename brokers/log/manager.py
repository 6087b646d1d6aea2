"""The partition logs this broker owns, loaded on first use."""

from __future__ import annotations

import asyncio
import itertools
import logging

from brokers.log.cache import TailBudget
from brokers.log.partition import LogConfig, NotLeader, PartitionLog, Tiering
from metadata.api import MetadataStore
from metadata.keys import Keys
from storage.ledger.api import LedgerClient

log = logging.getLogger(__name__)
_instances = itertools.count(1)


class LogManager:
    def __init__(
        self, store: MetadataStore, keys: Keys, ledgers: LedgerClient, config: LogConfig, tiering: Tiering | None = None
    ) -> None:
        self._store = store
        self.tiering = tiering
        """Offloader, object store and block cache shared by the logs (None: ledgers only)."""
        self._keys = keys
        self._ledgers = ledgers
        self.config = config
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self.tail_budget = TailBudget(config.tail_cache_total_bytes)
        """Bytes of every log's tail cache, bounded broker-wide (``tail.cache.total.bytes``)."""
        self._loading: dict[tuple[str, int], asyncio.Task[PartitionLog]] = {}
        self.generation = 0
        """Changes whenever a log is loaded or dropped (its epoch is then new)."""
        self._topic_generations: dict[str, int] = {}
        self.instance = next(_instances)
        """Unique per manager in this process (caches keyed by generations must not mix two managers')."""
        self.take_on_first_use = True
        """Embedded broker: ``get`` of a partition not loaded takes it over (it owns every partition). A cluster
        broker sets False: partitions are loaded only when ownership hands them over, and ``get`` of one not
        loaded raises NotLeader."""

    def topic_generation(self, topic_id: str) -> int:
        """Changes whenever one of the topic's logs is loaded or dropped (no I/O)."""
        return self._topic_generations.get(topic_id, 0)

    def _changed(self, topic_id: str) -> None:
        self.generation += 1
        self._topic_generations[topic_id] = self._topic_generations.get(topic_id, 0) + 1

    @property
    def loaded_count(self) -> int:
        """How many partition logs are loaded (observability: idle partitions are never loaded)."""
        return len(self._logs)

    def loaded(self, topic_id: str, partition: int) -> PartitionLog | None:
        """The log if it is already loaded (no I/O)."""
        return self._logs.get((topic_id, partition))

    def all(self) -> list[PartitionLog]:
        """Every loaded log."""
        return list(self._logs.values())

    async def get(self, topic_id: str, partition: int) -> PartitionLog:
        """The partition's log, taking it over (recovering its tail) on first use; NotLeader instead when
        ``take_on_first_use`` is off and it is neither loaded nor loading."""
        key = (topic_id, partition)
        found = self._logs.get(key)
        if found is not None:
            return found
        task = self._loading.get(key)
        if task is None:
            if not self.take_on_first_use:
                raise NotLeader(f"partition {topic_id}/{partition} is not served by this broker")
            task = asyncio.ensure_future(self._load(key))
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: tuple[str, int]) -> PartitionLog:
        try:
            plog = PartitionLog(
                self._store, self._keys, self._ledgers, key[0], key[1], self.config, self.tiering,
                tail_budget=self.tail_budget,
            )  # fmt: skip
            await plog.load()
            self._logs[key] = plog
            self._changed(key[0])
            return plog
        finally:
            self._loading.pop(key, None)

    async def adopt(self, topic_id: str, partition: int, epoch: int, state_version: int) -> PartitionLog:
        """Load a partition the cluster ownership transaction just took (at ``epoch``, its state at
        ``state_version``): the epoch is not bumped again; an open tail ledger is recovered with fencing."""
        key = (topic_id, partition)
        old = self._logs.pop(key, None)
        if old is not None:  # a stale log of an earlier ownership: it must not serve beside the new one
            self._changed(topic_id)
            await old.close()
        plog = PartitionLog(self._store, self._keys, self._ledgers, topic_id, partition, self.config, self.tiering)
        await plog.load(taken=(epoch, state_version))
        self._logs[key] = plog
        self._changed(topic_id)
        return plog

    async def release(self, topic_id: str, partition: int) -> bool:
        """Hand a partition over: forget the log (no new appends reach it), then close it cleanly - appends
        already queued finish or fail NOT_LEADER_OR_FOLLOWER, the open ledger is closed and its state
        committed, so the next owner finds nothing to recover. False if it was not loaded."""
        plog = self._logs.pop((topic_id, partition), None)
        if plog is None:
            return False
        self._changed(topic_id)
        await plog.close()
        return True

    def depose_all(self, reason: str) -> int:
        """Self-fencing (the broker lost its session): every loaded log stops serving now, without I/O;
        ``release`` them afterwards. Returns how many were deposed."""
        for plog in self._logs.values():
            plog.depose(reason)
        if self._logs:
            self.generation += 1
        return len(self._logs)

    async def drop_topic(self, topic_id: str) -> list[int]:
        """Close and forget a topic's logs; returns the ledger ids they held (for deletion)."""
        ledger_ids: list[int] = []
        for key in [k for k in self._logs if k[0] == topic_id]:
            # Popped as we go, with awaits between: a concurrent drop of the same topic (two DeleteTopics
            # racing) or a release may have taken a key from the list meanwhile (fuzzing found a KeyError).
            plog = self._logs.pop(key, None)
            if plog is None:
                continue
            self._changed(topic_id)
            await plog.close()
            ledger_ids.extend(ref.ledger_id for ref in plog.ledgers)
        self._topic_generations.pop(topic_id, None)
        return ledger_ids

    async def roll_aged(self) -> int:
        """Close every open ledger older than ``rollover_ms``; returns how many were closed."""
        closed = 0
        for plog in list(self._logs.values()):
            try:
                closed += await plog.roll_if_aged()
            except Exception:
                log.exception("age rollover of %s/%d failed", plog.topic_id, plog.partition)
        return closed

    async def run_age_rollover(self) -> None:
        """Background task: roll ledgers by age even on idle partitions."""
        interval = max(0.05, min(self.config.rollover_ms / 2000, 10.0))
        while True:
            await asyncio.sleep(interval)
            await self.roll_aged()

    async def close(self) -> None:
        logs, self._logs = self._logs, {}
        for plog in logs.values():
            await plog.close()
