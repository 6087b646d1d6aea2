"""Values and errors of partition logs."""

from __future__ import annotations

from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.log.inflight import AppendResult
from brokers.routing import Endpoint, Leader

__all__ = ["AppendResult", "LogConfig", "LogError", "LogMemory", "NotLeader", "ReadResult"]


class LogError(Exception):
    """An append or read the log refuses; carries the Kafka error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotLeader(LogError):
    """This broker does not serve the partition (not its owner, not taken yet, or fenced): the client is told
    NOT_LEADER_OR_FOLLOWER and, where the API version has room for it, who leads now (KIP-951)."""

    def __init__(self, message: str, leader: Leader | None = None, endpoint: Endpoint | None = None) -> None:
        super().__init__(ErrorCode.not_leader_or_follower, message)
        self.leader = leader
        """The partition's current owner and epoch, if known (None: no owner, or unknown to the raiser)."""
        self.endpoint = endpoint
        """The owner's advertised endpoint, if it is a live broker."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Ledger and cache settings of partition logs."""

    rollover_bytes: int = 64 * 1024 * 1024
    rollover_ms: int = 4 * 3600 * 1000
    ensemble_size: int = 1
    write_quorum: int = 1
    ack_quorum: int = 1
    tail_cache_bytes: int = 32 * 1024 * 1024
    tail_cache_total_bytes: int = 0
    """Tail caches of all partitions together (brokers/log/cache.py TailBudget); 0: no broker-wide bound."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Batches read from a log, with its high watermark and start offset at that moment."""

    batches: list[memoryview]
    high_watermark: int
    log_start_offset: int


@dataclass(frozen=True, slots=True)
class LogMemory:
    """What one partition log holds in memory, in bytes (brokers/observability/memory.py exports it)."""

    tail_cache: int = 0
    """Recent batches kept for tail reads (bounded by ``tail.cache.bytes.per.partition``)."""
    inflight: int = 0
    """Entries given offsets and not yet durable."""
    producer_state: int = 0
    """Idempotent-producer tables (append-side and durable; an estimate per producer)."""

    @property
    def total(self) -> int:
        return self.tail_cache + self.inflight + self.producer_state
