"""Issue 14, must-shows 1, 3 and 4 against ``tidelog run``: real clients' transactional flows.

Must-show 1: confluent-kafka's and kafka-python's transactional integration tests, as those projects run them
(commit, abort, abort-then-retry-commit, send_offsets_to_transaction in a consume-transform-produce step, the
kafka-python abort/commit pair and its committed/aborted send_offsets pair), each checked by exact record sets:
a read_committed consumer sees exactly the committed values (never an aborted one), a read_uncommitted consumer
sees the aborted ones too, and each transaction ends in a control batch (attributes 0x30) whose control key
says COMMIT or ABORT. Two producers with open transactions interleaved on one partition, one aborting and one
committing, check the aborted-transaction filtering where aborted and committed records alternate.

Must-show 3: zombie fencing. A second producer with the same transactional.id fences the first: the older one's
next send/commit fails with PRODUCER_FENCED or INVALID_PRODUCER_EPOCH (librdkafka reports both as its fatal
``_FENCED``; kafka-python raises the broker's error class, whose errno is the broker's code), and nothing it wrote
after being fenced is visible to read_committed (nor stored at all).

Must-show 4: a transaction left open past transaction.timeout.ms is aborted by the coordinator: the last stable
offset (ListOffsets latest, read_committed) advances from the open transaction's first offset to the high
watermark, a read_committed consumer that was held at the LSO proceeds to the records written after it, and
the timed-out records are never delivered to it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KpTP
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError as KpError

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .helpers import Got, confluent_read, create_topic

PARTS = 3
TXN_TIMEOUT_S = 30.0  # hang guard of every client transactional call
CONTROL = 0x20
TRANSACTIONAL = 0x10
ABORT, COMMIT = 0, 1
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
KP_FENCED_ERRNOS = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}  # 90, 47


# --------------------------------------------------------------------------- helpers


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _topic(bootstrap: str, prefix: str, partitions: int = PARTS) -> str:
    name = _name(prefix)
    create_topic(bootstrap, name, partitions)
    return name


def txn_producer(bootstrap: str, tid: str, errors: list[str] | None = None, **extra: object) -> Producer:
    """A confluent-kafka transactional producer; global errors go to ``errors`` (printed on failure)."""
    sink = errors if errors is not None else []
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "transactional.id": tid,
        "linger.ms": 5,
        "error_cb": lambda err: sink.append(str(err)),
    }
    conf.update(extra)
    return Producer(conf)


def produce_in_txn(producer: Producer, topic: str, values: list[bytes], partitions: int = PARTS) -> list[str]:
    """begin_transaction, value i to partition i % partitions (key = value), flush; the delivery errors."""
    failed: list[str] = []

    def report(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    producer.begin_transaction()
    for i, v in enumerate(values):
        producer.produce(topic, value=v, key=v, partition=i % partitions, on_delivery=report)
        producer.poll(0)
    producer.flush(TXN_TIMEOUT_S)
    return failed


def vals(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:04d}".encode() for i in range(n)]


def settle(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> dict[int, int]:
    """Until read_committed ListOffsets equals the high watermark on every partition (hang guard ``timeout``);
    the high watermarks. EndTxn answers once the outcome is decided, and the coordinator writes the markers
    after that (as Kafka does), so right after commit_transaction returns the LSO may still lag for a moment."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        hw = list_offsets(admin, topic, range(partitions), committed=False)
        lso = list_offsets(admin, topic, range(partitions), committed=True)
        if lso == hw:
            return hw
        assert time.monotonic() < deadline, f"{topic}: LSO {lso} never reached the high watermarks {hw}"
        time.sleep(0.05)


def read(bootstrap: str, topic: str, committed: bool, partitions: int = PARTS) -> list[Got]:
    """Every record of ``topic`` from offset 0 up to each partition's end as the isolation level sees it, once
    no transaction is open on it (see settle)."""
    settle(bootstrap, topic, partitions)
    level = "read_committed" if committed else "read_uncommitted"
    return confluent_read(bootstrap, topic, range(partitions), start=OFFSET_BEGINNING, timeout=60.0,
                          **{"isolation.level": level})  # fmt: skip


