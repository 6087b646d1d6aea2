"""Broker settings and topic config definitions, with Kafka's names where Kafka has one."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace


class ConfigError(ValueError):
    """A setting that does not parse or is out of range; the message names it."""


def _bool(v: str) -> bool:
    low = v.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{v!r} is not a boolean")


def _positive(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"{v} is not positive")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise ValueError(f"{v} is negative")
    return n


def _restart_ms(v: str) -> int:
    n = int(v)
    if n < -1:
        raise ValueError(f"{v} must be -1 (never restart) or >= 0")
    return n


def _placement(v: str) -> str:
    name = v.strip()
    if name not in ("least-loaded", "rack-aware"):  # storage.ledger.placement.PLACEMENTS
        raise ValueError(f"{v!r} is not least-loaded or rack-aware")
    return name


def _timestamp_type(v: str) -> str:
    name = v.strip()
    if name not in ("CreateTime", "LogAppendTime"):
        raise ValueError(f"{v!r} is not CreateTime or LogAppendTime")
    return name


def _migration_policy(v: str) -> str:
    name = v.strip().lower()
    if name not in ("bidirectional", "upgrade", "downgrade", "disabled"):  # Kafka's, case-insensitive
        raise ValueError(f"{v!r} is not bidirectional, upgrade, downgrade or disabled")
    return name


MAX_LEDGER_BYTES = 4 * 1024**3
"""A ledger becomes one segment object, built in memory by the offloader and created on S3 by one
conditional PUT (at most 5 GiB) or, from 128 MiB, a multipart upload and one conditional server-side copy."""


def _transaction_version(v: str) -> int:
    level = int(v)
    if level not in (0, 1, 2):  # Kafka's transaction.version feature levels
        raise ValueError(f"{v!r} is not a transaction.version level (0, 1 or 2)")
    return level


def _ledger_bytes(v: str) -> int:
    n = int(v)
    if not 0 < n <= MAX_LEDGER_BYTES:
        raise ValueError(f"{v} must be between 1 and {MAX_LEDGER_BYTES} (a ledger is offloaded as one segment)")
    return n


def _client_auth(v: str) -> str:
    name = v.strip().lower()
    if name not in ("required", "requested", "none"):  # Kafka's ssl.client.auth values
        raise ValueError(f"{v!r} is not required, requested or none")
    return name


def _off_or_non_negative(v: str) -> int:
    n = int(v)
    if n < -1:
        raise ValueError(f"{v} must be -1 (off) or >= 0")
    return n


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
INT32_CONFIGS = frozenset({
    # Kafka declares these as INT (Java int32); the rest of the integer settings are LONG (int64). A value
    # outside the type's range is refused at start, as Kafka refuses it, instead of failing every response
    # that carries it later (a Metadata or DescribeConfigs answer encodes some of them as int32).
    "num.partitions", "default.replication.factor", "message.max.bytes", "socket.request.max.bytes",
    "ledger.ensemble.size", "ledger.write.quorum", "ledger.ack.quorum", "fetch.max.bytes",
    "group.consumer.heartbeat.interval.ms", "group.consumer.session.timeout.ms", "group.consumer.max.size",
    "offsets.topic.num.partitions", "group.initial.rebalance.delay.ms", "group.min.session.timeout.ms",
    "group.max.session.timeout.ms", "group.max.size", "offset.metadata.max.bytes", "offsets.retention.minutes",
    "offsets.snapshot.records", "bookie.restart.ms",
    "max.partitions.per.topic", "max.partitions.per.broker", "max.topics",
    "transaction.state.log.num.partitions", "transaction.max.timeout.ms", "transactional.id.expiration.ms",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
})
"""Integer settings that are int32 (Kafka's INT type); every other integer setting must fit an int64."""


def check_int_range(key: str, value: int) -> None:
    """Raise ValueError when ``value`` does not fit the setting's Kafka type (int32 or int64)."""
    top, kind = (INT32_MAX, "int32") if key in INT32_CONFIGS else (INT64_MAX, "int64")
    if not -top - 1 <= value <= top:
        raise ValueError(f"{value} is out of range for an {kind} (at most {top})")


def _listen_or_off(v: str) -> str:
    """HOST:PORT to listen on, or "" (off)."""
    value = v.strip()
    if value:
        parse_hostport(value, "address")
    return value


AUTHORIZERS = (
    "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "kafka.security.authorizer.AclAuthorizer",
    "acl",
)
"""Values of ``authorizer.class.name`` that turn ACL enforcement on (Kafka's class names are accepted so that
Kafka configs work unchanged; they all mean Tidelog's ACL authorizer)."""


def _authorizer(v: str) -> str:
    name = v.strip()
    if name and name not in AUTHORIZERS:
        raise ValueError(f"{v!r} is not empty (no authorizer) or one of {', '.join(AUTHORIZERS)}")
    return name


def _super_users(v: str) -> str:
    """``User:a;User:b`` (Kafka's separator); each must be Type:name."""
    names = [n.strip() for n in v.split(";") if n.strip()]
    for n in names:
        kind, sep, rest = n.partition(":")
        if not sep or not kind or not rest:
            raise ValueError(f"{n!r} is not a principal (want Type:name, separated by ;)")
    return ";".join(names)


def parse_hostport(value: str, what: str = "address") -> tuple[str, int]:
    """HOST:PORT with a port in 0..65535; raises ConfigError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT")
    try:
        n = int(port)
    except ValueError:
        raise ConfigError(f"{what} {value!r}: port {port!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise ConfigError(f"{what} {value!r}: port {n} is out of range")
    return host.strip("[]"), n


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything a broker process is configured with."""

    data_dir: str = "./data"
    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str = ""
    advertised_port: int = 0
    node_id: int = 0
    cluster: str = "tidelog"
    auto_create_topics: bool = field(default=True, metadata={"key": "auto.create.topics.enable"})
    num_partitions: int = field(default=1, metadata={"key": "num.partitions", "parse": _positive})
    default_replication_factor: int = field(
        default=1, metadata={"key": "default.replication.factor", "parse": _positive}
    )
    message_max_bytes: int = field(default=1048588, metadata={"key": "message.max.bytes", "parse": _positive})
    socket_request_max_bytes: int = field(
        default=100 * 1024 * 1024, metadata={"key": "socket.request.max.bytes", "parse": _positive}
    )
    ledger_rollover_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"key": "ledger.rollover.bytes", "parse": _ledger_bytes}
    )
    ledger_rollover_ms: int = field(
        default=4 * 3600 * 1000, metadata={"key": "ledger.rollover.ms", "parse": _positive}
    )
    tail_cache_bytes: int = field(
        default=32 * 1024 * 1024, metadata={"key": "tail.cache.bytes.per.partition", "parse": _positive}
    )
    # Every partition's tail cache together (the oldest entries of any partition are evicted first); 0: no bound.
    tail_cache_total_bytes: int = field(
        default=256 * 1024 * 1024, metadata={"key": "tail.cache.total.bytes", "parse": _non_negative}
    )
    bookies: int = 0  # `tidelog run --bookies N`: N local bookie processes; 0 = the in-process bookie
    ledger_ensemble_size: int = field(default=1, metadata={"key": "ledger.ensemble.size", "parse": _positive})
    ledger_write_quorum: int = field(default=1, metadata={"key": "ledger.write.quorum", "parse": _positive})
    ledger_ack_quorum: int = field(default=1, metadata={"key": "ledger.ack.quorum", "parse": _positive})
    ledger_placement: str = field(default="least-loaded", metadata={"key": "ledger.placement", "parse": _placement})
    bookie_restart_ms: int = field(default=1000, metadata={"key": "bookie.restart.ms", "parse": _restart_ms})
    fetch_max_bytes: int = field(default=55 * 1024 * 1024, metadata={"key": "fetch.max.bytes", "parse": _positive})
    consumer_heartbeat_interval_ms: int = field(
        default=5000, metadata={"key": "group.consumer.heartbeat.interval.ms", "parse": _positive}
    )
    consumer_session_timeout_ms: int = field(
        default=45000, metadata={"key": "group.consumer.session.timeout.ms", "parse": _positive}
    )
    consumer_max_size: int = field(default=2**31 - 1, metadata={"key": "group.consumer.max.size", "parse": _positive})
    offsets_topic_num_partitions: int = field(
        default=50, metadata={"key": "offsets.topic.num.partitions", "parse": _positive}
    )
    group_initial_rebalance_delay_ms: int = field(
        default=3000, metadata={"key": "group.initial.rebalance.delay.ms", "parse": _non_negative}
    )
    group_min_session_timeout_ms: int = field(
        default=6000, metadata={"key": "group.min.session.timeout.ms", "parse": _positive}
    )
    group_max_session_timeout_ms: int = field(
        default=1_800_000, metadata={"key": "group.max.session.timeout.ms", "parse": _positive}
    )
    group_max_size: int = field(default=2**31 - 1, metadata={"key": "group.max.size", "parse": _positive})
    offset_metadata_max_bytes: int = field(
        default=4096, metadata={"key": "offset.metadata.max.bytes", "parse": _non_negative}
    )
    offsets_retention_minutes: int = field(
        default=10080, metadata={"key": "offsets.retention.minutes", "parse": _positive}
    )
    offsets_retention_check_interval_ms: int = field(
        default=600_000, metadata={"key": "offsets.retention.check.interval.ms", "parse": _positive}
    )
    offsets_snapshot_records: int = field(
        default=10_000, metadata={"key": "offsets.snapshot.records", "parse": _positive}
    )
    object_store: str = ""  # `tidelog run --object-store URL`; "" = the local directory DATA/objects
    # Closed ledgers are offloaded to the object store (design §7); false keeps everything on the bookies.
    offload_enable: bool = field(default=True, metadata={"key": "offload.enable"})
    tiered_block_cache_bytes: int = field(
        default=256 * 1024 * 1024, metadata={"key": "tiered.block.cache.bytes", "parse": _non_negative}
    )
    offload_high_water_bytes: int = field(
        default=4 * 1024**3, metadata={"key": "offload.bookie.high.water.bytes", "parse": _off_or_non_negative}
    )
    # Confirmed entries kept so that offload builds segments from them, not from bookie reads (broker-wide).
    offload_owner_bytes_max: int = field(
        default=256 * 1024 * 1024, metadata={"key": "offload.owner.bytes.max", "parse": _non_negative}
    )
    retention_check_interval_ms: int = field(
        default=300_000, metadata={"key": "log.retention.check.interval.ms", "parse": _positive}
    )
    offload_gc_interval_ms: int = field(
        default=600_000, metadata={"key": "offload.gc.interval.ms", "parse": _positive}
    )
    # Limits on topics and partitions (docs/operations.md "Topics, partitions and configs"): CreateTopics,
    # CreatePartitions and auto-creation beyond them are refused, nothing is created.
    max_partitions_per_topic: int = field(
        default=10_000, metadata={"key": "max.partitions.per.topic", "parse": _positive}
    )
    max_partitions_per_broker: int = field(
        default=50_000, metadata={"key": "max.partitions.per.broker", "parse": _positive}
    )
    max_topics: int = field(default=10_000, metadata={"key": "max.topics", "parse": _positive})
    # Produce batch validation (brokers/codec/validate.py): defaults of the topic configs message.timestamp.*.
    log_message_timestamp_type: str = field(
        default="CreateTime", metadata={"key": "log.message.timestamp.type", "parse": _timestamp_type}
    )
    log_message_timestamp_before_max_ms: int = field(
        default=2**63 - 1, metadata={"key": "log.message.timestamp.before.max.ms", "parse": _non_negative}
    )
    log_message_timestamp_after_max_ms: int = field(
        default=2**63 - 1, metadata={"key": "log.message.timestamp.after.max.ms", "parse": _non_negative}
    )
    # Disk full (storage/bookie/journal.py, metadata/disk_reserve.py): the in-process bookie's journal file
    # size (a file is reclaimed whole once nothing in it is live) and the reserve file kept by the journal and
    # by the embedded metadata store, released on a full disk so that deletes still go through.
    bookie_journal_roll_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"key": "bookie.journal.roll.bytes", "parse": _positive}
    )
    disk_reserve_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"key": "disk.reserve.bytes", "parse": _non_negative}
    )
    # Connections and memory (brokers/connection.py, brokers/response_memory.py).
    connection_max_inflight_requests: int = field(
        default=32, metadata={"key": "connection.max.inflight.requests", "parse": _positive}
    )
    connection_max_queued_response_bytes: int = field(
        default=1024 * 1024, metadata={"key": "connection.max.queued.response.bytes", "parse": _positive}
    )
    fetch_response_memory_bytes: int = field(
        default=256 * 1024 * 1024, metadata={"key": "fetch.response.memory.bytes", "parse": _positive}
    )
    connections_max_idle_ms: int = field(
        default=600_000, metadata={"key": "connections.max.idle.ms", "parse": _positive}
    )
    socket_request_timeout_ms: int = field(
        default=30_000, metadata={"key": "socket.request.timeout.ms", "parse": _positive}
    )
    broker_session_timeout_ms: int = field(
        default=9000, metadata={"key": "broker.session.timeout.ms", "parse": _positive}
    )  # `tidelog broker`: the ttl of its lease (its owner keys and registration vanish this long after it dies)
    broker_rejoin_delay_ms: int = field(
        default=10_000, metadata={"key": "broker.rejoin.delay.ms", "parse": _non_negative}
    )  # a broker that left (crash, restart) and came back is balanced onto only this long after it rejoined
    controlled_shutdown_timeout_ms: int = field(
        default=30_000, metadata={"key": "controlled.shutdown.timeout.ms", "parse": _positive}
    )  # `tidelog broker` on SIGTERM: how long to wait for its partitions to move away before closing anyway
    consumer_migration_policy: str = field(
        default="bidirectional", metadata={"key": "group.consumer.migration.policy", "parse": _migration_policy}
    )  # KIP-848 online conversion of non-empty groups between the classic and the consumer protocol
    # The transaction coordinator (brokers/transactions/): Kafka's names and defaults.
    transaction_state_log_num_partitions: int = field(
        default=50, metadata={"key": "transaction.state.log.num.partitions", "parse": _positive}
    )
    transaction_max_timeout_ms: int = field(
        default=900_000, metadata={"key": "transaction.max.timeout.ms", "parse": _positive}
    )
    transactional_id_expiration_ms: int = field(
        default=604_800_000, metadata={"key": "transactional.id.expiration.ms", "parse": _positive}
    )
    transaction_abort_timed_out_transaction_cleanup_interval_ms: int = field(
        default=10_000,
        metadata={"key": "transaction.abort.timed.out.transaction.cleanup.interval.ms", "parse": _positive},
    )
    transaction_version: int = field(
        default=2, metadata={"key": "transaction.version", "parse": _transaction_version}
    )  # the finalized transaction.version feature (ApiVersions); 2: KIP-890 part 2 offered to clients that ask
    admin_listen: str = field(default="", metadata={"key": "admin.listen", "parse": _listen_or_off})
    # Security (brokers/security/, docs/operations.md "Security"): named listeners, TLS and SASL.
    listeners: str = field(default="", metadata={"key": "listeners", "parse": str.strip})
    advertised_listeners: str = field(default="", metadata={"key": "advertised.listeners", "parse": str.strip})
    listener_security_protocol_map: str = field(
        default="", metadata={"key": "listener.security.protocol.map", "parse": str.strip}
    )
    sasl_enabled_mechanisms: str = field(
        default="SCRAM-SHA-256,SCRAM-SHA-512", metadata={"key": "sasl.enabled.mechanisms", "parse": str.strip}
    )
    connections_max_reauth_ms: int = field(
        default=0, metadata={"key": "connections.max.reauth.ms", "parse": _non_negative}
    )
    connection_failed_authentication_delay_ms: int = field(
        default=100, metadata={"key": "connection.failed.authentication.delay.ms", "parse": _non_negative}
    )  # Kafka's (KIP-306): a failed authentication's connection closes this long after its answer
    ssl_keystore_location: str = field(default="", metadata={"key": "ssl.keystore.location", "parse": str.strip})
    ssl_key_password: str = field(default="", metadata={"key": "ssl.key.password", "parse": str, "secret": True})
    ssl_truststore_location: str = field(
        default="", metadata={"key": "ssl.truststore.location", "parse": str.strip}
    )
    ssl_client_auth: str = field(default="none", metadata={"key": "ssl.client.auth", "parse": _client_auth})
    # ACLs (brokers/security/authorizer.py): enforced only when an authorizer is configured, as in Kafka.
    authorizer_class_name: str = field(default="", metadata={"key": "authorizer.class.name", "parse": _authorizer})
    super_users: str = field(default="", metadata={"key": "super.users", "parse": _super_users})
    allow_everyone_if_no_acl_found: bool = field(default=False, metadata={"key": "allow.everyone.if.no.acl.found"})

    @property
    def super_user_set(self) -> frozenset[str]:
        return frozenset(n for n in self.super_users.split(";") if n)

    @property
    def advertised(self) -> tuple[str, int]:
        return (self.advertised_host or self.host, self.advertised_port or self.port)

    def with_overrides(self, pairs: Iterable[str]) -> BrokerConfig:
        """Apply ``key=value`` settings (Kafka-style names); raises ConfigError naming the bad one."""
        by_key = {f.metadata["key"]: f for f in fields(self) if "key" in f.metadata}
        changes: dict[str, object] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"config {pair!r} is not key=value")
            f = by_key.get(key)
            if f is None:
                raise ConfigError(f"unknown config {key!r}; known: {', '.join(sorted(by_key))}")
            parse: Callable[[str], object] = f.metadata.get("parse") or (_bool if f.type == "bool" else int)
            try:
                value = parse(raw)
                if isinstance(value, int) and not isinstance(value, bool):
                    check_int_range(key, value)
                changes[f.name] = value
            except ValueError as e:
                # int()'s own message ("invalid literal for int() with base 10") is Python's, not the user's
                reason = "not an integer" if "invalid literal for int()" in str(e) else str(e)
                raise ConfigError(f"config {key}={raw!r}: {reason}") from None
        return replace(self, **changes)  # type: ignore[arg-type]

    def broker_configs(self) -> dict[str, str]:
        """Broker configs as DescribeConfigs reports them (Kafka names, string values)."""
        out = {
            "broker.id": str(self.node_id),
            "node.id": str(self.node_id),
            "log.dirs": self.data_dir,
        }
        for f in fields(self):
            if "key" in f.metadata and not f.metadata.get("secret"):  # secrets are never reported
                value = getattr(self, f.name)
                out[f.metadata["key"]] = str(value).lower() if isinstance(value, bool) else str(value)
        out["listeners"] = self.listeners or f"PLAINTEXT://{self.host}:{self.port}"
        out["advertised.listeners"] = self.advertised_listeners or "PLAINTEXT://{}:{}".format(*self.advertised)
        return out

    def secret_keys(self) -> frozenset[str]:
        """Settings that hold secrets: never logged, reported as sensitive (no value) by DescribeConfigs."""
        return frozenset(f.metadata["key"] for f in fields(self) if f.metadata.get("secret"))


