"""The Metadata handler encodes its answer with struct (kio costs ~20 µs a partition): its bytes must equal
kio's encoding of the same response, for every version we advertise, and decode back with kio."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.config import BrokerConfig
from brokers.handlers import metadata
from brokers.handlers.base import NO_THROTTLE, make, response_module
from brokers.security.authorizer import AllowAll
from brokers.server import encode_body
from brokers.single_routing import SingleBroker
from brokers.topics import TopicError
from metadata.models import TopicRecord

NODE = 3
TOPICS = [
    TopicRecord("__consumer_offsets", str(uuid.uuid4()), 3, 1, {}),
    TopicRecord("alpha", str(uuid.uuid4()), 4, 1, {}),
    TopicRecord("beta", str(uuid.uuid4()), 1, 1, {}),
]
EPOCHS = {(TOPICS[1].topic_id, 2): 7, (TOPICS[0].topic_id, 0): 1}  # loaded logs; the others report -1


class _Topics:
    generation = 1

    def all(self) -> list[TopicRecord]:
        return sorted(TOPICS, key=lambda t: t.name)

    def get(self, name: str) -> TopicRecord | None:
        return next((t for t in TOPICS if t.name == name), None)

    def by_id(self, topic_id: str) -> TopicRecord | None:
        return next((t for t in TOPICS if t.topic_id == topic_id), None)


class _Logs:
    generation = 1
    instance = 0

    def topic_generation(self, topic_id: str) -> int:
        return 1

    def loaded(self, topic_id: str, partition: int) -> Any:
        epoch = EPOCHS.get((topic_id, partition))
        return None if epoch is None else SimpleNamespace(epoch=epoch)


def _ctx(version: int) -> Any:
    broker = SimpleNamespace(
        config=BrokerConfig(node_id=NODE, advertised_host="broker.example", advertised_port=9093),
        topics=_Topics(), logs=_Logs(), cluster_id="cluster-xyz", authorizer=AllowAll(),
    )
    broker.routing = SingleBroker(broker)  # type: ignore[arg-type]  # what it reads of a Broker is here
    return SimpleNamespace(broker=broker, api_version=version, listener=None, address=lambda b: (b.host, b.port))


def _kio(version: int, names: list[str] | None, ids: list[uuid.UUID | None], refused: dict[str, TopicError]) -> bytes:
    """The same answer built the way the handler used to: kio entities, kio's encoder."""
    mod = response_module(metadata.API_KEY, version)
    topics: list[Any] = []
    chosen = [(t.name, None, t) for t in _Topics().all()] if names is None else (
        [(n, None, _Topics().get(n)) for n in names] + [(None, i, _Topics().by_id(str(i))) for i in ids]
    )
    for name, topic_id, topic in chosen:
        if topic is None:
            code = ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition
            if name in refused:
                code = refused[name].code
            shown = "" if name is None and version < 12 else name
            topics.append(make(
                mod.MetadataResponseTopic, error_code=code, name=shown, topic_id=topic_id or uuid.UUID(int=0),
                is_internal=False, partitions=(), topic_authorized_operations=-2147483648,
            ))
            continue
        partitions = tuple(
            make(
                mod.MetadataResponsePartition, error_code=ErrorCode.none, partition_index=p, leader_id=NODE,
                leader_epoch=EPOCHS.get((topic.topic_id, p), -1), replica_nodes=(NODE,), isr_nodes=(NODE,),
                offline_replicas=(),
            )
            for p in range(topic.partitions)
        )
        topics.append(make(
            mod.MetadataResponseTopic, error_code=ErrorCode.none, name=topic.name,
            topic_id=uuid.UUID(topic.topic_id), is_internal=topic.name == "__consumer_offsets",
            partitions=partitions, topic_authorized_operations=-2147483648,
        ))
    return encode_body(make(
        mod.MetadataResponse, throttle_time=NO_THROTTLE,
        brokers=(make(mod.MetadataResponseBroker, node_id=NODE, host="broker.example", port=9093, rack=None),),
        cluster_id="cluster-xyz", controller_id=NODE, topics=tuple(topics),
        cluster_authorized_operations=-2147483648,
    ))


@pytest.mark.parametrize("version", range(metadata.MIN_VERSION, metadata.MAX_VERSION + 1))
def test_metadata_bytes_equal_kio_encoding(version: int) -> None:
    ctx = _ctx(version)
    refused = {"huge": TopicError(ErrorCode.policy_violation, "max.topics")}
    ids: list[uuid.UUID | None] = [uuid.UUID(TOPICS[2].topic_id), uuid.uuid4()] if version >= 10 else []
    cases: list[tuple[list[str] | None, list[uuid.UUID | None], dict[str, TopicError]]] = [
        (None, [], {}),
        (["beta", "missing", "alpha"], ids, {}),
        (["huge", "alpha"], [], refused),
    ]
    for names, wanted_ids, refusals in cases:
        ours = metadata._encode(ctx, names, wanted_ids, refusals)
        assert ours == _kio(version, names, wanted_ids, refusals), (version, names)
        metadata._topic_cache.clear()
        assert metadata._encode(ctx, names, wanted_ids, refusals) == ours  # from an empty topic cache too
