"""Topics as the metadata store holds them, cached in the broker and changed by compare-and-swap."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, replace

from kio.schema.errors import ErrorCode

from brokers.observability import topic_names
from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import PartitionState, TopicRecord
from metadata.prefix_cache import PrefixCache

INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})
"""Topics the broker writes itself: clients may read them, never produce, delete or grow them."""
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")  # fullmatch: "$" would also let a trailing newline through
MAX_NAME = 249


class TopicError(Exception):
    """A topic operation refused with a Kafka error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def name_problem(name: str) -> str | None:
    """Why ``name`` can never be a topic (Kafka's ``Topic.validate`` rules and messages), or None if it can."""
    if not name:
        return "Topic name is illegal, it can't be empty"
    if name in (".", ".."):
        return 'Topic name cannot be "." or ".."'
    if len(name) > MAX_NAME:
        return f"Topic name is illegal, it can't be longer than {MAX_NAME} characters, topic name: {name}"
    if not _LEGAL.fullmatch(name):
        return f"Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', " \
            "'_' and '-'"
    return None


def check_name(name: str) -> None:
    """Kafka's topic name rules; raises TopicError(INVALID_TOPIC_EXCEPTION)."""
    problem = name_problem(name)
    if problem is not None:
        raise TopicError(ErrorCode.invalid_topic_exception, problem)


def collision_key(name: str) -> str:
    """Names that differ only in '.' versus '_' collide (Kafka's ``Topic.unifyCollisionChars``): metric names
    replace '.' by '_', so two such topics would report into one series."""
    return name.replace(".", "_")


@dataclass(frozen=True, slots=True)
class TopicLimits:
    """How far clients may grow the cluster (``max.partitions.per.topic``, ``max.partitions.per.broker``,
    ``max.topics``). Each partition costs the broker memory once used and a row in every full Metadata answer;
    a bound keeps one careless CreatePartitions from making the broker unusable. Internal topics are created
    by the broker itself and exempt, but they count toward the totals."""

    partitions_per_topic: int = 2**31 - 1
    partitions_per_broker: int = 2**31 - 1
    topics: int = 2**31 - 1

    def check(self, registry: TopicRegistry, name: str, partitions: int, added: int, new_topic: bool) -> None:
        """Raise TopicError unless a topic ``name`` may have ``partitions`` partitions, ``added`` of them new."""
        if name in INTERNAL_TOPICS:
            return
        if partitions > self.partitions_per_topic:
            raise TopicError(
                ErrorCode.invalid_partitions,
                f"{partitions} partitions for topic {name!r} exceed "
                f"max.partitions.per.topic={self.partitions_per_topic}",
            )
        if new_topic and registry.topic_count >= self.topics:
            raise TopicError(
                ErrorCode.policy_violation,
                f"the cluster has {registry.topic_count} topics; max.topics={self.topics} allows no more",
            )
        total = registry.partition_count
        if total + added > self.partitions_per_broker:
            raise TopicError(
                ErrorCode.policy_violation,
                f"adding {added} partitions to the {total} this broker has would exceed "
                f"max.partitions.per.broker={self.partitions_per_broker}",
            )