# Topic configs Kafka clients and tools set; the default value is what DescribeConfigs reports.
TOPIC_CONFIG_DEFAULTS: dict[str, str] = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "index.interval.bytes": "4096",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588",
    "message.timestamp.after.max.ms": "9223372036854775807",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True, slots=True)
class TopicConfigType:
    """A topic config's Kafka type and valid values (LogConfig's ConfigDef): ``kind`` is int (int32), long
    (int64), double, boolean, enum (one of ``allowed``) or list (comma-separated items of ``allowed``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    allowed: tuple[str, ...] = ()

    def check(self, key: str, value: str) -> None:
        """Raise ConfigError naming ``key`` unless ``value`` is valid for it."""
        text = value.strip()
        if self.kind in ("int", "long"):
            top = INT32_MAX if self.kind == "int" else INT64_MAX
            if not _INT_TEXT.match(text):
                raise ConfigError(f"invalid value {value!r} for {key}: not an integer ({self.kind})")
            n: float = int(text)
            if not -top - 1 <= n <= top:
                raise ConfigError(f"invalid value {value!r} for {key}: out of range for an {self.kind}")
        elif self.kind == "double":
            try:
                n = float(text)
            except ValueError:
                raise ConfigError(f"invalid value {value!r} for {key}: not a number (double)") from None
            if not math.isfinite(n):
                raise ConfigError(f"invalid value {value!r} for {key}: not a finite number")
        elif self.kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ConfigError(f"invalid value {value!r} for {key}: must be true or false")
            return
        elif self.kind == "enum":
            if text not in self.allowed:
                raise ConfigError(f"invalid value {value!r} for {key}; allowed: {', '.join(self.allowed)}")
            return
        else:  # list
            items = [item.strip() for item in text.split(",")]
            if not text or any(item not in self.allowed for item in items):
                raise ConfigError(
                    f"invalid value {value!r} for {key}: a comma-separated list of {', '.join(self.allowed)}"
                )
            return
        if self.low is not None and n < self.low:
            raise ConfigError(f"invalid value {value!r} for {key}: must be at least {_num(self.low)}")
        if self.high is not None and n > self.high:
            raise ConfigError(f"invalid value {value!r} for {key}: must be at most {_num(self.high)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _int(low: int | None = None) -> TopicConfigType:
    return TopicConfigType("int", low)


def _long(low: int | None = None) -> TopicConfigType:
    return TopicConfigType("long", low)


_BOOLEAN = TopicConfigType("boolean")
TOPIC_CONFIG_TYPES: dict[str, TopicConfigType] = {
    # Kafka's LogConfig types and validators (atLeast/between/in), one per key of TOPIC_CONFIG_DEFAULTS.
    "cleanup.policy": TopicConfigType("list", allowed=("compact", "delete")),
    "compression.type": TopicConfigType("enum", allowed=("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd")),
    "delete.retention.ms": _long(0),
    "file.delete.delay.ms": _long(0),
    "flush.messages": _long(1),
    "flush.ms": _long(0),
    "index.interval.bytes": _int(0),
    "local.retention.bytes": _long(-2),
    "local.retention.ms": _long(-2),
    "max.compaction.lag.ms": _long(1),
    "max.message.bytes": _int(0),
    "message.timestamp.after.max.ms": _long(0),
    "message.timestamp.before.max.ms": _long(0),
    "message.timestamp.type": TopicConfigType("enum", allowed=("CreateTime", "LogAppendTime")),
    "min.cleanable.dirty.ratio": TopicConfigType("double", 0.0, 1.0),
    "min.compaction.lag.ms": _long(0),
    "min.insync.replicas": _int(1),
    "preallocate": _BOOLEAN,
    "remote.storage.enable": _BOOLEAN,
    "retention.bytes": _long(),
    "retention.ms": _long(-1),
    "segment.bytes": _int(14),
    "segment.index.bytes": _int(4),
    "segment.jitter.ms": _long(0),
    "segment.ms": _long(1),
    "unclean.leader.election.enable": _BOOLEAN,
}


def validate_topic_configs(configs: dict[str, str | None]) -> dict[str, str]:
    """Check names and values of topic configs against their Kafka types and ranges; returns the set ones.
    Raises ConfigError naming the config (CreateTopics answers INVALID_CONFIG with its text)."""
    out: dict[str, str] = {}
    for key, value in configs.items():
        kind = TOPIC_CONFIG_TYPES.get(key)
        if kind is None:
            raise ConfigError(f"unknown topic config {key!r}")
        if value is None:
            continue
        kind.check(key, value)
        out[key] = value
    return out
