"""ACLs on a dev cluster (issue 16): one DevCluster (3 brokers, 3 bookies, etcd, moto S3) with the ACL authorizer.

An ACL created through one broker is reported by every broker's DescribeAcls (each answers from its own watch
of the ``acls/`` keys) and enforced by the partition's leader, whichever broker that is; deleted through another
broker, it is gone everywhere and producing works again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AclOperation, AclPermissionType
from kio.static.primitive import i8

from brokers.cli.client import KafkaClient
from brokers.devcluster import DevCluster
from brokers.handlers.base import make
from brokers.security.acl import AclFilter, ResourceType
from tests.e2e.helpers import create_topic
from tests.e2e.test_acls import OPEN, create, delete, every_acl_of, produce_error, topic_acl
from tests.etcd_server import etcd_available

from .harness import leaders, running_cluster

pytestmark = [
    pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)"),
    # slow: a cluster of its own; the fast suite has the watch on two in-process brokers over one store
    # (tests/unit/test_acl_matrix.py) and the clients on tidelog run (tests/e2e/test_acls.py)
    pytest.mark.slow,
]
NODES = (1, 2, 3)
WAIT = 60.0  # hang guard only


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("acls-cluster"), configs=OPEN) as dev:
        yield dev


async def _principals_on(bootstrap: str, node: int, topic: str) -> list[str]:
    """The principals of the ACLs on ``topic`` as broker ``node`` itself reports them (DescribeAcls to it)."""
    f = AclFilter(ResourceType.TOPIC, topic)
    async with KafkaClient(bootstrap, timeout=30) as client:
        conn = await client.node(node)
        mod = conn.module(29, 1, 3)
        resp = await conn.send(make(
            mod.DescribeAclsRequest, resource_type_filter=i8(f.resource_type), resource_name_filter=f.name,
            pattern_type_filter=i8(f.pattern_type), principal_filter=None, host_filter=None,
            operation=i8(f.operation), permission_type=i8(f.permission),
        ))
    return [a.principal for r in resp.resources for a in r.acls]


def wait_reported(cluster: DevCluster, topic: str, want: list[str]) -> None:
    for node in NODES:
        deadline = time.monotonic() + WAIT
        while (got := asyncio.run(_principals_on(cluster.bootstrap, node, topic))) != want:
            assert time.monotonic() < deadline, f"broker {node} reports {got}, not {want}"
            time.sleep(0.1)


def test_an_acl_written_through_one_broker_holds_on_every_broker(cluster: DevCluster) -> None:
    topic = f"acl-{uuid.uuid4().hex[:8]}"
    create_topic(cluster.bootstrap, topic, partitions=1)
    deadline = time.monotonic() + WAIT
    while leaders(cluster.bootstrap, topic).get(0, -1) < 0:  # the controller assigns it first
        assert time.monotonic() < deadline, f"{topic}/0 has no leader"
        time.sleep(0.2)
    assert produce_error(cluster.bootstrap, topic) is None
    create(cluster.broker(1).address, topic_acl(topic, AclOperation.WRITE, AclPermissionType.DENY))
    wait_reported(cluster, topic, ["User:ANONYMOUS"])
    err = produce_error(cluster.bootstrap, topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert len(delete(cluster.broker(3).address, every_acl_of(topic))) == 1
    wait_reported(cluster, topic, [])
    assert produce_error(cluster.bootstrap, topic) is None
