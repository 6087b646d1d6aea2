"""The transaction coordinator: transactional ids mapped to ``__transaction_state`` partitions, a shard each.

A transactional id's partition is Kafka's (``Utils.abs(id.hashCode) % partitions``) and its coordinator is that
partition's owner, exactly as for groups (brokers/groups/coordinator.py): embedded, this broker loads every
partition at start; in a cluster (``routing`` set) shards follow ownership through ``on_taken``/``on_released``.
The state is only ever what the partition's log holds, so it moves and fails over with the partition: a new
owner replays it, resumes the markers of every PrepareCommit/PrepareAbort it finds, and aborts the ongoing
transactions whose timeout passes (their start time is in the log).

Each request turns the current metadata into a ``Decision`` (brokers/transactions/state.py); a decision that
changes state is written and applied once durable, and a transactional id with a write in flight answers
CONCURRENT_TRANSACTIONS (the client retries), as Kafka's pending-state rule does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError
from brokers.groups.coordinator import OFFSETS_TOPIC
from brokers.groups.records import partition_for
from brokers.handlers.base import make
from brokers.log.partition import LogError
from brokers.topics import TopicError
from brokers.transactions import state as sm
from brokers.transactions.markers import CoordinatorFenced, LocalMarkers, MarkerSender
from brokers.transactions.peers import Peers
from brokers.transactions.shard import TxnError, TxnShard, now_ms
from metadata.api import MetadataError
from storage.ledger.api import LedgerError

if TYPE_CHECKING:
    from brokers.broker import Broker
    from brokers.routing import Endpoint, Routing

log = logging.getLogger(__name__)
TXN_TOPIC = "__transaction_state"
TXN_TOPIC_CONFIGS = {"cleanup.policy": "compact", "compression.type": "uncompressed", "segment.bytes": "104857600"}
LOAD_RETRY_MAX_S = 5.0
ADD_PARTITIONS_TO_TXN = 24
TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TxnConfig:
    """The coordinator's settings (Kafka's names in brokers/config.py)."""

    max_timeout_ms: int = 900_000
    id_expiration_ms: int = 604_800_000
    abort_interval_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class InitResult:
    error: ErrorCode
    producer_id: int = -1
    producer_epoch: int = -1


@dataclass(frozen=True, slots=True)
class ListedTxn:
    transactional_id: str
    producer_id: int
    state: str


class TransactionCoordinator:
    """Routes transactional requests to the shard of the id's ``__transaction_state`` partition."""

    def __init__(self, broker: Broker, config: TxnConfig, num_partitions: int, local_markers: LocalMarkers | None = None
                 ) -> None:
        self._broker = broker
        self.config = config
        self._wanted_partitions = num_partitions
        self.partitions = 0
        """The topic's partition count (fixed once it exists)."""
        self.shards: dict[int, TxnShard] = {}
        self._topic_id = ""
        self._loading: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.peers = Peers()
        self.markers = MarkerSender(broker, self.peers) if local_markers is None else MarkerSender(
            broker, self.peers, local_markers)
        self.routing: Routing | None = None
        """Cluster mode: shards follow ownership (on_taken/on_released); None: this broker owns them all."""

    @classmethod
    def for_broker(cls, broker: Broker) -> TransactionCoordinator:
        c = broker.config
        config = TxnConfig(
            max_timeout_ms=c.transaction_max_timeout_ms,
            id_expiration_ms=c.transactional_id_expiration_ms,
            abort_interval_ms=c.transaction_abort_timed_out_transaction_cleanup_interval_ms,
        )
        return cls(broker, config, c.transaction_state_log_num_partitions)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving the transactional ids of ``__transaction_state`` if it exists (embedded: load every
        partition of it). The topic is created on first use, as Kafka creates it: a broker whose clients never
        use transactions carries no partitions (and no topic) for them."""
        self._known()
        self._spawn(self._run_timeouts())

    def _known(self) -> bool:
        """Whether ``__transaction_state`` exists (adopting it the first time the registry shows it: created here,
        by another broker, or before a restart)."""
        if self.partitions:
            return True
        topic = self._broker.topics.get(TXN_TOPIC)
        if topic is None:
            return False
        self.partitions = topic.partitions
        self._topic_id = topic.topic_id
        if self.routing is None:
            for p in range(self.partitions):
                self._loading[p] = self._spawn(self._load(p))
        return True

    async def ensure_topic(self) -> bool:
        """Create ``__transaction_state`` if it does not exist yet (FindCoordinator and InitProducerId for a
        transactional id call this); False when it could not be created (the client retries)."""
        if self._known():
            return True
        try:
            topic = await self._broker.topics.create(
                TXN_TOPIC, self._wanted_partitions, self._broker.config.default_replication_factor,
                dict(TXN_TOPIC_CONFIGS),
            )
            log.info("created %s with %d partitions", TXN_TOPIC, topic.partitions)
        except (TopicError, MetadataError) as e:
            if self._broker.topics.get(TXN_TOPIC) is None:  # not a concurrent creation: say why, retry later
                log.warning("could not create %s: %s", TXN_TOPIC, e)
        return self._known()

    @property
    def topic_id(self) -> str:
        """The topic's id ("" while it does not exist); cluster wiring compares taken partitions with it."""
        self._known()
        return self._topic_id

    def on_taken(self, partition: int) -> None:
        """Cluster mode: this broker took a ``__transaction_state`` partition; replay it in the background."""
        if partition in self.shards or partition in self._loading:
            return
        self._loading[partition] = self._spawn(self._load(partition))

    async def on_released(self, partition: int) -> None:
        """Cluster mode: the partition is being handed over; its shard stops (markers in flight are cancelled and
        resumed by the next owner from the replayed PrepareCommit/PrepareAbort)."""
        task = self._loading.pop(partition, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        shard = self.shards.pop(partition, None)
        if shard is not None:
            await shard.close()

    async def _load(self, partition: int) -> None:
        backoff = 0.1
        while True:
            try:
                plog = await self._broker.logs.get(self._topic_id, partition)
                shard = TxnShard(partition, plog)
                await shard.load()
            except Exception as e:  # storage trouble, or a bug: neither may leave the partition unloaded for good
                expected = isinstance(e, (LogError, LedgerError, MetadataError, OSError))
                log.warning("loading transaction state partition %d failed (retrying in %.1fs): %s", partition,
                            backoff, e, exc_info=not expected)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LOAD_RETRY_MAX_S)
                continue
            self.shards[partition] = shard
            self._loading.pop(partition, None)
            for txn_id, meta in shard.txns.items():
                if meta.state in sm.PREPARING:  # the previous owner wrote the decision but not every marker
                    shard.spawn(self._complete(shard, txn_id, meta))
            return

    async def wait_loaded(self) -> None:
        """Until every owned partition is loaded (tests)."""
        while self._loading:
            await asyncio.wait(list(self._loading.values()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for shard in self.shards.values():
            await shard.close()
        self.shards.clear()
        await self.peers.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- routing -------------------------------------------------------------------------------
    def partition_for(self, transactional_id: str) -> int:
        """The id's ``__transaction_state`` partition (the topic must exist: ``ensure_topic``)."""
        return partition_for(transactional_id, self.partitions)

    def shard_for(self, transactional_id: str) -> TxnShard:
        """The loaded shard of the id; raises TxnError (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, ...)."""
        if not self._known():
            raise TxnError(ErrorCode.coordinator_not_available, f"{TXN_TOPIC} does not exist yet")
        partition = self.partition_for(transactional_id)
        shard = self.shards.get(partition)
        if shard is not None and shard.active:
            if self.routing is not None and not self.routing.serving(self._topic_id, partition):
                raise TxnError(ErrorCode.not_coordinator, f"{TXN_TOPIC} partition {partition} is being released")
            return shard
        if partition in self._loading:
            raise TxnError(ErrorCode.coordinator_load_in_progress, f"{TXN_TOPIC} partition {partition} is loading")
        raise TxnError(ErrorCode.not_coordinator, f"{TXN_TOPIC} partition {partition} is not owned here")

    def coordinator_for(self, transactional_id: str) -> Endpoint | None:
        """The endpoint of the id's coordinator (the owner of its partition), None while there is none."""
        if not self._known():
            return None
        partition = self.partition_for(transactional_id)
        leader = self._broker.routing.leader(self._topic_id, partition)
        return None if leader is None else self._broker.routing.endpoint(leader.node_id)

    def _exists(self, tp: TP) -> bool:
        topic = self._broker.topics.get(tp[0])
        return topic is not None and 0 <= tp[1] < topic.partitions

    async def _decide_and_write(self, shard: TxnShard, txn_id: str, decision: sm.Decision) -> ErrorCode:
        """Write the decision's state (if any), then start its markers; the decision's error, or the write's."""
        if decision.write is None:
            return decision.error
        shard.pending.add(txn_id)
        try:
            await shard.write(decision.write, txn_id)
        except TxnError as e:
            return e.code
        finally:
            shard.pending.discard(txn_id)
        if decision.markers and shard.active:  # a shard released meanwhile leaves them to the next owner
            shard.spawn(self._complete(shard, txn_id, decision.write))
        return decision.error

    # --- requests ------------------------------------------------------------------------------
    async def init_producer_id(
        self, transactional_id: str, timeout_ms: int, producer_id: int = -1, producer_epoch: int = -1
    ) -> InitResult:
        """InitProducerId with a transactional id: a producer id and a bumped epoch (fencing older producers)."""
        if not 0 < timeout_ms <= self.config.max_timeout_ms:
            return InitResult(ErrorCode.invalid_transaction_timeout)
        if not await self.ensure_topic():
            return InitResult(ErrorCode.coordinator_not_available)
        try:
            shard = self.shard_for(transactional_id)
        except TxnError as e:
            return InitResult(e.code)
        if transactional_id in shard.pending:
            return InitResult(ErrorCode.concurrent_transactions)
        meta = shard.txns.get(transactional_id)
        fresh = await self._broker.allocate_producer_id() if sm.needs_producer_id(meta) else None
        meta = shard.txns.get(transactional_id)  # the allocation awaited: read again
        if transactional_id in shard.pending or (fresh is None and sm.needs_producer_id(meta)):
            return InitResult(ErrorCode.concurrent_transactions)
        decision = sm.init_producer(meta, transactional_id, fresh, producer_id, producer_epoch, timeout_ms, now_ms())
        code = await self._decide_and_write(shard, transactional_id, decision)
        if code != ErrorCode.none:
            return InitResult(code)
        now = shard.txns.get(transactional_id)
        if now is None:
            return InitResult(ErrorCode.concurrent_transactions)
        return InitResult(ErrorCode.none, now.producer_id, now.producer_epoch)

    async def add_partitions(
        self, transactional_id: str, producer_id: int, producer_epoch: int, partitions: Sequence[TP],
        client_version: int = sm.TV_0,
    ) -> dict[TP, ErrorCode]:
        """AddPartitionsToTxn: one error for every partition (Kafka answers them all alike). ``client_version``
        TV_2: a partition leader adding a TV2 producer's partition implicitly (v4+ without ``verify_only``)."""
        if not partitions:
            return {}  # nothing to add: no transaction is started by it
        missing = [tp for tp in partitions if not self._exists(tp)]
        if missing:
            return {tp: ErrorCode.unknown_topic_or_partition if tp in missing else ErrorCode.operation_not_attempted
                    for tp in partitions}
        code = await self._add(transactional_id, producer_id, producer_epoch, frozenset(partitions), client_version)
        return dict.fromkeys(partitions, code)

    async def add_offsets(self, transactional_id: str, producer_id: int, producer_epoch: int, group_id: str
                          ) -> ErrorCode:
        """AddOffsetsToTxn: the group's ``__consumer_offsets`` partition joins the transaction (its
        TxnOffsetCommit records then get the transaction's marker like any other partition)."""
        groups = self._broker.groups
        if groups.partitions == 0:
            return ErrorCode.coordinator_not_available
        tp = (OFFSETS_TOPIC, groups.partition_for(group_id))
        return await self._add(transactional_id, producer_id, producer_epoch, frozenset({tp}))

    async def _add(self, transactional_id: str, producer_id: int, producer_epoch: int, tps: frozenset[TP],
                   client_version: int = sm.TV_0) -> ErrorCode:
        try:
            shard = self.shard_for(transactional_id)
        except TxnError as e:
            return e.code
        if transactional_id in shard.pending:
            return ErrorCode.concurrent_transactions
        decision = sm.add_partitions(shard.txns.get(transactional_id), producer_id, producer_epoch, tps, now_ms(),
                                     client_version)
        return await self._decide_and_write(shard, transactional_id, decision)

    def verify_local(self, transactional_id: str, producer_id: int, producer_epoch: int, tp: TP) -> ErrorCode:
        """KIP-890 part 1 verification against this broker's shard (AddPartitionsToTxn v4+ verify_only)."""
        try:
            shard = self.shard_for(transactional_id)
        except TxnError as e:
            return e.code
        if transactional_id in shard.pending:
            return ErrorCode.concurrent_transactions
        return sm.verify_partition(shard.txns.get(transactional_id), producer_id, producer_epoch, tp)

    async def verify_partition(
        self, transactional_id: str, producer_id: int, producer_epoch: int, topic: str, partition: int,
        add: bool = False,
    ) -> ErrorCode:
        """Produce's KIP-890 part 1 check: is (topic, partition) in the producer's open transaction? Asked of the
        local shard, or of the coordinator broker with AddPartitionsToTxn v4+ ``verify_only``. ErrorCode.none:
        yes; otherwise the coordinator's error (INVALID_TXN_STATE, PRODUCER_FENCED, INVALID_PRODUCER_ID_MAPPING,
        CONCURRENT_TRANSACTIONS, NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, ...).

        ``add`` (KIP-890 part 2, a TV2 producer's Produce v12+ / TxnOffsetCommit v5+): the partition is added to
        the producer's transaction (starting it if none is open) instead of only checked — AddPartitionsToTxn
        v4+ without ``verify_only``, as Kafka's partition leaders send it for TV2 clients."""
        tp = (topic, partition)
        if not self._known():
            return ErrorCode.coordinator_not_available
        endpoint = self.coordinator_for(transactional_id)
        if endpoint is None:
            return ErrorCode.coordinator_not_available
        if endpoint.node_id == self._broker.routing.node_id:
            if add:
                return await self._add(transactional_id, producer_id, producer_epoch, frozenset({tp}), sm.TV_2)
            return self.verify_local(transactional_id, producer_id, producer_epoch, tp)
        return await self._verify_remote(endpoint, transactional_id, producer_id, producer_epoch, tp, add)

    async def _verify_remote(
        self, endpoint: Endpoint, transactional_id: str, producer_id: int, producer_epoch: int, tp: TP,
        add: bool = False,
    ) -> ErrorCode:
        try:
            conn = await self.peers.connection(endpoint)
            mod = conn.module(ADD_PARTITIONS_TO_TXN, 4, 5)
            txn = make(
                mod.AddPartitionsToTxnTransaction, transactional_id=transactional_id, producer_id=producer_id,
                producer_epoch=producer_epoch, verify_only=not add,
                topics=(make(mod.AddPartitionsToTxnTopic, name=tp[0], partitions=(tp[1],)),),
            )
            resp: Any = await conn.send(make(mod.AddPartitionsToTxnRequest, transactions=(txn,)))
        except ClientError as e:
            log.info("verifying %s at broker %d failed: %s", transactional_id, endpoint.node_id, e)
            await self.peers.drop(endpoint)
            return ErrorCode.coordinator_not_available
        if resp.error_code != ErrorCode.none:
            return ErrorCode(resp.error_code)
        for result in resp.results_by_transaction:
            for t in result.topic_results:
                for p in t.results_by_partition:
                    if (t.name, int(p.partition_index)) == tp:
                        return ErrorCode(p.partition_error_code)
        return ErrorCode.unknown_server_error

    async def end_txn(
        self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool, bump_epoch: bool = False
    ) -> InitResult:
        """EndTxn: PrepareCommit/PrepareAbort made durable, then the markers sent in the background (the client
        is answered once the decision is durable, as Kafka does). With ``bump_epoch`` (EndTxn v5) the answer
        carries the producer's new epoch."""
        try:
            shard = self.shard_for(transactional_id)
        except TxnError as e:
            return InitResult(e.code)
        if transactional_id in shard.pending:
            return InitResult(ErrorCode.concurrent_transactions)
        fresh = None
        if sm.end_needs_producer_id(shard.txns.get(transactional_id), producer_id, producer_epoch, bump_epoch):
            fresh = await self._broker.allocate_producer_id()  # TV2 epoch overflow: completes onto a new id
            if transactional_id in shard.pending or not sm.end_needs_producer_id(
                shard.txns.get(transactional_id), producer_id, producer_epoch, bump_epoch
            ):
                return InitResult(ErrorCode.concurrent_transactions)  # changed while allocating: the client retries
        decision = sm.end_txn(shard.txns.get(transactional_id), producer_id, producer_epoch, commit, now_ms(),
                              bump_epoch, fresh)
        code = await self._decide_and_write(shard, transactional_id, decision)
        meta = shard.txns.get(transactional_id)
        if code != ErrorCode.none or meta is None:
            return InitResult(code)
        return InitResult(code, *sm.answer(meta))

    # --- completion ----------------------------------------------------------------------------
    async def _complete(self, shard: TxnShard, txn_id: str, prepared: sm.TxnMetadata) -> None:
        """Markers to every partition of a prepared transaction, then CompleteCommit/CompleteAbort."""
        commit = prepared.state == sm.TxnState.PREPARE_COMMIT
        try:
            await self.markers.send(prepared.producer_id, prepared.producer_epoch, commit, shard.coordinator_epoch,
                                    sorted(prepared.partitions))
        except CoordinatorFenced as e:
            log.warning("transaction %s: this coordinator was fenced (%s); the new owner completes it", txn_id, e)
            return
        backoff = 0.05
        while shard.active:
            current = shard.txns.get(txn_id)
            if current is None or current.state != prepared.state or current.producer_epoch != prepared.producer_epoch:
                return  # replaced meanwhile (cannot happen while prepared, but never overwrite newer state)
            if txn_id not in shard.pending:
                shard.pending.add(txn_id)
                try:
                    await shard.write(sm.completed(current, now_ms()), txn_id)
                    log.debug("transaction %s: %s complete", txn_id, "commit" if commit else "abort")
                    return
                except TxnError as e:
                    if e.code == ErrorCode.not_coordinator:
                        return
                    log.warning("transaction %s: writing its completion failed (retrying): %s", txn_id, e)
                finally:
                    shard.pending.discard(txn_id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    # --- timeouts and expiration ---------------------------------------------------------------
    async def _run_timeouts(self) -> None:
        while True:
            await asyncio.sleep(self.config.abort_interval_ms / 1000)
            try:
                await self.abort_timed_out()
                await self.expire_ids()
            except Exception:
                log.exception("transaction timeout pass failed")

    async def abort_timed_out(self) -> int:
        """Abort (with an epoch bump, fencing the producer) every ongoing transaction past its timeout."""
        aborted = 0
        now = now_ms()
        for shard in list(self.shards.values()):
            if not shard.active:
                continue
            for txn_id, meta in list(shard.txns.items()):
                if txn_id in shard.pending or not sm.timed_out(meta, now):
                    continue
                log.info("transaction %s (producer %d epoch %d) timed out after %d ms: aborting", txn_id,
                         meta.producer_id, meta.producer_epoch, meta.timeout_ms)
                code = await self._decide_and_write(
                    shard, txn_id, sm.Decision(ErrorCode.none, sm.fence_and_abort(meta, now), markers=True)
                )
                if code == ErrorCode.none:
                    aborted += 1
        return aborted

    async def expire_ids(self) -> int:
        """Forget (tombstone) transactional ids idle for transactional.id.expiration.ms."""
        expired = 0
        now = now_ms()
        for shard in list(self.shards.values()):
            if not shard.active:
                continue
            for txn_id, meta in list(shard.txns.items()):
                if txn_id in shard.pending or not sm.expired(meta, now, self.config.id_expiration_ms):
                    continue
                shard.pending.add(txn_id)
                try:
                    await shard.write(None, txn_id)
                    expired += 1
                except TxnError as e:
                    log.warning("expiring transactional id %s failed: %s", txn_id, e)
                finally:
                    shard.pending.discard(txn_id)
        return expired

    # --- admin ---------------------------------------------------------------------------------
    def describe(self, transactional_id: str) -> sm.TxnMetadata | None:
        """The id's metadata; raises TxnError when its shard is not served here; None when unknown."""
        return self.shard_for(transactional_id).txns.get(transactional_id)

    def list_transactions(
        self, states: Sequence[str] = (), producer_ids: Sequence[int] = (), min_duration_ms: int = -1,
        pattern: str | None = None,
    ) -> tuple[ErrorCode, list[str], list[ListedTxn]]:
        """(error, unknown state filters, transactions) over the shards loaded here. ``pattern``: a regular
        expression the whole id must match (ListTransactions v2); a bad one raises re.error."""
        unknown = [s for s in states if s not in sm.STATE_BY_NAME]
        wanted = {sm.STATE_BY_NAME[s] for s in states if s in sm.STATE_BY_NAME}
        if states and not wanted:
            return ErrorCode.none, unknown, []
        regex = re.compile(pattern) if pattern else None
        pids = set(producer_ids)
        now = now_ms()
        out: list[ListedTxn] = []
        for shard in self.shards.values():
            if not shard.active:
                continue
            for txn_id, meta in shard.txns.items():
                if wanted and meta.state not in wanted:
                    continue
                if pids and meta.producer_id not in pids:
                    continue
                if min_duration_ms >= 0 and (meta.start_ms < 0 or now - meta.start_ms < min_duration_ms):
                    continue
                if regex is not None and regex.fullmatch(txn_id) is None:
                    continue
                out.append(ListedTxn(txn_id, meta.producer_id, meta.state.kafka_name))
        out.sort(key=lambda t: t.transactional_id)
        code = ErrorCode.coordinator_load_in_progress if self._loading else ErrorCode.none
        return code, unknown, out
