"""Issue 14 on the three-broker dev cluster: must-show 1 (the clients' transactional flows) and must-show 5
(read_committed of offloaded transactions, served by a broker that did not write them).

One DevCluster (3 brokers, 3 bookies, etcd, moto S3) for the module, with small ledgers that close by size and
by age and are offloaded to the object store (the e2e tiered suite's SMALL settings), so transactional data
and its markers end up in segments.

Must-show 1: every transaction spans the three partitions of a topic whose partitions are led by three
different brokers (waited for with Metadata), so the coordinator (the leader of the transactional id's
``__transaction_state`` partition) writes markers to partitions on other brokers. confluent-kafka: commit,
abort, abort-then-retry, send_offsets_to_transaction (consume-transform-produce, with the group's
``__consumer_offsets`` partition on yet another broker or not, wherever it falls) and zombie fencing;
kafka-python: its transactional messages and offsets tests. Each is checked by exact record sets (read_committed
sees the committed values only; read_uncommitted also the aborted) and, on every partition, the control markers.

Must-show 5: one partition gets committed and aborted transactions (two producers interleaving), then plain
filler records; the cluster offloads it all (ListOffsets latest-tiered = HW - 1, earliest-local = HW), the
partition moves to another broker, and that broker (bootstrap through it alone) serves read_committed from the
object store with the aborted records filtered, byte-exact, and read_uncommitted with them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka import KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KpTP
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError as KpError

from brokers.devcluster import DevCluster
from tests.e2e.helpers import create_topic
from tests.e2e.test_tiered import SMALL, tier_offsets, wait_all_offloaded
from tests.e2e.test_transactions_clients import (
    ABORT,
    COMMIT,
    KP_FENCED_ERRNOS,
    PARTS,
    TXN_TIMEOUT_S,
    control_markers,
    expected_layout,
    fenced,
    kafka_python_values,
    merge,
    per_partition,
    produce_in_txn,
    read,
    txn_producer,
    vals,
    zombie_carries_on,
)
from tests.etcd_server import etcd_available

from .harness import leaders, running_cluster, wait_balanced
from .moving import leader, move

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

NODES = {1, 2, 3}
TXN_STATE = "__transaction_state"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("txn-cluster"), configs=SMALL) as dev:
        yield dev


def spanning_topic(cluster: DevCluster, prefix: str) -> str:
    """A 3-partition topic whose partitions are led by the three brokers, one each."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topic(cluster.bootstrap, name, PARTS)
    owner = wait_balanced(cluster.bootstrap, name, PARTS, NODES)
    assert sorted(owner.values()) == sorted(NODES), owner
    return name


def _check_markers(cluster: DevCluster, topic: str, kinds: list[int]) -> None:
    """Every partition's control batches, fetched raw from its leader, are ``kinds`` in order."""
    owner = leaders(cluster.bootstrap, topic)
    for p in range(PARTS):
        got = [k for _o, k in control_markers(cluster.broker(owner[p]).address, topic, p)]
        assert got == kinds, (p, got)


# --------------------------------------------------------------------------- must-show 1 on the cluster


