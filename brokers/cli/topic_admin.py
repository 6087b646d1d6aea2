"""Topic administration over the Kafka protocol: what kafka-topics.sh and kafka-configs.sh send.

Metadata (list, describe), CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs and
IncrementalAlterConfigs, each at the newest version both sides speak. Nothing here knows Tidelog: against a
cluster that lacks an API (librdkafka's mock cluster has no admin APIs) the call raises UnsupportedVersion
naming it, which the CLI prints as its one error line.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, KafkaClient, KafkaError, error_name
from brokers.handlers.base import make

CREATE_TOPICS, DELETE_TOPICS, DESCRIBE_CONFIGS, CREATE_PARTITIONS, INCREMENTAL_ALTER_CONFIGS = 19, 20, 32, 37, 44
RESOURCE_TOPIC = 2
OP_SET, OP_DELETE = 0, 1
CONFIG_SOURCES = {
    -1: "UNKNOWN", 0: "UNKNOWN", 1: "DYNAMIC_TOPIC_CONFIG", 2: "DYNAMIC_BROKER_CONFIG",
    3: "DYNAMIC_DEFAULT_BROKER_CONFIG", 4: "STATIC_BROKER_CONFIG", 5: "DEFAULT_CONFIG",
    6: "DYNAMIC_BROKER_LOGGER_CONFIG", 7: "CLIENT_METRICS_CONFIG", 8: "GROUP_CONFIG",
}


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A partition as Metadata reports it."""

    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error: str | None


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as Metadata reports it."""

    name: str
    topic_id: str | None
    internal: bool
    partitions: tuple[PartitionInfo, ...]

    @property
    def replication_factor(self) -> int:
        return max((len(p.replicas) for p in self.partitions), default=0)


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    """One config of a topic (DescribeConfigs)."""

    name: str
    value: str | None
    source: str
    read_only: bool
    sensitive: bool

    @property
    def is_default(self) -> bool:
        return self.source in ("DEFAULT_CONFIG", "STATIC_BROKER_CONFIG", "DYNAMIC_DEFAULT_BROKER_CONFIG")


@dataclass(frozen=True, slots=True)
class NewTopic:
    """What ``topics create`` asks for; -1 partitions / replication factor: the broker's default."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


def _timeout(client: KafkaClient) -> datetime.timedelta:
    return datetime.timedelta(seconds=client.timeout)


def _error(code: ErrorCode, message: str | None) -> str | None:
    if code == ErrorCode.none:
        return None
    return error_name(code) + (f": {message}" if message else "")


def _topic_info(t: Any) -> TopicInfo:
    topic_id = getattr(t, "topic_id", None)
    return TopicInfo(
        name=t.name, topic_id=None if topic_id is None or topic_id.int == 0 else str(topic_id),
        internal=bool(getattr(t, "is_internal", False)),
        partitions=tuple(
            sorted(
                (
                    PartitionInfo(
                        int(p.partition_index), int(p.leader_id), int(getattr(p, "leader_epoch", -1)),
                        tuple(int(r) for r in p.replica_nodes), tuple(int(r) for r in p.isr_nodes),
                        _error(p.error_code, None),
                    )
                    for p in t.partitions
                ),
                key=lambda p: p.partition,
            )
        ),
    )


async def list_topics(client: KafkaClient) -> list[TopicInfo]:
    """Every topic the cluster reports (internal ones included; the caller filters), by name."""
    resp = await client.metadata(None)
    return sorted((_topic_info(t) for t in resp.topics if t.error_code == ErrorCode.none), key=lambda t: t.name)


async def describe_topics(client: KafkaClient, names: Sequence[str]) -> tuple[list[TopicInfo], dict[str, str]]:
    """The named topics, and an error per topic that could not be described (e.g. it does not exist)."""
    resp = await client.metadata(list(dict.fromkeys(names)))
    found: list[TopicInfo] = []
    errors: dict[str, str] = {}
    for t in resp.topics:
        if t.error_code == ErrorCode.none:
            found.append(_topic_info(t))
        else:
            errors[t.name] = error_name(t.error_code)
    return found, errors


async def _controller(client: KafkaClient) -> Connection:
    """The controller where the cluster names one (CreateTopics and DeleteTopics must go there), else any broker."""
    resp = await client.metadata([])
    controller = int(getattr(resp, "controller_id", -1))
    if controller in client.nodes:
        return await client.node(controller)
    return await client.any_connection()


