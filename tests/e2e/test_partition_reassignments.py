"""AlterPartitionReassignments (45) and ListPartitionReassignments (46) on the embedded broker: the broker
owns every partition, so moving one to itself is a success that changes nothing, and any other target is
not a live broker (INVALID_REPLICA_ASSIGNMENT, as Kafka answers)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

from brokers.cli.client import KafkaClient
from tests.e2e.broker_process import BrokerProcess


async def _node_id(bootstrap: str) -> int:
    async with KafkaClient(bootstrap, timeout=10) as client:
        await client.metadata([])
        (node_id,) = client.nodes
        return node_id


async def _moves(bootstrap: str, moves: dict[tuple[str, int], int | None]) -> dict[tuple[str, int], str | None]:
    async with KafkaClient(bootstrap, timeout=10) as client:
        return await client.alter_partition_reassignments(moves)


async def _list(bootstrap: str) -> dict[tuple[str, int], tuple[list[int], list[int], list[int]]]:
    async with KafkaClient(bootstrap, timeout=10) as client:
        return await client.list_partition_reassignments()


def test_moves_on_the_embedded_broker(broker: BrokerProcess, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(broker.bootstrap, partitions=2)
    me = asyncio.run(_node_id(broker.bootstrap))
    answers = asyncio.run(
        _moves(broker.bootstrap, {(topic, 0): me, (topic, 1): me + 7, (topic, 5): me, ("no-such-topic", 0): me})
    )
    assert answers[(topic, 0)] is None  # already there
    assert (answers[(topic, 1)] or "").startswith("INVALID_REPLICA_ASSIGNMENT")
    assert (answers[(topic, 5)] or "").startswith("UNKNOWN_TOPIC_OR_PARTITION")
    assert (answers[("no-such-topic", 0)] or "").startswith("UNKNOWN_TOPIC_OR_PARTITION")
    cancel = asyncio.run(_moves(broker.bootstrap, {(topic, 0): None}))
    assert (cancel[(topic, 0)] or "").startswith("NO_REASSIGNMENT_IN_PROGRESS")
    assert asyncio.run(_list(broker.bootstrap)) == {}


def _tidelog_json(*args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-m", "brokers.cli", *args, "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cluster_tools_on_the_embedded_broker(broker: BrokerProcess, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(broker.bootstrap, partitions=2)
    me = asyncio.run(_node_id(broker.bootstrap))
    status = _tidelog_json("cluster", "status", "--bootstrap", broker.bootstrap)
    assert isinstance(status, dict)
    assert [b["node_id"] for b in status["brokers"]] == [me]
    assert status["moves"] == [] and status["bookies"] is None
    rows = _tidelog_json("partitions", "list", "--topic", topic, "--bootstrap", broker.bootstrap)
    assert isinstance(rows, list)
    assert [(r["partition"], r["leader"]) for r in rows] == [(0, me), (1, me)]
    moved = _tidelog_json("partitions", "move", f"{topic}:1", "--to", str(me), "--bootstrap", broker.bootstrap)
    assert isinstance(moved, dict)
    assert (moved["from"], moved["to"]) == (me, me)
    refused = subprocess.run(
        [sys.executable, "-m", "brokers.cli", "partitions", "move", f"{topic}:1", "--to", str(me + 1),
         "--bootstrap", broker.bootstrap], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "INVALID_REPLICA_ASSIGNMENT" in refused.stderr
