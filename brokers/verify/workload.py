"""The verify workload: idempotent acks=all producers writing unique integers, a group consumer that commits,
an assign consumer reading from offset 0, an observer of partition leaders, and a final read — all recorded
as a history (brokers/verify/history.py) for brokers/verify/checker.py.

It talks only the Kafka protocol (confluent-kafka, and brokers/cli/client.py for Metadata with leader epochs),
so it runs against any Kafka-compatible cluster. ``Workload.stop`` ends it early (a nemesis, Ctrl-C); every
loop is bounded by the configured duration and timeouts. Values are ``producer * 10**9 + n``: unique, and
the producer that wrote one can be read off it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from brokers.cli.client import KafkaClient, parse_bootstrap
from brokers.verify.history import ASSIGN, COMMIT, FINAL_READ, INFO, INVOKE, LEADER, OK, POLL, SEND, HistoryWriter

log = logging.getLogger("tidelog.verify")
VALUE_STRIDE = 10**9
TOPIC_TIMEOUT = 30.0


@dataclass(frozen=True)
class WorkloadConfig:
    """What to run; every wait is bounded by one of these."""

    bootstrap: str
    topic: str
    partitions: int = 3
    duration: float = 10.0
    producers: int = 2
    rate: float = 100.0
    """Sends per second per producer (small: the point is correctness under faults, not throughput)."""
    max_sends: int | None = None
    """Per producer; None: as many as the duration allows."""
    group: str | None = None
    drain_timeout: float = 30.0
    """After the producers stop, how long consumers may take to read every acknowledged value."""
    final_read_timeout: float = 60.0
    message_timeout_ms: int = 60_000
    """A send not acknowledged in this time is given up (recorded as indeterminate)."""
    observe_leaders: bool = True


def client_config(bootstrap: str, **settings: Any) -> dict[str, Any]:
    """librdkafka's log lines (connection refused while a broker is down...) go to logging, not stderr.

    ``TIDELOG_VERIFY_CLIENT_DEBUG`` (e.g. ``eos,msg``) turns on librdkafka's debug contexts for every client
    of the workload, logged at DEBUG to ``tidelog.verify.rdkafka`` (run with ``--log-level DEBUG``): what to
    read when the checker finds an anomaly and the question is what the client sent."""
    debug = os.environ.get("TIDELOG_VERIFY_CLIENT_DEBUG", "")
    extra = {"debug": debug} if debug else {}
    return {"bootstrap.servers": bootstrap, "logger": logging.getLogger("tidelog.verify.rdkafka"), **extra, **settings}


class Workload:
    """Run the clients for ``config.duration`` seconds, drain, final-read; events go to ``writer``."""

    def __init__(self, config: WorkloadConfig, writer: HistoryWriter) -> None:
        self.config = config
        self.writer = writer
        self.stop = threading.Event()
        """Set to end the load phase early."""
        self._producing = threading.Event()
        self._consuming = threading.Event()
        self._lock = threading.Lock()
        self._acked: set[int] = set()
        self._seen: dict[str, set[int]] = {}
        self.errors: list[str] = []
        self.partitions = config.partitions
        """The topic's partition count (an existing topic's own, once run() has begun)."""

    # --- phases ---------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.config
        self.partitions = ensure_topic(cfg.bootstrap, cfg.topic, cfg.partitions)
        self._producing.set()
        self._consuming.set()
        consumers = [self._thread(self._group_consumer, "group-0"), self._thread(self._assign_consumer, "assign-0")]
        observer = self._thread(self._observe_leaders, "leaders") if cfg.observe_leaders else None
        producers = [self._thread(self._producer, f"producer-{i}", i) for i in range(cfg.producers)]
        self.stop.wait(cfg.duration)
        self._producing.clear()
        for t in producers:
            t.join()
        deadline = time.monotonic() + cfg.drain_timeout
        while time.monotonic() < deadline and not self._drained():
            time.sleep(0.2)
        self._consuming.clear()
        for t in consumers:
            t.join()
        if observer is not None:
            observer.join()
        self.final_read()
        self.writer.flush()

    def _thread(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                target(name, *args)
            except Exception as e:  # a client bug must not hang the run; it shows in the report
                log.exception("%s failed", name)
                self.errors.append(f"{name}: {e!r}")

        t = threading.Thread(target=body, name=f"verify-{name}", daemon=True)
        t.start()
        return t

    def _drained(self) -> bool:
        with self._lock:
            return all(self._acked <= seen for seen in self._seen.values())

    def _saw(self, process: str, values: list[int]) -> None:
        with self._lock:
            self._seen.setdefault(process, set()).update(values)

    # --- clients --------------------------------------------------------------------------------
    def _producer(self, process: str, number: int) -> None:
        cfg = self.config
        producer = Producer(client_config(
            cfg.bootstrap, **{"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                              "message.timeout.ms": cfg.message_timeout_ms},
        ))  # fmt: skip
        w, topic = self.writer, cfg.topic

        def delivered(err: KafkaError | None, msg: Message) -> None:
            value = _value(msg)
            if err is not None:  # an idempotent producer's give-up may still have been written: indeterminate
                w.add(process, INFO, SEND, topic=topic, partition=msg.partition(), value=value, error=str(err))
                return
            epoch = msg.leader_epoch()
            w.add(process, OK, SEND, topic=topic, partition=msg.partition(), value=value, offset=msg.offset(),
                  epoch=epoch if epoch is not None and epoch >= 0 else None)  # fmt: skip
            with self._lock:
                self._acked.add(value)

        n = 0
        start = time.monotonic()
        while self._producing.is_set() and (cfg.max_sends is None or n < cfg.max_sends):
            value, partition = number * VALUE_STRIDE + n, n % self.partitions
            w.add(process, INVOKE, SEND, topic=topic, partition=partition, value=value)
            while True:
                try:
                    producer.produce(topic, str(value).encode(), partition=partition, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            n += 1
            producer.poll(0)
            ahead = start + n / cfg.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        left = producer.flush(cfg.message_timeout_ms / 1000 + 5)
        if left:  # never completed: their invocations stay open, which the checker reads as indeterminate
            log.warning("%s: %d sends never completed", process, left)

    def _consume(self, consumer: Consumer, process: str) -> list[tuple[int, int, int, int | None]]:
        try:
            msgs = consumer.consume(200, 0.25)
        except KafkaException as e:
            log.info("%s: poll: %s", process, e)
            return []
        records: list[tuple[int, int, int, int | None]] = []
        for m in msgs:
            partition, offset, epoch = m.partition(), m.offset(), m.leader_epoch()
            if m.error() is not None or partition is None or offset is None:
                continue
            records.append((partition, offset, _value(m), epoch if epoch is not None and epoch >= 0 else None))
        if records:
            # Recorded after the fact: a rebalance inside consume() is recorded before these records.
            self.writer.add(process, INVOKE, POLL, topic=self.config.topic)
            self.writer.add(process, OK, POLL, topic=self.config.topic, records=tuple(records))
            self._saw(process, [r[2] for r in records])
        return records

    def _group_consumer(self, process: str) -> None:
        cfg = self.config
        group = cfg.group or f"verify-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(client_config(
            cfg.bootstrap, **{"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"},
        ))  # fmt: skip
        w, topic = self.writer, cfg.topic

        def assigned(c: Consumer, parts: list[TopicPartition]) -> None:
            w.add(process, OK, ASSIGN, topic=topic, partitions=tuple(sorted(tp.partition for tp in parts)))

        def revoked(c: Consumer, parts: list[TopicPartition]) -> None:
            w.add(process, OK, ASSIGN, topic=topic, partitions=())

        self._saw(process, [])
        consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
        try:
            while self._consuming.is_set():
                records = self._consume(consumer, process)
                nxt: dict[int, int] = {}
                for p, offset, _v, _e in records:
                    nxt[p] = offset + 1
                if not nxt:
                    continue
                offsets = tuple(sorted(nxt.items()))
                w.add(process, INVOKE, COMMIT, topic=topic, group=group, offsets=offsets)
                try:
                    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets], asynchronous=False)
                except KafkaException as e:  # a timed-out commit may have happened
                    w.add(process, INFO, COMMIT, topic=topic, group=group, offsets=offsets, error=str(e))
                else:
                    w.add(process, OK, COMMIT, topic=topic, group=group, offsets=offsets)
        finally:
            consumer.close()

    def _assign_consumer(self, process: str) -> None:
        cfg = self.config
        consumer = Consumer(client_config(
            cfg.bootstrap, **{"group.id": f"verify-assign-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False},
        ))  # fmt: skip
        parts = tuple(range(self.partitions))
        self._saw(process, [])
        consumer.assign([TopicPartition(cfg.topic, p, 0) for p in parts])
        self.writer.add(process, OK, ASSIGN, topic=cfg.topic, partitions=parts)
        try:
            while self._consuming.is_set():
                self._consume(consumer, process)
        finally:
            consumer.close()

    def _observe_leaders(self, name: str) -> None:
        """Each broker's view of who leads each partition at which epoch, recorded when it changes."""
        addresses = parse_bootstrap(self.config.bootstrap)
        last: dict[tuple[str, int], tuple[int, int]] = {}

        async def look(host: str, port: int) -> None:
            process = f"leaders@{host}:{port}"
            async with KafkaClient(f"{host}:{port}", timeout=2.0) as client:
                resp = await client.metadata([self.config.topic])
            for t in resp.topics:
                for p in t.partitions:
                    if int(p.error_code) != 0 or int(p.leader_epoch) < 0:
                        continue
                    seen = (int(p.leader_id), int(p.leader_epoch))
                    if last.get((process, int(p.partition_index))) != seen:
                        last[(process, int(p.partition_index))] = seen
                        self.writer.add(process, OK, LEADER, topic=self.config.topic, partition=int(p.partition_index),
                                        node=seen[0], epoch=seen[1])  # fmt: skip

        async def loop() -> None:
            while self._consuming.is_set():
                for host, port in addresses:
                    with contextlib.suppress(Exception):  # a broker that is down has no view to record
                        await asyncio.wait_for(look(host, port), 3.0)
                await asyncio.sleep(0.5)

        asyncio.run(loop())

    # --- final read -----------------------------------------------------------------------------
    def final_read(self) -> None:
        """Every partition from the log start to its high watermark, by a fresh consumer."""
        cfg, w = self.config, self.writer
        process = "final"
        consumer = Consumer(client_config(
            cfg.bootstrap, **{"group.id": f"verify-final-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False},
        ))  # fmt: skip
        deadline = time.monotonic() + cfg.final_read_timeout
        try:
            high: dict[int, int] = {}
            for p in range(self.partitions):
                while p not in high and time.monotonic() < deadline:
                    try:
                        high[p] = int(consumer.get_watermark_offsets(TopicPartition(cfg.topic, p), timeout=5)[1])
                    except KafkaException as e:
                        log.info("final read: watermarks of %d: %s", p, e)
                        time.sleep(0.5)
            consumer.assign([TopicPartition(cfg.topic, p, OFFSET_BEGINNING) for p in high])
            w.add(process, OK, ASSIGN, topic=cfg.topic, partitions=tuple(sorted(high)))
            reached = dict.fromkeys(high, 0)
            while time.monotonic() < deadline and any(reached[p] < high[p] for p in high):
                for p, offset, _v, _e in self._consume(consumer, process):
                    reached[p] = max(reached[p], offset + 1)
            for p in sorted(high):
                if reached[p] >= high[p]:
                    w.add(process, OK, FINAL_READ, topic=cfg.topic, partition=p, offset=high[p])
                else:
                    w.add(process, INFO, FINAL_READ, topic=cfg.topic, partition=p, offset=reached[p],
                          error=f"reached {reached[p]} of {high[p]} before the deadline")  # fmt: skip
                    self.errors.append(f"final read of partition {p}: reached {reached[p]} of {high[p]}")
            missing = sorted(set(range(self.partitions)) - set(high))
            if missing:
                self.errors.append(f"final read: no high watermark for partitions {missing}")
        finally:
            consumer.close()


def _value(msg: Message) -> int:
    raw = msg.value()
    return int(raw) if isinstance(raw, bytes) and raw.strip(b"-").isdigit() else -1


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout: float = TOPIC_TIMEOUT) -> int:
    """Create the topic unless it exists; once every partition has a leader, return how many there are (an
    existing topic keeps its own count)."""
    admin = AdminClient(client_config(bootstrap))
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=timeout, request_timeout=timeout)  # fmt: skip
    try:
        futures[topic].result(timeout)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    except TimeoutError:
        raise TimeoutError(f"no answer to CreateTopics {topic} from {bootstrap} in {timeout} s") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and md.partitions and all(p.leader >= 0 for p in md.partitions.values()):
            return len(md.partitions)
        time.sleep(0.2)
    raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout} s")