async def create_topics(client: KafkaClient, topics: Sequence[NewTopic], validate_only: bool = False) -> dict[str, Any]:
    """CreateTopics; per topic: ``{"error": str|None, "partitions": n, "replication_factor": r}``."""
    conn = await _controller(client)
    mod = conn.module(CREATE_TOPICS, 2, 7)
    request = make(
        mod.CreateTopicsRequest, timeout=_timeout(client), validate_only=validate_only,
        topics=tuple(
            make(
                mod.CreatableTopic, name=t.name, num_partitions=t.partitions, replication_factor=t.replication_factor,
                assignments=(),
                configs=tuple(make(mod.CreatableTopicConfig, name=k, value=v) for k, v in sorted(t.configs.items())),
            )
            for t in topics
        ),
    )
    resp = await conn.send(request)
    return {
        r.name: {
            "error": _error(r.error_code, r.error_message),
            "partitions": int(getattr(r, "num_partitions", -1)),
            "replication_factor": int(getattr(r, "replication_factor", -1)),
        }
        for r in resp.topics
    }


async def delete_topics(client: KafkaClient, names: Sequence[str]) -> dict[str, str | None]:
    """DeleteTopics by name; per topic its error (None: deleted)."""
    conn = await _controller(client)
    mod = conn.module(DELETE_TOPICS, 1, 6)
    version = conn.version(DELETE_TOPICS, 1, 6)
    if version >= 6:
        request = make(
            mod.DeleteTopicsRequest, timeout=_timeout(client),
            topics=tuple(make(mod.DeleteTopicState, name=n, topic_id=None) for n in names),
        )
    else:
        request = make(mod.DeleteTopicsRequest, timeout=_timeout(client), topic_names=tuple(names))
    resp = await conn.send(request)
    return {r.name: _error(r.error_code, getattr(r, "error_message", None)) for r in resp.responses}


async def create_partitions(
    client: KafkaClient, counts: Mapping[str, int], validate_only: bool = False
) -> dict[str, str | None]:
    """CreatePartitions: grow each topic to its new total count; per topic its error."""
    conn = await _controller(client)
    mod = conn.module(CREATE_PARTITIONS, 0, 3)
    resp = await conn.send(
        make(
            mod.CreatePartitionsRequest, timeout=_timeout(client), validate_only=validate_only,
            topics=tuple(make(mod.CreatePartitionsTopic, name=t, count=n, assignments=None) for t, n in counts.items()),
        )
    )
    return {r.name: _error(r.error_code, r.error_message) for r in resp.results}


async def describe_configs(client: KafkaClient, topic: str) -> list[ConfigInfo]:
    """Every config of a topic with its source; raises KafkaError if the topic cannot be described."""
    conn = await client.any_connection()
    mod = conn.module(DESCRIBE_CONFIGS, 1, 4)
    resp = await conn.send(
        make(
            mod.DescribeConfigsRequest, include_synonyms=False, include_documentation=False,
            resources=(
                make(mod.DescribeConfigsResource, resource_type=RESOURCE_TOPIC, resource_name=topic,
                     configuration_keys=None),
            ),
        )
    )
    result = resp.results[0]
    if result.error_code != ErrorCode.none:
        reason = _error(result.error_code, result.error_message)
        raise KafkaError(result.error_code, f"DescribeConfigs {topic!r}: {reason}")
    return sorted(
        (
            ConfigInfo(
                c.name, c.value, CONFIG_SOURCES.get(int(getattr(c, "config_source", -1)), "UNKNOWN"),
                bool(c.read_only), bool(c.is_sensitive),
            )
            for c in result.configs
        ),
        key=lambda c: c.name,
    )


async def alter_configs(
    client: KafkaClient, topic: str, set_configs: Mapping[str, str], delete: Sequence[str], validate_only: bool = False
) -> str | None:
    """IncrementalAlterConfigs on one topic: SET each of ``set_configs``, DELETE (back to default) each of
    ``delete``; returns the error (None: done)."""
    conn = await client.any_connection()
    mod = conn.module(INCREMENTAL_ALTER_CONFIGS, 0, 1)
    ops = [make(mod.AlterableConfig, name=k, config_operation=OP_SET, value=v) for k, v in set_configs.items()]
    ops += [make(mod.AlterableConfig, name=k, config_operation=OP_DELETE, value=None) for k in delete]
    resp = await conn.send(
        make(
            mod.IncrementalAlterConfigsRequest, validate_only=validate_only,
            resources=(make(mod.AlterConfigsResource, resource_type=RESOURCE_TOPIC, resource_name=topic,
                            configs=tuple(ops)),),
        )
    )
    r = resp.responses[0]
    return _error(r.error_code, r.error_message)
