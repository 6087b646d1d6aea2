"""Metadata values: frozen dataclasses, stored as msgpack maps (unknown fields are ignored on read)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgpack


def _pack(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(data: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(obj, dict):
        raise ValueError("metadata value is not a map")
    return obj


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """A topic: its id (a UUID string), partition count and the configs set on it (not defaults)."""

    name: str
    topic_id: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _pack(
            {
                "name": self.name,
                "id": self.topic_id,
                "partitions": self.partitions,
                "rf": self.replication_factor,
                "configs": self.configs,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> TopicRecord:
        d = _unpack(data)
        return cls(d["name"], d["id"], d["partitions"], d.get("rf", 1), dict(d.get("configs", {})))


@dataclass(frozen=True, slots=True)
class LedgerRef:
    """One ledger of a partition log: the offsets it holds; ``last_offset`` is -1 while it is open.

    ``offloaded``: its segment is committed (a SegmentRecord); the ledger may still be on the bookies until
    the offloader deletes it and drops the ref. Read it from the segment, never from the ledger.
    """

    ledger_id: int
    first_offset: int
    last_offset: int = -1
    max_timestamp: int = -1
    closed: bool = False
    offloaded: bool = False

    def to_list(self) -> list[Any]:
        return [self.ledger_id, self.first_offset, self.last_offset, self.max_timestamp, self.closed, self.offloaded]

    @classmethod
    def from_list(cls, v: list[Any]) -> LedgerRef:
        return cls(int(v[0]), int(v[1]), int(v[2]), int(v[3]), bool(v[4]), len(v) > 5 and bool(v[5]))


@dataclass(frozen=True, slots=True)
class ProducerSnapshotEntry:
    """Idempotent-producer state carried across ledgers: the last batches' sequence ranges."""

    producer_id: int
    epoch: int
    batches: tuple[tuple[int, int, int, int], ...]  # (first_seq, last_seq, first_offset, last_offset)

    def to_list(self) -> list[Any]:
        return [self.producer_id, self.epoch, [list(b) for b in self.batches]]

    @classmethod
    def from_list(cls, v: list[Any]) -> ProducerSnapshotEntry:
        return cls(int(v[0]), int(v[1]), tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in v[2]))


