"""The follower: makes this broker own what the controller assigns it, and nothing else.

It watches the assignments (``assignments/``, written by the controller) and the owners (``OwnersView``) and,
on every change (and every ``RETRY_INTERVAL``), runs ``handover.plan`` for this node and converges:

* take: ``PartitionOwnership.take`` (one transaction: the owner key under this broker's lease and the epoch
  bump), then ``host.adopt`` loads the log at exactly that epoch and state version (the open tail ledger is
  recovered with fencing, so a deposed owner's in-flight writes stop) and loads the group shard of an
  offsets partition. Only then does the partition join ``serving`` (what ClusterRouting answers from). If
  loading fails the owner key is released again, so the partition is not stuck with an owner that cannot
  serve it; the take is retried with backoff.
* release: the partition leaves ``serving`` first (new requests get NOT_LEADER_OR_FOLLOWER), ``host.release``
  closes it cleanly (appends in flight finish, the ledger is closed and its state committed), then the owner
  key is deleted, so the next owner takes it at once and has nothing to recover.

At most ``concurrency`` takes and releases run at once; a failed one is retried with exponential backoff.
Each take and release is logged once with the topic name, partition, epoch and how long it took. A take also
says why the partition came here (``Takeover.reason``): ``failover`` (its owner's session ended: lease
expired or revoked without a release), ``move`` (its owner released it), ``restart`` (this broker owned it
before and lost its lease), ``start`` (no owner seen: a new partition, or this broker just started) — and how
long it was unowned before this broker served it. Failover time as a client sees it is the lease TTL (death
to expiry) plus that; ``on_taken`` hands each Takeover to the metrics.

Self-fencing: when the session's lease is lost (``on_lost``, synchronous), every partition leaves ``serving``
and ``host.depose_all`` fails appends in flight with NOT_LEADER_OR_FOLLOWER - no await in between, before
any other broker can have taken them. Then, in the background, the logs are closed locally, the session is
renewed (the registration is written again under a new lease) and the assignment is followed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from brokers.cluster.assignment import TopicPartition
from brokers.cluster.handover import OwnersView, plan
from brokers.cluster.ownership import NotOwner, OwnedElsewhere, PartitionOwnership, Taken
from metadata.api import MetadataError
from metadata.models import TopicAssignment
from metadata.session import LeasedSession, SessionLost

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0
"""How often the plan is run even without a change (a failed step retried, a missed event caught up)."""
BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0
RENEW_RETRY = 0.5
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Takeover:
    """One partition this broker took and now serves."""

    topic: str
    """The topic's name (its id when the name is not known yet)."""
    partition: int
    epoch: int
    reason: Literal["failover", "move", "restart", "start"]
    """Module docstring."""
    previous_owner: int | None
    unowned_s: float | None
    """From when this broker saw the owner key go to when it served the partition (None: never saw it go)."""
    load_s: float
    """The take transaction plus loading the log (tail ledger recovery with fencing)."""


class PartitionHost(Protocol):
    """What the follower drives: the broker's logs and group shards (wired by the composition root)."""

    async def adopt(self, taken: Taken) -> None:
        """Load the partition just taken (at ``taken.epoch``, state version ``taken.state_version``)."""
        ...

    async def release(self, topic_id: str, partition: int) -> None:
        """Stop serving the partition and close it cleanly."""
        ...

    def depose_all(self, reason: str) -> None:
        """Stop serving every partition now, without I/O (self-fencing)."""
        ...

    async def release_all(self) -> None:
        """Close every partition still loaded (after ``depose_all``)."""
        ...