def test_cluster_confluent_commit_abort_and_retry(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    committed_topic, aborted_topic, retry_topic = (spanning_topic(cluster, p) for p in ("tc-c", "tc-a", "tc-r"))
    p = txn_producer(bootstrap, f"tid-{uuid.uuid4().hex[:8]}")
    p.init_transactions(TXN_TIMEOUT_S)
    print(f"__transaction_state leaders: {sorted(set(leaders(bootstrap, TXN_STATE).values()))}")

    committed = vals("c", 90)
    assert produce_in_txn(p, committed_topic, committed) == []
    p.commit_transaction(TXN_TIMEOUT_S)
    aborted = vals("a", 90)
    assert produce_in_txn(p, aborted_topic, aborted) == []
    p.abort_transaction(TXN_TIMEOUT_S)
    first, second = vals("r-aborted", 60), vals("r-committed", 30)
    assert produce_in_txn(p, retry_topic, first) == []
    p.abort_transaction(TXN_TIMEOUT_S)
    assert produce_in_txn(p, retry_topic, second) == []
    p.commit_transaction(TXN_TIMEOUT_S)

    assert per_partition(read(bootstrap, committed_topic, True)) == expected_layout(committed)
    assert read(bootstrap, aborted_topic, True) == []
    assert per_partition(read(bootstrap, aborted_topic, False)) == expected_layout(aborted)
    assert per_partition(read(bootstrap, retry_topic, True)) == expected_layout(second)
    assert per_partition(read(bootstrap, retry_topic, False)) == merge(expected_layout(first), expected_layout(second))
    _check_markers(cluster, committed_topic, [COMMIT])
    _check_markers(cluster, aborted_topic, [ABORT])
    _check_markers(cluster, retry_topic, [ABORT, COMMIT])


def test_cluster_confluent_send_offsets(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    source, sink = spanning_topic(cluster, "tc-in"), spanning_topic(cluster, "tc-out")
    seed = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    inputs = vals("in", 60)
    for i, v in enumerate(inputs):
        seed.produce(source, value=v, partition=i % PARTS)
    assert seed.flush(30) == 0
    group, tid = f"tc-group-{uuid.uuid4().hex[:8]}", f"tc-tid-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "isolation.level": "read_committed",
    })  # fmt: skip
    try:
        consumer.subscribe([source])
        consumed: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(consumed) < len(inputs) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                consumed.append(msg.value() or b"")
        assert sorted(consumed) == sorted(inputs)
        producer = txn_producer(bootstrap, tid)
        producer.init_transactions(TXN_TIMEOUT_S)
        out = [v.upper() for v in consumed]
        assert produce_in_txn(producer, sink, out) == []
        positions = consumer.position(consumer.assignment())
        assert sorted((tp.partition, tp.offset) for tp in positions) == [(p, 20) for p in range(PARTS)]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
        producer.commit_transaction(TXN_TIMEOUT_S)
        extra = vals("ABORTED", 6)
        assert produce_in_txn(producer, sink, extra) == []
        producer.send_offsets_to_transaction([TopicPartition(source, p, 3) for p in range(PARTS)],
                                             consumer.consumer_group_metadata(), TXN_TIMEOUT_S)  # fmt: skip
        producer.abort_transaction(TXN_TIMEOUT_S)
        txn_producer(bootstrap, tid).init_transactions(TXN_TIMEOUT_S)
        committed = consumer.committed([TopicPartition(source, p) for p in range(PARTS)], timeout=30)
        assert sorted((tp.partition, tp.offset) for tp in committed) == [(p, 20) for p in range(PARTS)]
    finally:
        consumer.close()
    assert per_partition(read(bootstrap, sink, True)) == expected_layout(out)
    assert per_partition(read(bootstrap, sink, False)) == merge(expected_layout(out), expected_layout(extra))