class TopicRegistry:
    """All topics of the cluster; ``generation`` changes whenever any topic does."""

    def __init__(self, store: MetadataStore, keys: Keys, limits: TopicLimits | None = None) -> None:
        self._store = store
        self._keys = keys
        self.limits = limits or TopicLimits()
        self._by_name: dict[str, TopicRecord] = {}
        self._by_id: dict[str, TopicRecord] = {}
        self._versions: dict[str, int] = {}
        self._collisions: dict[str, set[str]] = {}  # collision_key -> names with it ('.' and '_' unified)
        self._partitions = 0
        self._changing = asyncio.Lock()  # limit checks and the store write they guard happen together
        self.generation = 0

    @property
    def partition_count(self) -> int:
        """Partitions of all topics, internal ones included."""
        return self._partitions

    @property
    def topic_count(self) -> int:
        return len(self._by_name)

    async def load(self) -> None:
        self._by_name.clear()
        self._by_id.clear()
        self._versions.clear()
        self._collisions.clear()
        self._partitions = 0
        for item in await self._store.list(self._keys.topics_prefix()):
            self._remember(TopicRecord.decode(item.value), item.version)
        self.generation += 1

    def follow(self, cache: PrefixCache[TopicRecord]) -> None:
        """Cluster mode: keep the registry equal to a watch-fed view of ``topics/`` (keyed by name), so topics
        other brokers create, grow or delete show here too. Embedded mode never calls this (one writer)."""

        def apply(changed: frozenset[str] | None = None) -> None:
            items = cache.items
            names = set(items) | set(self._by_name) if changed is None else changed
            for name in names:
                record, version = items.get(name), cache.version_of(name)
                if record is None or version is None:
                    old = self._by_name.get(name)
                    if old is not None:
                        self._forget(old)
                elif self._versions.get(name) != version or self._by_name.get(name) != record:
                    if (old := self._by_name.get(name)) is not None and old.topic_id != record.topic_id:
                        self._forget(old)  # deleted and created again under the same name
                    self._remember(record, version)

        apply()
        cache.add_listener(apply)

    def _remember(self, topic: TopicRecord, version: int) -> None:
        old = self._by_name.get(topic.name)
        self._partitions += topic.partitions - (old.partitions if old is not None else 0)
        self._by_name[topic.name] = topic
        self._by_id[topic.topic_id] = topic
        topic_names.remember(topic.topic_id, topic.name)  # log lines say the name (brokers/observability)
        self._versions[topic.name] = version
        self._collisions.setdefault(collision_key(topic.name), set()).add(topic.name)
        self.generation += 1

    def _forget(self, topic: TopicRecord) -> None:
        old = self._by_name.pop(topic.name, None)
        self._partitions -= old.partitions if old is not None else 0
        self._by_id.pop(topic.topic_id, None)
        self._versions.pop(topic.name, None)
        key = collision_key(topic.name)
        same = self._collisions.get(key)
        if same is not None:
            same.discard(topic.name)
            if not same:
                del self._collisions[key]
        self.generation += 1

    def get(self, name: str) -> TopicRecord | None:
        return self._by_name.get(name)

    def by_id(self, topic_id: str) -> TopicRecord | None:
        return self._by_id.get(topic_id)

    def all(self) -> list[TopicRecord]:
        return sorted(self._by_name.values(), key=lambda t: t.name)

    def colliding(self, name: str) -> str | None:
        """An existing topic whose name differs from ``name`` only in '.' versus '_' (the least such name, so
        the message is stable), or None. Kafka refuses to create such a topic with INVALID_TOPIC_EXCEPTION."""
        if "." not in name and "_" not in name:
            return None
        others = self._collisions.get(collision_key(name), set()) - {name}
        return min(others) if others else None

    def name_refusal(self, name: str) -> str | None:
        """Why a topic ``name`` cannot be created now (an illegal name, or one colliding with an existing
        topic), or None. Produce answers INVALID_TOPIC_EXCEPTION with it for a missing topic: retrying cannot
        help, while UNKNOWN_TOPIC_OR_PARTITION would keep a producer retrying until its timeout."""
        other = self.colliding(name)
        if other is not None:
            return f"Topic '{name}' collides with existing topic: {other}"
        return name_problem(name)

    async def create(
        self, name: str, partitions: int, replication_factor: int, configs: dict[str, str],
        validate_only: bool = False,
    ) -> TopicRecord:
        """Create a topic; raises TopicError (TOPIC_ALREADY_EXISTS, INVALID_PARTITIONS, ...)."""
        check_name(name)
        if partitions <= 0:
            raise TopicError(ErrorCode.invalid_partitions, f"partition count {partitions} must be positive")
        if replication_factor <= 0:
            raise TopicError(
                ErrorCode.invalid_replication_factor, f"replication factor {replication_factor} must be positive"
            )
        async with self._changing:
            if name in self._by_name:
                raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")
            other = self.colliding(name)
            if other is not None:
                raise TopicError(
                    ErrorCode.invalid_topic_exception, f"Topic '{name}' collides with existing topic: {other}"
                )
            self.limits.check(self, name, partitions, partitions, new_topic=True)
            topic = TopicRecord(name, str(uuid.uuid4()), partitions, replication_factor, configs)
            if validate_only:
                return topic
            try:
                version = await self._store.put(self._keys.topic(name), topic.encode(), expected_version=0)
            except VersionConflict:
                await self.load()
                raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists") from None
            self._remember(topic, version)
            return topic

    async def delete(self, name: str) -> tuple[TopicRecord, list[int]]:
        """Delete a topic and its partition states; returns it and the ledger ids it held."""
        topic = self._by_name.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"topic {name!r} does not exist")
        if name in INTERNAL_TOPICS:
            raise TopicError(ErrorCode.invalid_request, f"internal topic {name!r} cannot be deleted")
        ledger_ids: list[int] = []
        states = await self._store.list(self._keys.partitions_prefix(topic.topic_id))
        for item in states:
            ledger_ids.extend(r.ledger_id for r in PartitionState.decode(item.value).ledgers)
        await self._store.delete(self._keys.topic(name))
        for item in states:
            await self._store.delete(item.key)
        self._forget(topic)
        return topic, ledger_ids

    async def set_configs(self, name: str, configs: dict[str, str], validate_only: bool = False) -> TopicRecord:
        """Replace a topic's configs (the ones set on it; the rest take defaults) - IncrementalAlterConfigs.
        Every broker follows the topic record, and readers take configs from it at use, so no restart."""
        async with self._changing:
            topic = self._by_name.get(name)
            if topic is None:
                raise TopicError(ErrorCode.unknown_topic_or_partition, f"topic {name!r} does not exist")
            changed = replace(topic, configs=dict(configs))
            if validate_only:
                return changed
            try:
                version = await self._store.put(
                    self._keys.topic(name), changed.encode(), expected_version=self._versions[name]
                )
            except VersionConflict:
                await self.load()
                raise TopicError(ErrorCode.invalid_update_version, f"topic {name!r} changed meanwhile; retry") from None
            self._remember(changed, version)
            return changed

    async def add_partitions(self, name: str, count: int, validate_only: bool = False) -> TopicRecord:
        """Grow a topic to ``count`` partitions; raises TopicError(INVALID_PARTITIONS) to shrink or beyond a
        limit."""
        async with self._changing:
            return await self._add_partitions(name, count, validate_only)

    async def _add_partitions(self, name: str, count: int, validate_only: bool) -> TopicRecord:
        topic = self._by_name.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"topic {name!r} does not exist")
        if name in INTERNAL_TOPICS:
            raise TopicError(ErrorCode.invalid_request, f"internal topic {name!r} cannot change its partitions")
        if count <= topic.partitions:
            raise TopicError(
                ErrorCode.invalid_partitions,
                f"topic {name!r} has {topic.partitions} partitions; the new count {count} must be larger",
            )
        self.limits.check(self, name, count, count - topic.partitions, new_topic=False)
        grown = replace(topic, partitions=count)
        if validate_only:
            return grown
        try:
            version = await self._store.put(
                self._keys.topic(name), grown.encode(), expected_version=self._versions[name]
            )
        except VersionConflict:
            await self.load()
            raise TopicError(ErrorCode.reassignment_in_progress, f"topic {name!r} changed; retry") from None
        self._remember(grown, version)
        return grown