EPOCH_HISTORY_LIMIT = 100
"""Leader epochs kept in a PartitionState's history (only epochs that wrote records stay in it)."""
UNDEFINED_EPOCH_OFFSET = (-1, -1)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """The managed-log state of one partition, changed only by compare-and-swap.

    ``ledgers`` are in offset order; only the last may be open. ``producers`` is the idempotent producer
    state as of the start of the first open (unclosed) ledger.
    """

    epoch: int = 0
    log_start_offset: int = 0
    ledgers: tuple[LedgerRef, ...] = ()
    producers: tuple[ProducerSnapshotEntry, ...] = ()
    epochs: tuple[tuple[int, int], ...] = ()
    """Leader epoch history, oldest first: (epoch, the first offset written in it) — Kafka's leader-epoch
    checkpoint, what OffsetForLeaderEpoch answers from. Stored states written before it existed have none;
    the next load starts it."""
    txn_ongoing: tuple[tuple[int, int], ...] = ()
    """Transactions open at the same point as ``producers``: (producer_id, first offset of the transaction on
    this partition) — what holds the last stable offset back, carried across rollover, restart and takeover."""
    txn_aborted: tuple[tuple[int, int, int], ...] = ()
    """Aborted transactions whose ABORT marker is in a ledger not yet offloaded, in marker order: (producer_id,
    first offset, marker offset). Those of offloaded ledgers live in their segments (storage/segment/format.py),
    so this stays as small as the ledger tail. States written before transactions existed have neither."""
    txn_coordinators: tuple[tuple[int, int], ...] = ()
    """(producer_id, coordinator epoch of the last transaction marker written for it): a marker from an older
    coordinator epoch is refused (TRANSACTION_COORDINATOR_FENCED), also after a takeover."""

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "epoch": self.epoch,
            "start": self.log_start_offset,
            "ledgers": [r.to_list() for r in self.ledgers],
            "producers": [p.to_list() for p in self.producers],
        }
        if self.epochs:
            value["epochs"] = [list(e) for e in self.epochs]
        if self.txn_ongoing:
            value["txns"] = [list(t) for t in self.txn_ongoing]
        if self.txn_aborted:
            value["aborted"] = [list(t) for t in self.txn_aborted]
        if self.txn_coordinators:
            value["txn_coordinators"] = [list(t) for t in self.txn_coordinators]
        return _pack(value)

    @classmethod
    def decode(cls, data: bytes) -> PartitionState:
        d = _unpack(data)
        return cls(
            int(d.get("epoch", 0)),
            int(d.get("start", 0)),
            tuple(LedgerRef.from_list(v) for v in d.get("ledgers", [])),
            tuple(ProducerSnapshotEntry.from_list(v) for v in d.get("producers", [])),
            tuple((int(e[0]), int(e[1])) for e in d.get("epochs", [])),
            tuple((int(t[0]), int(t[1])) for t in d.get("txns", [])),
            tuple((int(t[0]), int(t[1]), int(t[2])) for t in d.get("aborted", [])),
            tuple((int(t[0]), int(t[1])) for t in d.get("txn_coordinators", [])),
        )

    def with_epoch_start(self, epoch: int, start: int) -> PartitionState:
        """The state with ``epoch`` starting at offset ``start`` in its history (at every load or takeover).

        As Kafka's LeaderEpochFileCache.assign: entries at or after the new one (an epoch not below it, or
        one that starts at or after ``start``: it holds no records) are dropped, so epochs that wrote
        nothing do not accumulate; entries wholly below the log start offset are dropped and the one
        holding it starts there (truncateFromStart); at most EPOCH_HISTORY_LIMIT are kept, newest."""
        kept = [e for e in self.epochs if e[0] < epoch and e[1] < start]
        kept.append((epoch, start))
        below = [e for e in kept if e[1] <= self.log_start_offset]
        if below:
            kept = [(below[-1][0], max(below[-1][1], self.log_start_offset)), *kept[len(below):]]
        return replace(self, epochs=tuple(kept[-EPOCH_HISTORY_LIMIT:]))

    def end_offset_for(self, requested: int, log_end_offset: int) -> tuple[int, int]:
        """OffsetForLeaderEpoch's (leader epoch, end offset) for ``requested``, as Kafka's
        LeaderEpochFileCache.endOffsetFor: the current epoch ends at the log end offset; an older one at the
        start of the first later epoch, reported with the largest known epoch not above it (or itself when
        it is older than every known epoch); (-1, -1) for -1 or an epoch above every known one."""
        if requested < 0 or not self.epochs:
            return UNDEFINED_EPOCH_OFFSET
        if requested == self.epochs[-1][0]:
            return requested, log_end_offset
        higher = next((e for e in self.epochs if e[0] > requested), None)
        if higher is None:
            return UNDEFINED_EPOCH_OFFSET
        floor = [e for e in self.epochs if e[0] <= requested]
        return (floor[-1][0] if floor else requested), higher[1]

    @property
    def end_offset(self) -> int:
        """Offset after the last record of the last closed ledger (open ledgers are not counted)."""
        for ref in reversed(self.ledgers):
            if ref.closed:
                return ref.last_offset + 1 if ref.last_offset >= ref.first_offset else ref.first_offset
        return self.log_start_offset

    def with_ledgers(self, ledgers: tuple[LedgerRef, ...]) -> PartitionState:
        return replace(self, ledgers=ledgers)

    @property
    def txn_floor(self) -> int:
        """The first offset whose aborted transactions this state indexes: below the first ledger not offloaded
        (their segments index them) and below the log start (gone) they are not kept."""
        live = next((r.first_offset for r in self.ledgers if not r.offloaded), self.end_offset)
        return max(live, self.log_start_offset)

    def with_txns_trimmed(self) -> PartitionState:
        """The state without the aborted transactions whose marker is below ``txn_floor``."""
        floor = self.txn_floor
        kept = tuple(t for t in self.txn_aborted if t[2] >= floor)
        return self if len(kept) == len(self.txn_aborted) else replace(self, txn_aborted=kept)


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One offloaded segment (``segments/{topic_id}/{partition}/{base_offset}``): enough to read it.

    ``data_length`` is where the batches end and the index starts; ``checksum`` is the xxh64 of the object
    stored in its footer. Any broker can build a segment reader from this record alone.
    """

    base_offset: int
    last_offset: int
    ledger_id: int
    object_key: str
    size: int
    data_length: int
    max_timestamp: int
    checksum: int
    created_ms: int = 0
    aborted: int = 0
    """How many aborted transactions the segment's index lists (their ABORT markers are in the segment)."""
    aborted_first: int = -1
    """The lowest first offset among them (-1: none): a read_committed fetch of offsets below it needs none
    of them, so it reads no segment tail for them."""

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "base": self.base_offset,
            "last": self.last_offset,
            "ledger": self.ledger_id,
            "key": self.object_key,
            "size": self.size,
            "data": self.data_length,
            "max_ts": self.max_timestamp,
            "xxh64": self.checksum,
            "created": self.created_ms,
        }
        if self.aborted:
            value["aborted"] = self.aborted
            value["aborted_first"] = self.aborted_first
        return _pack(value)

    @classmethod
    def decode(cls, data: bytes) -> SegmentRecord:
        d = _unpack(data)
        return cls(
            int(d["base"]),
            int(d["last"]),
            int(d["ledger"]),
            str(d["key"]),
            int(d["size"]),
            int(d["data"]),
            int(d["max_ts"]),
            int(d["xxh64"]),
            int(d.get("created", 0)),
            int(d.get("aborted", 0)),
            int(d.get("aborted_first", -1)),
        )


