"""Consumer-group lag per group and partition, for the groups this broker coordinates.

Why: lag is what Burrow and kafka-lag-exporter are installed for; the coordinator already holds every committed
offset of its groups in memory (the shards of ``__consumer_offsets``), so it can export them without a
separate exporter. Lag needs the partition's high watermark: taken from the log when the partition is loaded
here; otherwise, in a cluster, read from its owner with ListOffsets (brokers/group_admin.py over the broker's own
advertised address), in the background, at most every ``REFRESH_S`` and only while something scrapes, so a
scrape never waits on the network. A watermark older than ``MAX_AGE_S`` is not used. An embedded broker owns
every partition but loads one only when a client uses it: asking itself would load idle partitions for the
sake of a metric, so there a partition not loaded has no lag series (it has had no traffic since the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brokers.broker import Broker

log = logging.getLogger(__name__)

REFRESH_S = 10.0
MAX_AGE_S = 60.0
MAX_REMOTE = 10_000
"""At most this many remote partitions are asked for per refresh (a bound on the work, not a limit on groups)."""
REQUEST_TIMEOUT_S = 5.0
TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class GroupOffsetFigures:
    """One committed offset of a group this broker coordinates, and the partition's high watermark if known."""

    group: str
    topic: str
    partition: int
    committed: int
    high_watermark: int | None = None


class GroupLag:
    """Committed offsets of the coordinated groups, with the high watermarks to compute their lag."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._remote: dict[TP, tuple[int, float]] = {}  # (topic, partition) -> (high watermark, when read)
        self._last_refresh = 0.0
        self._task: asyncio.Task[None] | None = None

    def figures(self) -> tuple[GroupOffsetFigures, ...]:
        """The committed offsets now (no I/O); starts a background refresh of remote watermarks if due."""
        broker = self._broker
        local: dict[TP, int] = {}
        for plog in broker.logs.all():
            topic = broker.topics.by_id(plog.topic_id)
            if topic is not None:
                local[(topic.name, plog.partition)] = plog.high_watermark
        now = time.monotonic()
        out: list[GroupOffsetFigures] = []
        missing: set[TP] = set()
        for shard in list(broker.groups.shards.values()):
            if not shard.active:
                continue
            for group, offsets in shard.offsets.items():
                for (topic_name, partition), committed in offsets.items():
                    hw = local.get((topic_name, partition))
                    if hw is None:
                        known = self._remote.get((topic_name, partition))
                        if known is not None and now - known[1] <= MAX_AGE_S:
                            hw = known[0]
                        missing.add((topic_name, partition))
                    out.append(GroupOffsetFigures(group, topic_name, partition, committed.offset, hw))
        out.sort(key=lambda g: (g.group, g.topic, g.partition))
        self._maybe_refresh(missing, now)
        return tuple(out)

    def _maybe_refresh(self, missing: set[TP], now: float) -> None:
        if not missing or now - self._last_refresh < REFRESH_S or self._broker.logs.take_on_first_use:
            return  # (take_on_first_use: an embedded broker, see the module docstring)
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the broker's loop (a test taking a snapshot): nothing to refresh with
        self._last_refresh = now
        self._task = loop.create_task(self._refresh(sorted(missing)[:MAX_REMOTE]))

    async def _refresh(self, wanted: list[TP]) -> None:
        from brokers.cli.client import ClientError, KafkaClient  # the CLI's client: loaded only when needed
        from brokers.group_admin import LATEST, list_offsets

        topics = self._broker.topics
        existing = [tp for tp in wanted if (t := topics.get(tp[0])) is not None and 0 <= tp[1] < t.partitions]
        if not existing:
            return
        host, port = self._broker.config.advertised
        try:
            async with KafkaClient(f"{host}:{port}", client_id="tidelog-group-lag", timeout=REQUEST_TIMEOUT_S) as c:
                got = await list_offsets(c, dict.fromkeys(existing, LATEST))
        except (ClientError, OSError) as e:
            log.debug("group lag: reading %d high watermarks failed: %s", len(existing), e)
            return
        read_at = time.monotonic()
        for tp, offset in got.items():
            self._remote[tp] = (offset, read_at)
        for tp in [tp for tp, (_hw, at) in self._remote.items() if read_at - at > MAX_AGE_S]:
            del self._remote[tp]  # partitions no group needs any more (or deleted topics) are forgotten

    async def close(self) -> None:
        """Stop a refresh in flight."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