def test_cluster_confluent_zombie_fenced(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    topic = spanning_topic(cluster, "tc-zombie")
    tid = f"tc-zombie-{uuid.uuid4().hex[:8]}"
    a = txn_producer(bootstrap, tid)
    a.init_transactions(TXN_TIMEOUT_S)
    open_values = vals("a-open", 6)
    assert produce_in_txn(a, topic, open_values) == []
    b = txn_producer(bootstrap, tid)
    b.init_transactions(TXN_TIMEOUT_S)
    b_values = vals("b", 6)
    assert produce_in_txn(b, topic, b_values) == []
    b.commit_transaction(TXN_TIMEOUT_S)
    outcome = zombie_carries_on(a, topic)
    print(f"zombie: {outcome}")
    assert outcome.delivered == 0
    # the broker's own refusal of the zombie's sends, as librdkafka reports it per record
    assert set(outcome.delivery_errors) & {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
    assert outcome.commit is not None and fenced(outcome.commit), outcome.commit
    assert outcome.retry is not None, "the zombie committed a new transaction after being fenced"
    assert per_partition(read(bootstrap, topic, True)) == expected_layout(b_values)
    assert per_partition(read(bootstrap, topic, False)) == merge(
        expected_layout(open_values), expected_layout(b_values)
    )


def test_cluster_kafka_python_messages_and_offsets(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    topic = spanning_topic(cluster, "tc-kp")
    group = f"tc-kp-group-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tc-kp-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for p in range(PARTS):
            producer.send(topic, partition=p, value=f"msg1-{p}".encode()).get(TXN_TIMEOUT_S)
            producer.send(topic, partition=p, value=f"msg2-{p}".encode()).get(TXN_TIMEOUT_S)
        producer.abort_transaction()
        producer.begin_transaction()
        for p in range(PARTS):
            producer.send(topic, partition=p, value=f"msg3-{p}".encode()).get(TXN_TIMEOUT_S)
            producer.send(topic, partition=p, value=f"msg4-{p}".encode()).get(TXN_TIMEOUT_S)
        producer.send_offsets_to_transaction({KpTP(topic, 0): OffsetAndMetadata(0, "metadata", 0)}, group)
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send_offsets_to_transaction({KpTP(topic, 1): OffsetAndMetadata(1, "bad", 1)}, group)
        producer.abort_transaction()
    finally:
        producer.close(10)
    committed = [f"msg{i}-{p}".encode() for p in range(PARTS) for i in (3, 4)]
    everything = [f"msg{i}-{p}".encode() for p in range(PARTS) for i in (1, 2, 3, 4)]
    assert kafka_python_values(bootstrap, topic, PARTS, "read_committed", len(committed)) == committed
    assert kafka_python_values(bootstrap, topic, PARTS, "read_uncommitted", len(everything)) == everything
    _check_markers(cluster, topic, [ABORT, COMMIT])
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert offsets == {KpTP(topic, 0): OffsetAndMetadata(offset=0, metadata="metadata", leader_epoch=0)}


def test_cluster_kafka_python_zombie_fenced(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    topic = spanning_topic(cluster, "tc-kpz")
    tid = f"tc-kpz-{uuid.uuid4().hex[:8]}"
    a = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    b = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    errors: list[KpError] = []
    try:
        a.init_transactions()
        a.begin_transaction()
        a.send(topic, partition=1, value=b"a-open").get(TXN_TIMEOUT_S)
        b.init_transactions()
        b.begin_transaction()
        b.send(topic, partition=2, value=b"b-1").get(TXN_TIMEOUT_S)
        b.commit_transaction()
        for step in (lambda: a.send(topic, partition=0, value=b"a-zombie").get(TXN_TIMEOUT_S), a.commit_transaction):
            try:
                step()
            except KpError as e:
                print(f"zombie: {e!r} errno={getattr(e, 'errno', None)}")
                errors.append(e)
    finally:
        a.close(5)
        b.close(5)
    assert errors, "the zombie's send and commit both succeeded"
    assert getattr(errors[0], "errno", None) in KP_FENCED_ERRNOS, repr(errors[0])
    assert kafka_python_values(bootstrap, topic, PARTS, "read_committed", 1) == [b"b-1"]
    assert kafka_python_values(bootstrap, topic, PARTS, "read_uncommitted", 2) == [b"a-open", b"b-1"]


# --------------------------------------------------------------------------- must-show 5


def by_writer(values: list[bytes]) -> dict[bytes, list[bytes]]:
    """Values grouped by their writer (the text before the first '-'), each group in log order."""
    out: dict[bytes, list[bytes]] = {}
    for v in values:
        out.setdefault(v.split(b"-", 1)[0], []).append(v)
    return out


def test_offloaded_transactions_read_committed_from_another_broker(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    topic = f"tc-offload-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    writer = leader(bootstrap, topic, 0)[0]
    value_pad = b"." * 900  # ~1 KB records: the 64 KiB ledgers roll many times over the run
    a = txn_producer(bootstrap, f"off-a-{uuid.uuid4().hex[:6]}")
    b = txn_producer(bootstrap, f"off-b-{uuid.uuid4().hex[:6]}")
    a.init_transactions(TXN_TIMEOUT_S)
    b.init_transactions(TXN_TIMEOUT_S)
    everything: list[bytes] = []
    committed: list[bytes] = []
    for t in range(8):  # A and B interleave batch by batch; A aborts on even rounds, B on rounds divisible by 3
        a.begin_transaction()
        b.begin_transaction()
        for i in range(30):
            for who, prod in (("a", a), ("b", b)):
                v = f"{who}-{t}-{i:03d}".encode() + value_pad
                prod.produce(topic, value=v, partition=0)
                everything.append(v)
            if i % 10 == 9:
                assert a.flush(TXN_TIMEOUT_S) == 0 and b.flush(TXN_TIMEOUT_S) == 0
        a_commit, b_commit = t % 2 == 1, t % 3 != 0
        for prod, commit in ((a, a_commit), (b, b_commit)):
            if commit:
                prod.commit_transaction(TXN_TIMEOUT_S)
            else:
                prod.abort_transaction(TXN_TIMEOUT_S)
        committed += [v for v in everything[-60:] if (v[:1] == b"a" and a_commit) or (v[:1] == b"b" and b_commit)]
    filler = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    tail = [f"plain-{i:03d}".encode() + value_pad for i in range(100)]
    for v in tail:
        filler.produce(topic, value=v, partition=0)
    assert filler.flush(30) == 0

    wait_all_offloaded(cluster.broker(writer).address, topic, 1)
    reader = next(n for n in sorted(NODES) if n != writer)
    seconds, epoch = move(bootstrap, topic, 0, reader)
    print(f"{topic}: {len(everything)} transactional records ({len(committed)} committed), written by broker "
          f"{writer}, offloaded, moved to broker {reader} in {seconds:.1f} s (epoch {epoch})")  # fmt: skip
    via = cluster.broker(reader).address
    assert leaders(via, topic) == {0: reader}
    tiered, local, hw = tier_offsets(via, topic, 1)[0]
    assert (tiered, local) == (hw - 1, hw), (tiered, local, hw)  # the new owner holds every record in segments
    # A's and B's batches may land in either order within a flush window: compare each writer's sequence.
    assert by_writer([g.value or b"" for g in read(via, topic, True, 1)]) == by_writer(committed + tail)
    assert by_writer([g.value or b"" for g in read(via, topic, False, 1)]) == by_writer(everything + tail)
    kp = kafka_python_values(via, topic, 1, "read_committed", len(committed) + len(tail))
    assert by_writer(kp) == by_writer(committed + tail)
    kinds = [k for _o, k in control_markers(via, topic, 0)]
    assert kinds.count(ABORT) == sum(1 for t in range(8) if t % 2 == 0) + sum(1 for t in range(8) if t % 3 == 0)
    assert kinds.count(COMMIT) == 16 - kinds.count(ABORT)
