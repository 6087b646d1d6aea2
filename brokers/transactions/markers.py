"""Completing a transaction: its COMMIT or ABORT control marker made durable on every partition in it.

Partitions this broker leads get the marker through ``brokers.txn_markers.write_markers`` (the partition
log's own append, no network); partitions led elsewhere get a WriteTxnMarkers request sent to their leader,
as Kafka's coordinator does. Leaders are read from ``broker.routing`` on every round, so a partition that
moves or fails over mid-way is retried at its new leader. ``send`` returns only once every marker is durable
(or its topic was deleted meanwhile); until then the transaction stays PrepareCommit/PrepareAbort, and if this
broker loses the ``__transaction_state`` partition first, the next owner replays that state and sends again.
A partition that already holds the marker (a resend) appends it again, which is harmless: the producer has no
open transaction there any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, UnsupportedVersion
from brokers.handlers.base import make
from brokers.routing import Endpoint
from brokers.transactions.peers import Peers
from brokers.txn_markers import write_markers

if TYPE_CHECKING:
    from brokers.broker import Broker

log = logging.getLogger(__name__)
WRITE_TXN_MARKERS = 27
RETRY_MIN_S = 0.05
RETRY_MAX_S = 1.0
TP = tuple[str, int]
LocalMarkers = Callable[["Broker", int, int, bool, int, Sequence[TP]], Awaitable[dict[TP, ErrorCode]]]
"""``brokers.txn_markers.write_markers``'s signature (the partition side, issue 14's plan)."""

DONE = frozenset({ErrorCode.none})
SUPERSEDED = frozenset({ErrorCode.invalid_producer_epoch})
"""The partition knows a newer epoch of the producer: a later marker or transaction replaced this one."""
FENCED = frozenset({ErrorCode.transaction_coordinator_fenced})


class CoordinatorFenced(Exception):
    """A partition saw markers from a newer coordinator epoch: this broker no longer coordinates the id."""


class MarkerSender:
    """Sends one transaction's markers until every one is durable."""

    def __init__(self, broker: Broker, peers: Peers, local: LocalMarkers = write_markers) -> None:
        self._broker = broker
        self._peers = peers
        self.local = local
        """The partition side for partitions led here (``brokers.txn_markers.write_markers``; tests replace it)."""

    async def send(
        self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, partitions: Sequence[TP]
    ) -> None:
        """Write the marker to every partition, retrying the rest until none is left (cancel to give up)."""
        todo = set(partitions)
        delay = RETRY_MIN_S
        rounds = 0
        while todo:
            results = await self._round(producer_id, producer_epoch, commit, coordinator_epoch, sorted(todo))
            for tp, code in results.items():
                if code in DONE:
                    todo.discard(tp)
                elif code in SUPERSEDED:
                    log.warning("marker for producer %d epoch %d on %s/%d superseded (%s)", producer_id,
                                producer_epoch, tp[0], tp[1], code.name)
                    todo.discard(tp)
                elif code in FENCED:
                    raise CoordinatorFenced(f"{tp[0]}/{tp[1]} answered {code.name}")
                elif code == ErrorCode.unknown_topic_or_partition and not self._exists(tp):
                    todo.discard(tp)  # the topic was deleted: nothing to mark
            if not todo:
                return
            rounds += 1
            if rounds % 20 == 0:
                log.warning("markers for producer %d (%s) still pending on %d partitions after %d rounds: %s",
                            producer_id, "commit" if commit else "abort", len(todo), rounds,
                            {f"{t}/{p}": results.get((t, p), ErrorCode.unknown_server_error).name for t, p in todo})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _exists(self, tp: TP) -> bool:
        topic = self._broker.topics.get(tp[0])
        return topic is not None and 0 <= tp[1] < topic.partitions

    async def _round(
        self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, partitions: list[TP]
    ) -> dict[TP, ErrorCode]:
        """One attempt at every partition still to do, grouped by leader: each answers an error code."""
        routing = self._broker.routing
        local: list[TP] = []
        remote: dict[Endpoint, list[TP]] = {}
        results: dict[TP, ErrorCode] = {}
        for tp in partitions:
            topic = self._broker.topics.get(tp[0])
            if topic is None or not 0 <= tp[1] < topic.partitions:
                results[tp] = ErrorCode.unknown_topic_or_partition
                continue
            leader = routing.leader(topic.topic_id, tp[1])
            endpoint = None if leader is None else routing.endpoint(leader.node_id)
            if leader is None or endpoint is None:
                results[tp] = ErrorCode.leader_not_available
            elif leader.node_id == routing.node_id:
                local.append(tp)
            else:
                remote.setdefault(endpoint, []).append(tp)
        calls: list[Awaitable[dict[TP, ErrorCode]]] = []
        if local:
            calls.append(self._local_round(producer_id, producer_epoch, commit, coordinator_epoch, local))
        calls.extend(
            self._remote(endpoint, producer_id, producer_epoch, commit, coordinator_epoch, tps)
            for endpoint, tps in remote.items()
        )
        for answer in await asyncio.gather(*calls):
            results.update(answer)
        return results

    async def _local_round(
        self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, partitions: list[TP]
    ) -> dict[TP, ErrorCode]:
        """The markers of the partitions this broker leads; an unexpected failure is retried like an outage (the
        transaction must not be left prepared because one attempt raised)."""
        try:
            return await self.local(self._broker, producer_id, producer_epoch, commit, coordinator_epoch, partitions)
        except Exception:
            log.exception("writing markers for producer %d on %s failed (retrying)", producer_id, partitions)
            return dict.fromkeys(partitions, ErrorCode.unknown_server_error)

    async def _remote(
        self, endpoint: Endpoint, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
        partitions: list[TP],
    ) -> dict[TP, ErrorCode]:
        """WriteTxnMarkers to the leader ``endpoint``; an unreachable leader answers every partition retriably."""
        try:
            conn = await self._peers.connection(endpoint)
            mod = conn.module(WRITE_TXN_MARKERS, 1, 2)
            by_topic: dict[str, list[int]] = {}
            for topic, partition in partitions:
                by_topic.setdefault(topic, []).append(partition)
            marker = make(
                mod.WritableTxnMarker, producer_id=producer_id, producer_epoch=producer_epoch,
                transaction_result=commit, coordinator_epoch=coordinator_epoch,
                topics=tuple(make(mod.WritableTxnMarkerTopic, name=t, partition_indexes=tuple(ps))
                             for t, ps in by_topic.items()),
            )
            resp: Any = await conn.send(make(mod.WriteTxnMarkersRequest, markers=(marker,)))
        except UnsupportedVersion as e:
            log.warning("markers to broker %d: %s", endpoint.node_id, e)
            return dict.fromkeys(partitions, ErrorCode.unsupported_version)
        except ClientError as e:
            log.info("markers to broker %d failed (retrying): %s", endpoint.node_id, e)
            await self._peers.drop(endpoint)
            return dict.fromkeys(partitions, ErrorCode.request_timed_out)
        out = dict.fromkeys(partitions, ErrorCode.unknown_server_error)
        for m in resp.markers:
            for t in m.topics:
                for p in t.partitions:
                    if (t.name, int(p.partition_index)) in out:
                        out[(t.name, int(p.partition_index))] = ErrorCode(p.error_code)
        return out