@dataclass(frozen=True, slots=True)
class OffloadIntent:
    """Written before a segment upload is attempted: the object name the attempt uses (for retries and GC)."""

    ledger_id: int
    base_offset: int
    object_key: str
    created_ms: int = 0

    def encode(self) -> bytes:
        return _pack({"ledger": self.ledger_id, "base": self.base_offset, "key": self.object_key,
                      "created": self.created_ms})  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> OffloadIntent:
        d = _unpack(data)
        return cls(int(d["ledger"]), int(d["base"]), str(d["key"]), int(d.get("created", 0)))


@dataclass(frozen=True, slots=True)
class BrokerConfigRecord:
    """Dynamic broker configs of one broker, or of every broker (the cluster-wide defaults): Kafka names and
    string values, as AlterConfigs set them. Kept in one key so a change is seen whole."""

    configs: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _pack({"configs": self.configs})

    @classmethod
    def decode(cls, data: bytes) -> BrokerConfigRecord:
        d = _unpack(data)
        return cls({str(k): str(v) for k, v in dict(d.get("configs", {})).items()})


@dataclass(frozen=True, slots=True)
class AclRecord:
    """One ACL binding as stored (Kafka's integer codes for the resource type, pattern type, operation and
    permission; brokers/security/acl.py gives them meaning)."""

    resource_type: int
    name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int

    def encode(self) -> bytes:
        return _pack({
            "rtype": self.resource_type, "name": self.name, "ptype": self.pattern_type, "principal": self.principal,
            "host": self.host, "op": self.operation, "perm": self.permission,
        })  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> AclRecord:
        d = _unpack(data)
        return cls(
            int(d["rtype"]), str(d["name"]), int(d["ptype"]), str(d["principal"]), str(d["host"]), int(d["op"]),
            int(d["perm"]),
        )


@dataclass(frozen=True, slots=True)
class BrokerRecord:
    """A live broker's registration (bound to its lease)."""

    node_id: int
    host: str
    port: int
    rack: str | None = None
    listeners: tuple[tuple[str, str, int], ...] = ()
    """Every named listener as (name, advertised host, advertised port); empty: only host and port."""

    def encode(self) -> bytes:
        out: dict[str, object] = {"id": self.node_id, "host": self.host, "port": self.port, "rack": self.rack}
        if self.listeners:
            out["listeners"] = [list(item) for item in self.listeners]
        return _pack(out)

    @classmethod
    def decode(cls, data: bytes) -> BrokerRecord:
        d = _unpack(data)
        listeners = tuple((str(n), str(h), int(p)) for n, h, p in d.get("listeners") or ())
        return cls(int(d["id"]), str(d["host"]), int(d["port"]), d.get("rack"), listeners)


@dataclass(frozen=True, slots=True)
class ControllerRecord:
    """The elected controller (``controller``, bound to its session lease)."""

    node_id: int

    def encode(self) -> bytes:
        return _pack({"id": self.node_id})

    @classmethod
    def decode(cls, data: bytes) -> ControllerRecord:
        return cls(int(_unpack(data)["id"]))


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """Who owns a partition (``owners/{topic_id}/{p}``, bound to the owner's lease) and at which epoch.

    ``epoch`` is the partition epoch the owner set in PartitionState when it took the partition, so a
    metadata view can answer leader and leader epoch from this one key.
    """

    node_id: int
    epoch: int

    def encode(self) -> bytes:
        return _pack({"id": self.node_id, "epoch": self.epoch})

    @classmethod
    def decode(cls, data: bytes) -> OwnerRecord:
        d = _unpack(data)
        return cls(int(d["id"]), int(d["epoch"]))


@dataclass(frozen=True, slots=True)
class TopicAssignment:
    """The controller's desired owner of each partition of one topic (``assignments/{topic_id}``).

    ``owners[p]`` is the node id that should own partition ``p``. One key per topic: a topic's partitions
    change together in one put, and a 50-partition ``__consumer_offsets`` is one watch event, not 50.
    """

    topic_id: str
    owners: tuple[int, ...]

    def encode(self) -> bytes:
        return _pack({"topic": self.topic_id, "owners": list(self.owners)})

    @classmethod
    def decode(cls, data: bytes) -> TopicAssignment:
        d = _unpack(data)
        return cls(str(d["topic"]), tuple(int(n) for n in d["owners"]))


@dataclass(frozen=True, slots=True)
class Reassignment:
    """A requested move (``reassignments/{topic_id}/{p}``): the partition should be owned by ``target``.

    Written by AlterPartitionReassignments; the controller makes ``target`` the desired owner while it is
    live and deletes the key once the owner key names ``target`` or ``target`` is gone.
    """

    topic_id: str
    partition: int
    target: int

    def encode(self) -> bytes:
        return _pack({"topic": self.topic_id, "p": self.partition, "target": self.target})

    @classmethod
    def decode(cls, data: bytes) -> Reassignment:
        d = _unpack(data)
        return cls(str(d["topic"]), int(d["p"]), int(d["target"]))


def encode_int(value: int) -> bytes:
    """Counters are stored as decimal text so they read well in etcdctl."""
    return str(value).encode()


def decode_int(data: bytes) -> int:
    return int(data.decode())
