"""KIP-848 online migration on a dev cluster (3 brokers): the mixed group moves with its coordinator.

Two classic confluent-kafka members form a group; a ``group.protocol=consumer`` member joins (the group is
upgraded). The group's ``__consumer_offsets`` partition is then moved to another broker
(AlterPartitionReassignments): the new coordinator rebuilds the consumer group, classic members included,
from that partition, and serves all three. Then the consumer-protocol member leaves and the new coordinator
downgrades the group. A producer writes all along. Shown: DescribeConsumerGroups' type at each step, the
coordinator on the new broker, every record consumed, re-deliveries only after a new assignment of their
partition, committed offsets = log end at the end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.devcluster import DevCluster
from brokers.groups.records import partition_for
from tests.e2e.group_members import SequenceProducer, assert_healthy
from tests.e2e.helpers import create_topic
from tests.e2e.test_group_migration import (
    CLASSIC,
    CONSUMER,
    PARTITIONS,
    TimedMember,
    check_consumption,
    committed,
    describe,
    group_type,
    settled,
    start,
)
from tests.etcd_server import etcd_available

from .harness import OFFSETS_TOPIC, leaders, print_logs, running_cluster
from .moving import move

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")


def describe_on(bootstrap: str, group: str, coordinator: int, timeout: float = 90.0) -> Any:
    """DescribeConsumerGroups once its answer comes from ``coordinator`` (a hang guard only)."""
    deadline = time.monotonic() + timeout
    while True:
        d = describe(bootstrap, group)
        if d.coordinator.id == coordinator:
            return d
        if time.monotonic() > deadline:
            raise AssertionError(f"{group} not described by its coordinator {coordinator} within {timeout}s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("groupmigrate")) as c:
        yield c


@pytest.mark.slow  # a cluster of its own (~30 s): the fast suite is over its budget already
def test_a_mixed_group_moves_with_its_coordinator_and_is_downgraded_by_the_new_one(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    topic, group = f"migrate-{uuid.uuid4().hex[:6]}", f"migrate-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS)
    gp = partition_for(group, len(leaders(bootstrap, OFFSETS_TOPIC)))
    producer = SequenceProducer(bootstrap, topic, PARTITIONS).start()
    members: list[TimedMember] = []
    try:
        members += [start(f"classic{i}", bootstrap, group, topic, CLASSIC) for i in range(2)]
        settled(members, "two classic members to split the partitions")
        members.append(start("consumer", bootstrap, group, topic, CONSUMER))
        settled(members, "the consumer-protocol member to get its share")
        assert group_type(bootstrap, group) == "CONSUMER"

        before = leaders(bootstrap, OFFSETS_TOPIC)[gp]
        target = next(b.node_id for b in cluster.brokers if b.node_id != before)
        move(bootstrap, OFFSETS_TOPIC, gp, target)
        assert group_type(bootstrap, group) == "CONSUMER"
        described = describe_on(bootstrap, group, target)
        assert len(described.members) == 3
        consumed_at_move = len({v for m in members for v in m.values()})
        settled(members, "the group to be served by the new coordinator")

        members[2].stop()
        settled(members[:2], "the classic members to take everything back")
        assert group_type(bootstrap, group) == "CLASSIC"
        counts = check_consumption(members, producer)
        assert counts["records"] > consumed_at_move
        for m in members[:2]:
            m.stop()
        assert_healthy(*members)
        expected = {p: len(range(p, counts["records"], PARTITIONS)) for p in range(PARTITIONS)}
        assert committed(bootstrap, group, topic) == expected
        print(f"\nmigration across a coordinator move ({before} -> {target}): {counts['records']} records, "
              f"{counts['duplicates']} consumed twice")
    except BaseException:
        print_logs(cluster, 20_000)
        raise
    finally:
        producer._stop.set()
        for m in members:
            m._stop.set()