class Follower:
    """Converges this broker's partitions on the controller's assignment (module docstring)."""

    def __init__(
        self,
        node_id: int,
        session: LeasedSession,
        ownership: PartitionOwnership,
        owners: OwnersView,
        assignments: Callable[[], Mapping[str, TopicAssignment]],
        host: PartitionHost,
        *,
        topic_name: Callable[[str], str | None] = lambda _tid: None,
        on_change: Callable[[], None] = lambda: None,
        concurrency: int = DEFAULT_CONCURRENCY,
        broker_departed: Callable[[int], float | None] = lambda _node: None,
        on_taken: Callable[[Takeover], None] = lambda _t: None,
        on_released: Callable[[str, int], None] = lambda _topic, _p: None,
    ) -> None:
        self.node_id = node_id
        self._session = session
        self._ownership = ownership
        self._owners = owners
        self._assignments = assignments
        self._host = host
        self._topic_name = topic_name
        self._on_change = on_change
        self._broker_departed = broker_departed
        """LiveBrokers.departed: when a broker's registration went (it tells a failover from a move)."""
        self._on_taken = on_taken
        self._on_released = on_released
        """Told (topic name, partition) when a partition stops being served here (metrics)."""
        self._limit = asyncio.Semaphore(concurrency)
        self.serving: set[TopicPartition] = set()
        """Partitions taken and loaded here, while the session lives (ClusterRouting reads it)."""
        self._busy: dict[TopicPartition, asyncio.Task[None]] = {}
        self._retry_at: dict[TopicPartition, tuple[float, float]] = {}  # (not before, last backoff)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.takes = 0
        self.releases = 0
        self.fenced = 0
        owners.add_listener(self.kick)
        session.on_lost(self._lost)

    def set_on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``serving`` changes (ClusterRouting bumps its generation)."""
        self._on_change = callback

    def kick(self, _keys: frozenset[str] = frozenset()) -> None:
        """Run the plan again soon (an assignment or an owner changed)."""
        self._wake.set()

    async def start(self) -> None:
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name=f"follower-{self.node_id}")

    async def stop(self) -> None:
        """Stop following (partitions stay as they are; ``release_everything`` hands them over first)."""
        tasks = [t for t in (self._task, self._recovery) if t is not None]
        self._task = self._recovery = None
        for task in [*tasks, *self._busy.values()]:
            task.cancel()
        for task in [*tasks, *self._busy.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._busy.clear()

    def owned(self) -> list[TopicPartition]:
        """Partitions the owners view shows this broker owning."""
        return sorted(tp for tp, owner in self._owners.owners.items() if owner.node_id == self.node_id)

    # --- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            if not self._session.alive or self._recovery is not None:
                continue
            try:
                self._step()
            except Exception:  # a bug must not end the follower silently
                log.exception("follower: planning failed (will retry)")

    def _step(self) -> None:
        todo = plan(self.node_id, self._assignments(), self._owners.owners)
        now = time.monotonic()
        for tp in todo.take:
            if tp not in self._busy and tp not in self.serving and self._retry_at.get(tp, (0.0, 0.0))[0] <= now:
                self._busy[tp] = asyncio.create_task(self._guarded(tp, self._take(tp)))
        stuck = [  # ours by the owner key, yet not served: a load failed and so did giving the key back
            tp for tp, owner in self._owners.owners.items()
            if owner.node_id == self.node_id and tp not in self.serving and tp not in todo.release
        ]
        for tp in (*todo.release, *stuck):
            if tp not in self._busy and self._retry_at.get(tp, (0.0, 0.0))[0] <= now:
                self._busy[tp] = asyncio.create_task(self._guarded(tp, self._release(tp)))

    async def _guarded(self, tp: TopicPartition, work: Coroutine[Any, Any, bool]) -> None:
        try:
            async with self._limit:
                ok = await work
            if ok:
                self._retry_at.pop(tp, None)
            else:
                self._backoff(tp)
        except asyncio.CancelledError:
            work.close()  # cancelled before it started: no "never awaited" warning
            raise
        except Exception:
            log.exception("follower: %s/%d failed (will retry)", self._name(tp[0]), tp[1])
            self._backoff(tp)
        finally:
            if self._busy.get(tp) is asyncio.current_task():
                del self._busy[tp]
            self._wake.set()

    def _backoff(self, tp: TopicPartition) -> None:
        last = self._retry_at.get(tp, (0.0, BACKOFF_MIN / 2))[1]
        delay = min(BACKOFF_MAX, last * 2)
        self._retry_at[tp] = (time.monotonic() + delay, delay)

    def _name(self, topic_id: str) -> str:
        return self._topic_name(topic_id) or topic_id

    async def _take(self, tp: TopicPartition) -> bool:
        topic_id, partition = tp
        started = time.monotonic()
        departed = self._owners.departed(topic_id, partition)
        generation = self._session.generation
        try:
            taken = await self._ownership.take(topic_id, partition)
        except OwnedElsewhere:
            return True  # someone else was faster (or our own view lags): the watch tells us the rest
        except SessionLost:
            return True  # fenced: the recovery follows the assignment again
        except (MetadataError, OSError) as e:
            log.warning("take of %s/%d failed (will retry): %r", self._name(topic_id), partition, e)
            return False
        try:
            await self._host.adopt(taken)
        except Exception as e:
            log.warning(
                "loading %s/%d at epoch %d failed (releasing it, will retry): %r",
                self._name(topic_id), partition, taken.epoch, e,
            )
            with contextlib.suppress(Exception):
                await self._host.release(topic_id, partition)
            with contextlib.suppress(NotOwner, MetadataError, OSError):
                await self._ownership.release(topic_id, partition)
            return False
        if self._session.generation != generation or not self._session.alive:
            return True  # the lease was lost while loading: the fencing has (or will have) closed it
        self.serving.add(tp)
        self.takes += 1
        self._on_change()
        self._report(self._takeover(taken, departed, started))
        return True

    def _takeover(self, taken: Taken, departed: tuple[Any, float] | None, started: float) -> Takeover:
        now = time.monotonic()
        name = self._name(taken.topic_id)
        if departed is None:
            return Takeover(name, taken.partition, taken.epoch, "start", None, None, now - started)
        previous, gone_at = departed[0].node_id, departed[1]
        reason: Literal["failover", "move", "restart"]
        if previous == self.node_id:
            reason = "restart"
        elif self._broker_departed(previous) is not None:
            reason = "failover"
        else:
            reason = "move"
        return Takeover(name, taken.partition, taken.epoch, reason, previous, now - gone_at, now - started)

    def _released(self, tp: TopicPartition) -> None:
        try:
            self._on_released(self._name(tp[0]), tp[1])
        except Exception:  # metrics must not break ownership
            log.exception("follower: on_released failed")

    def _report(self, t: Takeover) -> None:
        load_ms = t.load_s * 1000
        if t.reason == "start":
            log.info("took %s/%d at epoch %d in %.0f ms", t.topic, t.partition, t.epoch, load_ms)
        elif t.reason == "failover":
            log.warning(
                "failover: took %s/%d at epoch %d from broker %s, whose session ended: unowned for %.2f s "
                "(take and tail recovery %.0f ms)", t.topic, t.partition, t.epoch, t.previous_owner, t.unowned_s,
                load_ms,
            )  # fmt: skip
        else:
            log.info(
                "took %s/%d at epoch %d (%s from broker %s): unowned for %.2f s (take and load %.0f ms)",
                t.topic, t.partition, t.epoch, t.reason, t.previous_owner, t.unowned_s, load_ms,
            )  # fmt: skip
        try:
            self._on_taken(t)
        except Exception:  # metrics must not break ownership
            log.exception("follower: on_taken failed")

    async def _release(self, tp: TopicPartition) -> bool:
        topic_id, partition = tp
        started = time.monotonic()
        owner = self._owners.owner_of(topic_id, partition)
        if tp in self.serving:
            self.serving.discard(tp)
            self._released(tp)
        self._on_change()
        await self._host.release(topic_id, partition)
        try:
            if not await self._ownership.release(topic_id, partition):
                return True  # the key had gone already (our view lagged, or the lease expired)
        except NotOwner:
            return True  # someone else's, or a key of our previous lease that expires with it
        except (MetadataError, OSError) as e:
            log.warning("release of %s/%d failed (will retry): %r", self._name(topic_id), partition, e)
            return False
        self.releases += 1
        log.info(
            "released %s/%d at epoch %s in %.0f ms", self._name(topic_id), partition,
            "?" if owner is None else owner.epoch, (time.monotonic() - started) * 1000,
        )
        return True

    # --- self-fencing -------------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        """The lease is gone: stop serving everything now (synchronous, from the session's callback)."""
        count = len(self.serving)
        for tp in self.serving:
            self._released(tp)
        self.serving.clear()
        self._host.depose_all(f"session lost: {reason}")
        self.fenced += 1
        self._on_change()
        log.warning("broker %d fenced itself (%d partitions stop serving): %s", self.node_id, count, reason)
        if self._recovery is None and self._task is not None:
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="follower-recovery")

    async def _recover(self) -> None:
        """Close what was deposed, then a new lease and registration; the plan runs again after."""
        try:
            busy = list(self._busy.values())
            for task in busy:
                task.cancel()
            for task in busy:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._busy.clear()
            self._retry_at.clear()
            with contextlib.suppress(Exception):
                await self._host.release_all()
            while True:
                try:
                    lease = await self._session.renew()
                except (MetadataError, OSError) as e:
                    log.warning("broker %d: renewing the session failed (will retry): %r", self.node_id, e)
                    await asyncio.sleep(RENEW_RETRY)
                    continue
                log.info("broker %d registered again under lease %x", self.node_id, lease)
                break
        finally:
            self._recovery = None
            self._on_change()
            self._wake.set()