def per_partition(got: list[Got]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for g in sorted(got, key=lambda g: (g.partition, g.offset)):
        out.setdefault(g.partition, []).append(g.value or b"")
    return out


def expected_layout(values: list[bytes], partitions: int = PARTS) -> dict[int, list[bytes]]:
    """Where produce_in_txn put ``values``: partition -> values in order (empty partitions left out)."""
    out: dict[int, list[bytes]] = {}
    for i, v in enumerate(values):
        out.setdefault(i % partitions, []).append(v)
    return out


def merge(*layouts: dict[int, list[bytes]]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for layout in layouts:
        for p, vs in layout.items():
            out.setdefault(p, []).extend(vs)
    return out


def control_markers(bootstrap: str, topic: str, partition: int) -> list[tuple[int, int]]:
    """(offset, control type) of every control batch of the partition, from a raw read_uncommitted Fetch."""
    out = []
    for b in kw.fetch_all_batches(bootstrap, topic, partition, timeout=60.0):
        if b.attributes & CONTROL:
            assert b.attributes & TRANSACTIONAL, f"control batch at {b.base_offset} without the transactional bit"
            assert len(b.records) == 1, f"control batch at {b.base_offset}: {len(b.records)} records"
            offset, _ts, key, _value, _headers = b.records[0]
            assert key is not None and len(key) == 4, f"control key {key!r}"
            version, kind = int.from_bytes(key[:2], "big"), int.from_bytes(key[2:], "big")
            assert version == 0, f"control key version {version}"
            out.append((offset, kind))
    return out


def list_offsets(admin: AdminClient, topic: str, partitions: range, committed: bool) -> dict[int, int]:
    """ListOffsets(latest) per partition at the isolation level: the LSO for read_committed, else the HW."""
    level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                 isolation_level=level, request_timeout=30)  # fmt: skip
    return {tp.partition: f.result(30).offset for tp, f in futures.items()}


def fenced(exc: KafkaException) -> bool:
    err = exc.args[0]
    return isinstance(err, KafkaError) and err.code() in FENCED_CODES


@dataclasses.dataclass(frozen=True)
class ZombieOutcome:
    """What a fenced producer got when it carried on: delivery reports of its sends, and the error (None:
    success) of commit_transaction, of the abort_transaction after it, and of a whole new transaction."""

    delivered: int
    delivery_errors: list[int]
    commit: KafkaException | None
    abort: KafkaException | None
    retry: KafkaException | None


def zombie_carries_on(zombie: Producer, topic: str, partitions: int = PARTS) -> ZombieOutcome:
    """Drive a (fenced) producer that has an open transaction on ``topic`` as an application would: send
    6 records (``zombie-*``), commit; on failure abort; then begin, send 6 more (``zombie-retry-*``), commit."""
    reports: list[KafkaError | None] = []
    refused: list[KafkaException] = []
    flush_errors: list[str] = []

    def attempt(call: Callable[[], object]) -> KafkaException | None:
        try:
            call()
        except KafkaException as e:
            return e
        return None

    def send(prefix: str) -> None:
        for i, v in enumerate(vals(prefix, 6)):
            try:  # a producer in a fatal state refuses at once
                zombie.produce(topic, value=v, partition=i % partitions, on_delivery=lambda e, _m: reports.append(e))
            except KafkaException as e:
                refused.append(e)
            zombie.poll(0)
        try:
            zombie.flush(TXN_TIMEOUT_S)
        except (KafkaException, SystemError) as e:  # fenced: the binding raises out of flush (fatal error)
            flush_errors.append(repr(e))

    send("zombie")
    commit = attempt(lambda: zombie.commit_transaction(TXN_TIMEOUT_S))
    abort = attempt(lambda: zombie.abort_transaction(TXN_TIMEOUT_S)) if commit is not None else None

    def new_transaction() -> None:
        zombie.begin_transaction()
        send("zombie-retry")
        zombie.commit_transaction(TXN_TIMEOUT_S)

    retry = attempt(new_transaction)
    errors = sorted({e.code() for e in reports if e is not None} | {e.args[0].code() for e in refused})
    return ZombieOutcome(sum(1 for e in reports if e is None), errors, commit, abort, retry)


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[AdminClient]:
    """A confluent-kafka AdminClient held for the whole test (it cancels its futures when collected)."""
    yield AdminClient({"bootstrap.servers": broker.bootstrap})


# --------------------------------------------------------------------------- must-show 1: confluent-kafka


def test_confluent_commit_transaction(broker: BrokerProcess) -> None:
    topic = _topic(broker.bootstrap, "txc-commit")
    p = txn_producer(broker.bootstrap, _name("tid"))
    p.init_transactions(TXN_TIMEOUT_S)
    values = vals("c", 100)
    assert produce_in_txn(p, topic, values) == []
    p.commit_transaction(TXN_TIMEOUT_S)

    want = expected_layout(values)
    assert per_partition(read(broker.bootstrap, topic, committed=True)) == want
    assert per_partition(read(broker.bootstrap, topic, committed=False)) == want
    for part, vs in want.items():  # the records at 0..n-1, then the COMMIT marker
        assert control_markers(broker.bootstrap, topic, part) == [(len(vs), COMMIT)]


def test_confluent_abort_transaction(broker: BrokerProcess, admin: AdminClient) -> None:
    topic = _topic(broker.bootstrap, "txc-abort")
    p = txn_producer(broker.bootstrap, _name("tid"))
    p.init_transactions(TXN_TIMEOUT_S)
    values = vals("a", 100)
    assert produce_in_txn(p, topic, values) == []
    p.abort_transaction(TXN_TIMEOUT_S)

    assert read(broker.bootstrap, topic, committed=True) == []
    assert per_partition(read(broker.bootstrap, topic, committed=False)) == expected_layout(values)
    hw = list_offsets(admin, topic, range(PARTS), committed=False)
    assert list_offsets(admin, topic, range(PARTS), committed=True) == hw  # no open txn: LSO = HW
    for part, vs in expected_layout(values).items():
        assert control_markers(broker.bootstrap, topic, part) == [(len(vs), ABORT)]
        assert hw[part] == len(vs) + 1


def test_confluent_abort_then_retry_commit(broker: BrokerProcess) -> None:
    topic = _topic(broker.bootstrap, "txc-retry")
    p = txn_producer(broker.bootstrap, _name("tid"))
    p.init_transactions(TXN_TIMEOUT_S)
    aborted, committed = vals("aborted", 100), vals("committed", 25)
    assert produce_in_txn(p, topic, aborted) == []
    p.abort_transaction(TXN_TIMEOUT_S)
    assert produce_in_txn(p, topic, committed) == []
    p.commit_transaction(TXN_TIMEOUT_S)

    assert per_partition(read(broker.bootstrap, topic, committed=True)) == expected_layout(committed)
    assert per_partition(read(broker.bootstrap, topic, committed=False)) == merge(
        expected_layout(aborted), expected_layout(committed)
    )
    for part in range(PARTS):
        kinds = [k for _o, k in control_markers(broker.bootstrap, topic, part)]
        assert kinds == [ABORT, COMMIT], (part, kinds)


def test_confluent_send_offsets_consume_transform_produce(broker: BrokerProcess) -> None:
    """The consume-transform-produce step of confluent-kafka's test_send_offsets_committed_transaction: the
    consumer's positions go into the transaction with the output, are committed with it, and an aborted
    transaction's offsets never become the group's committed offsets."""
    bootstrap = broker.bootstrap
    source, sink = _topic(bootstrap, "txc-in"), _topic(bootstrap, "txc-out")
    seed = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    inputs = vals("in", 60)
    for i, v in enumerate(inputs):
        seed.produce(source, value=v, partition=i % PARTS)
    assert seed.flush(30) == 0

    group, tid = _name("ctp-group"), _name("ctp-tid")
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_committed",
    })  # fmt: skip
    consumed: list[tuple[int, bytes]] = []
    try:
        consumer.subscribe([source])
        eof: set[int] = set()
        deadline = time.monotonic() + 60
        while len(eof) < PARTS and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise KafkaException(err)
            eof.discard(msg.partition())
            consumed.append((msg.partition(), msg.value() or b""))
        assert sorted(v for _p, v in consumed) == sorted(inputs)

        producer = txn_producer(bootstrap, tid)
        producer.init_transactions(TXN_TIMEOUT_S)
        transformed = [v.upper() for _p, v in consumed]
        assert produce_in_txn(producer, sink, transformed) == []
        positions = consumer.position(consumer.assignment())
        assert sorted((tp.partition, tp.offset) for tp in positions) == [(p, 20) for p in range(PARTS)]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
        producer.commit_transaction(TXN_TIMEOUT_S)

        # A second transaction sends offsets 5 and output, then aborts: neither may become visible.
        extra = vals("ABORTED-OUT", 9)
        assert produce_in_txn(producer, sink, extra) == []
        rewind = [TopicPartition(source, p, 5) for p in range(PARTS)]
        producer.send_offsets_to_transaction(rewind, consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
        producer.abort_transaction(TXN_TIMEOUT_S)

        # As confluent's test does: a new instance's init_transactions completes anything pending first.
        producer2 = txn_producer(bootstrap, tid)
        producer2.init_transactions(TXN_TIMEOUT_S)
        committed = consumer.committed([TopicPartition(source, p) for p in range(PARTS)], timeout=30)
        assert sorted((tp.partition, tp.offset) for tp in committed) == [(p, 20) for p in range(PARTS)]
    finally:
        consumer.close()

    assert per_partition(read(bootstrap, sink, committed=True)) == expected_layout(transformed)
    assert per_partition(read(bootstrap, sink, committed=False)) == merge(
        expected_layout(transformed), expected_layout(extra)
    )


def test_interleaved_transactions_one_aborted_one_committed(broker: BrokerProcess) -> None:
    """Two producers' open transactions interleave on one partition; one aborts, one commits. read_committed
    (confluent-kafka and kafka-python) sees exactly the committed ones in order; read_uncommitted all."""
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txc-interleave", 1)
    a, b = txn_producer(bootstrap, _name("tid-a")), txn_producer(bootstrap, _name("tid-b"))
    a.init_transactions(TXN_TIMEOUT_S)
    b.init_transactions(TXN_TIMEOUT_S)
    a.begin_transaction()
    b.begin_transaction()
    order: list[bytes] = []
    for i in range(6):  # a, b, a, b ... each flushed so the log alternates batch by batch
        for who, prod in (("a", a), ("b", b)):
            v = f"{who}-{i}".encode()
            prod.produce(topic, value=v, partition=0)
            assert prod.flush(TXN_TIMEOUT_S) == 0
            order.append(v)
    a.abort_transaction(TXN_TIMEOUT_S)
    b.commit_transaction(TXN_TIMEOUT_S)
    b_values = [v for v in order if v.startswith(b"b-")]

    assert [g.value for g in read(bootstrap, topic, True, 1)] == b_values
    assert [g.value for g in read(bootstrap, topic, False, 1)] == order
    assert [v for v in kafka_python_values(bootstrap, topic, 1, "read_committed", len(b_values))] == b_values
    assert [v for v in kafka_python_values(bootstrap, topic, 1, "read_uncommitted", len(order))] == order
    assert sorted(k for _o, k in control_markers(bootstrap, topic, 0)) == [ABORT, COMMIT]


# --------------------------------------------------------------------------- must-show 1: kafka-python


def kafka_python_values(bootstrap: str, topic: str, partitions: int, isolation: str, expect: int) -> list[bytes]:
    """Values of ``topic`` (partition order, then offset) read by kafka-python at ``isolation``; reads until
    ``expect`` values arrived or 3 s pass without one (so a read that should stop short shows what it got)."""
    settle(bootstrap, topic, partitions)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level=isolation,
                             consumer_timeout_ms=3000)  # fmt: skip
    got: list[tuple[int, int, bytes]] = []
    try:
        consumer.assign([KpTP(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + 60
        for msg in consumer:
            got.append((msg.partition, msg.offset, msg.value))
            if len(got) >= expect or time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return [v for _p, _o, v in sorted(got)]


def test_kafka_python_transactional_producer_messages(broker: BrokerProcess) -> None:
    """kafka-python's test_transactional_producer_messages: abort msg1, msg2; commit msg3, msg4."""
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txk-messages", 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=_name("kp-tid"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, partition=0, value=b"msg1").get(TXN_TIMEOUT_S)
        producer.send(topic, partition=0, value=b"msg2").get(TXN_TIMEOUT_S)
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, partition=0, value=b"msg3").get(TXN_TIMEOUT_S)
        producer.send(topic, partition=0, value=b"msg4").get(TXN_TIMEOUT_S)
        producer.commit_transaction()
    finally:
        producer.close(10)

    assert kafka_python_values(bootstrap, topic, 1, "read_committed", 2) == [b"msg3", b"msg4"]
    assert kafka_python_values(bootstrap, topic, 1, "read_uncommitted", 4) == [b"msg1", b"msg2", b"msg3", b"msg4"]
    assert [g.value for g in read(bootstrap, topic, True, 1)] == [b"msg3", b"msg4"]
    # msg1, msg2 at 0-1, ABORT at 2, msg3, msg4 at 3-4, COMMIT at 5
    assert control_markers(bootstrap, topic, 0) == [(2, ABORT), (5, COMMIT)]


def test_kafka_python_transactional_producer_offsets(broker: BrokerProcess) -> None:
    """kafka-python's test_transactional_producer_offsets: committed send_offsets are the group's offsets, an
    aborted one's are not (read back with kafka-python's admin and confluent-kafka's consumer)."""
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txk-offsets", 2)
    group = _name("kp-txn-group")
    tp0, tp1 = KpTP(topic, 0), KpTP(topic, 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=_name("kp-tid"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, partition=0, value=b"msg1").get(TXN_TIMEOUT_S)
        producer.send_offsets_to_transaction({tp0: OffsetAndMetadata(0, "metadata", 0)}, group)
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send_offsets_to_transaction({tp1: OffsetAndMetadata(1, "bad", 1)}, group)
        producer.abort_transaction()
    finally:
        producer.close(10)

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert offsets == {tp0: OffsetAndMetadata(offset=0, metadata="metadata", leader_epoch=0)}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed"})
    try:
        committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=30)
    finally:
        consumer.close()
    assert [(tp.partition, tp.offset) for tp in committed] == [(0, 0), (1, -1001)]  # -1001: none committed
    assert committed[0].metadata == "metadata"
    assert kafka_python_values(bootstrap, topic, 1, "read_committed", 1) == [b"msg1"]


# --------------------------------------------------------------------------- must-show 3: zombie fencing


def test_confluent_zombie_is_fenced(broker: BrokerProcess) -> None:
    """Producer A has an open transaction when producer B (same transactional.id) initialises: B's
    InitProducerId bumps the epoch and aborts A's transaction. A's next sends and its commit fail fenced; a
    read_committed consumer sees B's records only; A's writes after the fence are not in the log at all."""
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txc-zombie")
    tid = _name("zombie")
    a_errors: list[str] = []
    a = txn_producer(bootstrap, tid, a_errors)
    a.init_transactions(TXN_TIMEOUT_S)
    before = vals("a-committed", 6)
    assert produce_in_txn(a, topic, before) == []
    a.commit_transaction(TXN_TIMEOUT_S)
    open_values = vals("a-open", 6)
    assert produce_in_txn(a, topic, open_values) == []  # A's open transaction, durable, not committed

    b = txn_producer(bootstrap, tid)
    b.init_transactions(TXN_TIMEOUT_S)  # fences A and aborts its open transaction
    b_values = vals("b", 6)
    assert produce_in_txn(b, topic, b_values) == []
    b.commit_transaction(TXN_TIMEOUT_S)

    # The zombie carries on as if nothing happened: sends in its transaction, commit, abort, a new transaction.
    outcome = zombie_carries_on(a, topic)
    print(f"zombie: {outcome}; error_cb: {a_errors[:3]}")
    assert outcome.delivered == 0  # no zombie send was acknowledged
    # the broker's own refusal of the zombie's sends, as librdkafka reports it per record
    assert set(outcome.delivery_errors) & {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
    assert outcome.commit is not None and fenced(outcome.commit), outcome.commit
    assert outcome.retry is not None, "the zombie committed a new transaction after being fenced"

    want = merge(expected_layout(before), expected_layout(b_values))
    assert per_partition(read(bootstrap, topic, committed=True)) == want
    assert per_partition(read(bootstrap, topic, committed=False)) == merge(
        expected_layout(before), expected_layout(open_values), expected_layout(b_values)
    )


def test_kafka_python_zombie_is_fenced(broker: BrokerProcess) -> None:
    """The same with kafka-python, whose exceptions carry the broker's error code: the zombie's send or
    commit fails with PRODUCER_FENCED (90) or INVALID_PRODUCER_EPOCH (47)."""
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txk-zombie", 1)
    tid = _name("kp-zombie")
    a = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    b = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    try:
        a.init_transactions()
        a.begin_transaction()
        a.send(topic, partition=0, value=b"a-open").get(TXN_TIMEOUT_S)
        b.init_transactions()
        b.begin_transaction()
        b.send(topic, partition=0, value=b"b-1").get(TXN_TIMEOUT_S)
        b.commit_transaction()

        send_error = commit_error = None
        try:
            a.send(topic, partition=0, value=b"a-zombie").get(TXN_TIMEOUT_S)
        except KpError as e:
            send_error = e
        try:
            a.commit_transaction()
        except KpError as e:
            commit_error = e
        print(f"zombie send: {send_error!r} (errno {getattr(send_error, 'errno', None)}); commit: {commit_error!r}")
        # The first refusal carries the broker's code; after it kafka-python refuses on its own (fatal state).
        first = send_error if send_error is not None else commit_error
        assert first is not None, "the zombie's send and commit both succeeded"
        assert getattr(first, "errno", None) in KP_FENCED_ERRNOS, repr(first)
        assert commit_error is not None, "the zombie's commit succeeded"
    finally:
        a.close(5)
        b.close(5)

    assert kafka_python_values(bootstrap, topic, 1, "read_committed", 1) == [b"b-1"]
    assert kafka_python_values(bootstrap, topic, 1, "read_uncommitted", 2) == [b"a-open", b"b-1"]


# --------------------------------------------------------------------------- must-show 4: timeout abort


TIMEOUT_MS = 4000
CLEANUP_KEYS = ("transaction.abort.timed.out.transaction.cleanup.interval.ms",)


def _broker_keys() -> set[str]:
    from brokers.config import BrokerConfig

    return {str(f.metadata.get("key")) for f in dataclasses.fields(BrokerConfig) if f.metadata.get("key")}


def test_open_transaction_past_its_timeout_is_aborted_and_the_lso_advances(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """A producer opens a transaction on partition 0, writes 5 records and goes silent; a plain producer then
    writes 5 more. While the transaction is open, read_committed ListOffsets answers its first offset (0) and
    a read_committed consumer gets nothing; after transaction.timeout.ms the coordinator aborts it: an ABORT
    marker follows, the LSO equals the high watermark, the consumer proceeds with exactly the 5 plain records,
    and the silent producer's commit fails."""
    keys = _broker_keys()
    configs = {k: "500" for k in CLEANUP_KEYS if k in keys}  # scan often where the broker lets us say so
    broker = broker_factory(configs=configs)
    bootstrap = broker.bootstrap
    topic = _topic(bootstrap, "txc-timeout", 1)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    hanging = txn_producer(bootstrap, _name("hang"), **{"transaction.timeout.ms": TIMEOUT_MS})
    hanging.init_transactions(TXN_TIMEOUT_S)
    opened = time.monotonic()
    assert produce_in_txn(hanging, topic, vals("hang", 5), partitions=1) == []
    plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    after = vals("after", 5)
    for v in after:
        plain.produce(topic, value=v, partition=0)
    assert plain.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": _name("g"), "isolation.level": "read_committed",
                         "enable.auto.commit": False})  # fmt: skip
    got: list[tuple[int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        lso_open = list_offsets(admin, topic, range(1), committed=True)[0]
        early = [(m.offset(), m.value()) for m in consumer.consume(100, 0.5) if m.error() is None]
        still_open = time.monotonic() - opened < TIMEOUT_MS / 1000  # only then must it still be open
        print(f"while open ({time.monotonic() - opened:.1f} s): LSO {lso_open}, read_committed got {early}")
        if still_open:
            assert lso_open == 0
            assert early == []
        got.extend((o, v or b"") for o, v in early)

        deadline = time.monotonic() + 90  # hang guard: the coordinator's scan interval plus the timeout
        lso, hw = lso_open, -1
        while time.monotonic() < deadline:
            hw = list_offsets(admin, topic, range(1), committed=False)[0]
            lso = list_offsets(admin, topic, range(1), committed=True)[0]
            if lso == hw and lso > 0:
                break
            time.sleep(0.25)
        aborted_after = time.monotonic() - opened
        print(f"LSO {lso_open} -> {lso} (HW {hw}) {aborted_after:.1f} s after the transaction opened "
              f"(transaction.timeout.ms={TIMEOUT_MS}, broker configs {configs})")  # fmt: skip
        assert (lso, hw) == (11, 11)  # hang 0-4, after 5-9, ABORT marker at 10
        deadline = time.monotonic() + 30
        while len(got) < len(after) and time.monotonic() < deadline:
            got.extend((m.offset(), m.value() or b"") for m in consumer.consume(100, 0.5) if m.error() is None)
    finally:
        consumer.close()
    assert got == list(zip(range(5, 10), after, strict=True))
    assert control_markers(bootstrap, topic, 0) == [(10, ABORT)]
    with pytest.raises(KafkaException) as late:
        hanging.commit_transaction(TXN_TIMEOUT_S)
    print(f"the timed-out producer's commit: {late.value.args[0]!r}")
