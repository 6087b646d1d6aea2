"""Issue 10, must-show 4: a consumer group keeps its committed offsets and skips nothing while its
coordinator moves.

One DevCluster (3 brokers). A confluent-kafka producer (acks=all, idempotent) writes numbered records to a
6-partition topic at a steady rate; three confluent-kafka members of one group consume them (subscribe,
manual synchronous commits every few hundred milliseconds). Meanwhile the group's ``__consumer_offsets``
partition (Kafka's ``abs(hashCode(group)) % 50``) moves from broker to broker with ``tidelog partitions move``
(AlterPartitionReassignments), so the group's coordinator — and its state, rebuilt from that partition —
moves with it. A monitor reads the group's committed offsets (OffsetFetch) all along.

Shown: committed offsets never go backwards (on any partition, as the monitor saw them); every acknowledged
record was consumed at least once; the duplicates (re-deliveries after a rebalance, from the last commit) are
counted and printed; in the end the committed offsets equal the high watermarks. The slow variant moves it
20 times and, every 4th move, has one member leave and a new one join, so rebalances meet coordinator moves.
Each runs with the classic group protocol and with KIP-848 (``group.protocol=consumer``). Another slow variant
kills the coordinator's broker (kill -9) instead: the offsets it acknowledged must be there once another broker
has taken the partition (after the lease ttl).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from brokers.devcluster import DevCluster
from brokers.groups.records import partition_for
from tests.e2e.helpers import create_topic, high_watermarks
from tests.etcd_server import etcd_available

from .group_members import Member, Monitor
from .harness import OFFSETS_TOPIC, leaders, running_cluster, tidelog_json, wait_leaders

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "coordmove"
PARTS = 6
GROUP = "coordinator-move-group"
RATE = 400  # records/s
MAX_RECORDS = 100_000  # the producer's bound
CATCH_UP_S = 60.0  # hang guard for the members to read everything


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("coordmove")) as c:
        yield c


@pytest.mark.parametrize(
    ("moves", "churn", "protocol"),
    [
        pytest.param(4, False, "classic", id="4-moves"),
        pytest.param(4, False, "consumer", id="4-moves-kip848", marks=pytest.mark.slow),
        # every 4th move, one member leaves and a new one joins: rebalances while the coordinator moves
        pytest.param(20, True, "classic", id="20-moves-with-member-churn", marks=pytest.mark.slow),
        pytest.param(20, True, "consumer", id="20-moves-with-member-churn-kip848", marks=pytest.mark.slow),
        # no planned move: kill -9 of the coordinator's broker; the partition moves once its lease expires
        pytest.param(0, False, "classic", id="coordinator-killed", marks=pytest.mark.slow),
    ],
)
def test_committed_offsets_survive_coordinator_moves(
    cluster: DevCluster, moves: int, churn: bool, protocol: str
) -> None:
    bootstrap = cluster.bootstrap
    topic, group = f"{TOPIC}-{moves}-{protocol}", f"{GROUP}-{moves}-{protocol}"
    crash = moves == 0
    create_topic(bootstrap, topic, PARTS)
    offsets_partitions = len(leaders(bootstrap, OFFSETS_TOPIC))
    gp = partition_for(group, offsets_partitions)

    acked: list[int] = []
    produce_errors: list[str] = []
    stop_producing = threading.Event()

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            produce_errors.append(str(err))
        else:
            acked.append(int(msg.value()))

    def produce_with_reports() -> None:
        p = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": 60_000, "on_delivery": report,
        })  # fmt: skip
        for i in range(MAX_RECORDS):
            if stop_producing.is_set():
                break
            p.produce(topic, value=str(i).encode(), key=str(i).encode())
            p.poll(1.0 / RATE)
        assert p.flush(60) == 0

    consumed: list[int] = []
    stop_members = threading.Event()
    members = [Member(f"member-{i}", bootstrap, topic, group, consumed, stop_members, protocol) for i in range(3)]
    monitor = Monitor(bootstrap, topic, PARTS, group, stop_members)
    producer = threading.Thread(target=produce_with_reports, name="producer", daemon=True)
    producer.start()
    for m in members:
        m.start()
    monitor.start()

    done: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(set(consumed)) < 500 and time.monotonic() < deadline:  # the group is up and committing
            time.sleep(0.1)
        for i in range(moves):
            if churn and i % 4 == 3:
                members[-3].leave.set()  # the oldest of the three current members
                members.append(
                    Member(f"member-{len(members)}", bootstrap, topic, group, consumed, stop_members, protocol)
                )
                members[-1].start()
            owner = leaders(bootstrap, OFFSETS_TOPIC)[gp]
            target = next(n for n in (1, 2, 3) if n != owner)
            moved = tidelog_json("partitions", "move", f"{OFFSETS_TOPIC}:{gp}", "--to", str(target),
                                 "--bootstrap", bootstrap)  # fmt: skip
            assert (moved["from"], moved["to"]) == (owner, target)
            done.append(f"{owner}->{target} {moved['seconds']}s (leaderless {moved['leaderless_seconds']}s)")
            at = len(consumed)
            wait_until = time.monotonic() + 20
            while len(consumed) < at + RATE and time.monotonic() < wait_until:  # the group carries on
                time.sleep(0.1)
            time.sleep(1.0)
        if crash:
            owner = leaders(bootstrap, OFFSETS_TOPIC)[gp]
            victim = cluster.broker(owner)
            killed_at = time.monotonic()
            victim.kill9()
            others = {b.node_id for b in cluster.brokers if b.alive()}
            wait_leaders(cluster.broker(min(others)).address, OFFSETS_TOPIC, offsets_partitions, others)
            done.append(f"kill -9 of {owner}: served elsewhere after {time.monotonic() - killed_at:.1f} s")
            at = len(consumed)
            wait_until = time.monotonic() + 30
            while len(consumed) < at + RATE and time.monotonic() < wait_until:  # the group carries on
                time.sleep(0.1)
            victim.start()
            cluster.wait_ready()
    finally:
        stop_producing.set()
        producer.join(90)
    assert not produce_errors, produce_errors[:5]
    want = set(acked)
    deadline = time.monotonic() + CATCH_UP_S
    while not want <= set(consumed) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a last commit round
    stop_members.set()
    for m in members:
        m.join(60)
    monitor.join(30)

    for m in members:
        assert m.error is None, f"{m.name}: {m.error!r}"
    dupes = len(consumed) - len(set(consumed))
    commit_errors = [e for m in members for e in m.commit_errors]
    print(f"\n{group}: offsets partition {OFFSETS_TOPIC}:{gp} moved {len(done)} times: {done}")
    print(
        f"produced {len(acked)} acknowledged, consumed {len(consumed)} ({len(set(consumed))} distinct, "
        f"{dupes} duplicates), commits {sum(m.commits for m in members)}, failed commits {len(commit_errors)} "
        f"{sorted(set(commit_errors))[:3]}, assignments {[m.rebalances for m in members]}, "
        f"monitor reads {monitor.reads} (failed {monitor.failed_reads})"
    )
    assert len(done) == moves + crash
    assert not monitor.backwards, monitor.backwards[:10]
    skipped = sorted(want - set(consumed))
    assert not skipped, f"{len(skipped)} acknowledged records never consumed, e.g. {skipped[:10]}"
    assert set(consumed) <= want  # nothing unacknowledged or invented
    ends = {p: hw for p, (_lo, hw) in high_watermarks(bootstrap, topic, range(PARTS)).items()}
    print(f"final committed {dict(sorted(monitor.high.items()))}, high watermarks {ends}")
    assert monitor.high == ends
