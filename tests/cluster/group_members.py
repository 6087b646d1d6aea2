"""confluent-kafka group members and a committed-offsets monitor for the cluster tests (threads).

``Member`` consumes a topic of numbered records as a member of a group with synchronous commits, so a test can
check that every record was consumed at least once and count re-deliveries; ``Monitor`` reads the group's
committed offsets (OffsetFetch) over and over and records any that go backwards (a lost commit).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition


class Member(threading.Thread):
    """One group member: polls, records the number each record starts with (up to 10 digits), commits
    synchronously every 0.3 s while it has read something new; failed commits are counted (the next one covers
    them), as are assignments."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topic: str,
        group: str,
        consumed: list[int],
        stop: threading.Event,
        protocol: str = "classic",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.consumed = consumed  # shared; list.append is atomic
        self.stop_event = stop
        self.leave = threading.Event()  # this member alone leaves the group
        self.protocol = protocol
        self.commit_errors: list[str] = []
        self.commits = 0
        self.rebalances = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e

    def _run(self) -> None:
        def on_assign(consumer: Any, partitions: Any) -> None:
            self.rebalances += 1

        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "group.protocol": self.protocol,
        }  # fmt: skip
        if self.protocol == "classic":  # KIP-848 members take these from the broker
            conf.update({"session.timeout.ms": 10_000, "heartbeat.interval.ms": 500})
        c = Consumer(conf)
        c.subscribe([self.topic], on_assign=on_assign)
        last_commit = time.monotonic()
        dirty = False
        try:
            while not (self.stop_event.is_set() or self.leave.is_set()):
                msg = c.poll(0.2)
                if msg is not None and msg.error() is None:
                    self.consumed.append(int(msg.value()[:10]))
                    dirty = True
                if dirty and time.monotonic() - last_commit > 0.3:
                    last_commit = time.monotonic()
                    try:
                        c.commit(asynchronous=False)
                        self.commits += 1
                        dirty = False
                    except KafkaException as e:  # retried by the next commit; counted and reported
                        self.commit_errors.append(str(e.args[0]))
            if dirty:
                try:
                    c.commit(asynchronous=False)
                except KafkaException as e:
                    self.commit_errors.append(str(e.args[0]))
        finally:
            c.close()


class Monitor(threading.Thread):
    """Reads the group's committed offsets (OffsetFetch) over and over; records any that went backwards."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group: str, stop: threading.Event) -> None:
        super().__init__(name="monitor", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.group = group
        self.stop_event = stop
        self.high: dict[int, int] = {}
        self.backwards: list[str] = []
        self.reads = 0
        self.failed_reads = 0

    def run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False})
        try:
            while not self.stop_event.is_set():
                self.read_once(c)
                self.stop_event.wait(0.1)
            self.read_once(c)
        finally:
            c.close()

    def read_once(self, c: Consumer) -> None:
        try:
            got = c.committed([TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=5)
        except KafkaException:
            self.failed_reads += 1
            return
        self.reads += 1
        for tp in got:
            if tp.error is not None or tp.offset < 0:
                continue
            before = self.high.get(tp.partition, -1)
            if tp.offset < before:
                self.backwards.append(f"partition {tp.partition}: {before} -> {tp.offset}")
            self.high[tp.partition] = max(before, tp.offset)
