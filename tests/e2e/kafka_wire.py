"""Hand-built Kafka wire frames for the end-to-end tests.

Deliberately independent of the broker's own codec (kio): every byte here is laid out with
``struct`` from the protocol specification, so a test using it checks the broker against the
spec rather than against itself.  Only what the tests need is implemented:

* request header v1 (non-flexible) and v2 (flexible), response header v0 / v1;
* ApiVersions v0 request and response (also the v0-shaped UNSUPPORTED_VERSION answer);
* Produce v3..v12 requests (non-flexible up to v8, flexible from v9) and the first partition's
  error code of the response;
* Fetch v4..v11 requests and responses (non-flexible);
* Kafka v2 record batches (magic 2) with a real CRC-32C, uncompressed, built and parsed.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import crc32c

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18

ERR_NONE = 0
ERR_CORRUPT_MESSAGE = 2
ERR_UNSUPPORTED_VERSION = 35


# --------------------------------------------------------------------------- primitives


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(n: int) -> bytes:
    """Zig-zag signed varint (records use these for lengths and deltas)."""
    return uvarint((n << 1) ^ (n >> 63))


def read_uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    raw, pos = read_uvarint(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def compact_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def nbytes(b: bytes | None) -> bytes:
    if b is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(b)) + b


def compact_bytes(b: bytes | None) -> bytes:
    if b is None:
        return uvarint(0)
    return uvarint(len(b) + 1) + b


EMPTY_TAGS = uvarint(0)


# --------------------------------------------------------------------------- frames


def request_header(api_key: int, version: int, correlation_id: int, client_id: str | None, flexible: bool) -> bytes:
    head = struct.pack(">hhi", api_key, version, correlation_id) + string(client_id)
    return head + EMPTY_TAGS if flexible else head


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def request(
    api_key: int,
    version: int,
    body: bytes,
    correlation_id: int = 1,
    client_id: str | None = "tidelog-e2e-raw",
    flexible: bool = False,
) -> bytes:
    return frame(request_header(api_key, version, correlation_id, client_id, flexible) + body)


class Closed(Exception):
    """The broker closed the connection (EOF or reset) before a full frame arrived."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        try:
            chunk = sock.recv(min(n, 1 << 20))
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Closed(str(exc)) from exc
        if not chunk:
            raise Closed("EOF")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    if size < 0 or size > 1 << 30:
        raise ValueError(f"implausible response frame size {size}")
    return recv_exact(sock, size)


def connect(bootstrap: str, timeout: float = 30.0) -> socket.socket:
    host, port = bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1", "the e2e tests only ever talk to 127.0.0.1"
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def wait_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Read until the peer closes; return whatever bytes came before the close.

    Raises TimeoutError if the connection is still open after ``timeout`` seconds (a hang guard,
    not a timing assertion: a broker that closes the connection does so at once).
    """
    sock.settimeout(timeout)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got)
        except TimeoutError as exc:
            raise TimeoutError(f"connection still open after {timeout}s; received {bytes(got)[:200]!r}") from exc
        if not chunk:
            return bytes(got)
        got += chunk
        if time.monotonic() > deadline:
            raise TimeoutError(f"connection still open after {timeout}s; received {bytes(got)[:200]!r}")


# --------------------------------------------------------------------------- ApiVersions


@dataclass
class ApiVersionsV0:
    correlation_id: int
    error_code: int
    ranges: dict[int, tuple[int, int]]
    trailing: bytes


def parse_api_versions_v0(resp: bytes) -> ApiVersionsV0:
    """Parse a response (header v0 + body v0). ``trailing`` holds bytes after the v0 body."""
    corr, err, n = struct.unpack_from(">ihi", resp, 0)
    pos = 10
    ranges = {}
    for _ in range(max(n, 0)):
        key, lo, hi = struct.unpack_from(">hhh", resp, pos)
        ranges[key] = (lo, hi)
        pos += 6
    return ApiVersionsV0(corr, err, ranges, resp[pos:])


def api_versions(sock: socket.socket, correlation_id: int = 7) -> dict[int, tuple[int, int]]:
    sock.sendall(request(API_API_VERSIONS, 0, b"", correlation_id))
    parsed = parse_api_versions_v0(recv_frame(sock))
    assert parsed.correlation_id == correlation_id
    assert parsed.error_code == ERR_NONE, parsed
    return parsed.ranges


def pick_version(ranges: dict[int, tuple[int, int]], api_key: int, lo: int, hi: int) -> int:
    """Highest version in [lo, hi] the broker supports."""
    assert api_key in ranges, f"broker does not advertise api key {api_key}: {ranges}"
    b_lo, b_hi = ranges[api_key]
    v = min(hi, b_hi)
    assert v >= max(lo, b_lo), f"no common version for api {api_key}: broker {b_lo}..{b_hi}, ours {lo}..{hi}"
    return v


# --------------------------------------------------------------------------- record batches


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_delta: int = 0


def encode_record(offset_delta: int, rec: Record) -> bytes:
    body = bytearray()
    body += b"\x00"  # attributes
    body += varint(rec.timestamp_delta)
    body += varint(offset_delta)
    for b in (rec.key, rec.value):
        if b is None:
            body += varint(-1)
        else:
            body += varint(len(b)) + b
    body += varint(len(rec.headers))
    for hk, hv in rec.headers:
        kb = hk.encode()
        body += varint(len(kb)) + kb
        if hv is None:
            body += varint(-1)
        else:
            body += varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def record_batch(
    records: list[Record],
    base_timestamp: int,
    base_offset: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    partition_leader_epoch: int = -1,
) -> bytes:
    """A magic-2 batch with a correct CRC-32C (Castagnoli over attributes..end)."""
    recs = b"".join(encode_record(i, r) for i, r in enumerate(records))
    max_ts = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            len(records) - 1,
            base_timestamp,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
        + recs
    )
    crc = crc32c.crc32c(after_crc)
    # batchLength counts everything after the batchLength field itself.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, batch_length, partition_leader_epoch, 2, crc) + after_crc


CRC_POS = 17  # baseOffset(8) + batchLength(4) + partitionLeaderEpoch(4) + magic(1)


def corrupt_crc(batch: bytes) -> bytes:
    """Same batch, CRC field flipped (the records are untouched)."""
    b = bytearray(batch)
    b[CRC_POS] ^= 0xFF
    return bytes(b)


def corrupt_payload(batch: bytes) -> bytes:
    """Same CRC, one payload byte flipped near the end (so the CRC no longer matches)."""
    b = bytearray(batch)
    b[-2] ^= 0x5A
    return bytes(b)


@dataclass
class ParsedBatch:
    base_offset: int
    partition_leader_epoch: int
    magic: int
    crc: int
    crc_ok: bool
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]
    """(offset, timestamp, key, value, headers) — only decoded for uncompressed batches."""
    raw: bytes
    """The batch's bytes exactly as fetched."""

    def as_sent_by_client(self) -> bytes:
        """The batch as its producer sent it: base offset 0, partition leader epoch -1 (the CRC
        does not cover those two fields, so it stays valid)."""
        b = bytearray(self.raw)
        b[0:8] = struct.pack(">q", 0)
        b[12:16] = struct.pack(">i", -1)
        return bytes(b)


def parse_batches(data: bytes) -> list[ParsedBatch]:
    """Parse consecutive v2 batches; a trailing partial batch (fetch max bytes) is ignored."""
    out = []
    pos = 0
    mv = memoryview(data)
    while pos + 61 <= len(data):
        base_offset, batch_length, ple, magic = struct.unpack_from(">qiib", data, pos)
        end = pos + 12 + batch_length
        if end > len(data):
            break
        assert magic == 2, f"magic {magic} at byte {pos}"
        (crc,) = struct.unpack_from(">I", data, pos + 17)
        crc_ok = crc32c.crc32c(mv[pos + 21 : end]) == crc
        (attrs, lod, base_ts, max_ts, pid, pepoch, bseq, count) = struct.unpack_from(">hiqqqhii", data, pos + 21)
        records = []
        if attrs & 0x07 == 0:
            rpos = pos + 61
            for _ in range(count):
                length, rpos = read_varint(data, rpos)
                rend = rpos + length
                rpos += 1  # attributes
                ts_delta, rpos = read_varint(data, rpos)
                off_delta, rpos = read_varint(data, rpos)
                kl, rpos = read_varint(data, rpos)
                key = None if kl < 0 else bytes(data[rpos : rpos + kl])
                rpos += max(kl, 0)
                vl, rpos = read_varint(data, rpos)
                value = None if vl < 0 else bytes(data[rpos : rpos + vl])
                rpos += max(vl, 0)
                nh, rpos = read_varint(data, rpos)
                headers = []
                for _h in range(nh):
                    hkl, rpos = read_varint(data, rpos)
                    hk = bytes(data[rpos : rpos + hkl]).decode()
                    rpos += hkl
                    hvl, rpos = read_varint(data, rpos)
                    hv = None if hvl < 0 else bytes(data[rpos : rpos + hvl])
                    rpos += max(hvl, 0)
                    headers.append((hk, hv))
                assert rpos == rend, "record length mismatch"
                records.append((base_offset + off_delta, base_ts + ts_delta, key, value, headers))
        out.append(
            ParsedBatch(
                base_offset,
                ple,
                magic,
                crc,
                crc_ok,
                attrs,
                lod,
                base_ts,
                max_ts,
                pid,
                pepoch,
                bseq,
                records,
                bytes(data[pos:end]),
            )
        )
        pos = end
    return out


# --------------------------------------------------------------------------- Produce


def produce_body(
    version: int, topic: str, partition: int, records: bytes, acks: int = -1, timeout_ms: int = 30000
) -> bytes:
    assert 3 <= version <= 12, version
    if version <= 8:
        return (
            string(None)
            + struct.pack(">hi", acks, timeout_ms)
            + struct.pack(">i", 1)
            + string(topic)
            + struct.pack(">i", 1)
            + struct.pack(">i", partition)
            + nbytes(records)
        )
    return (
        compact_string(None)
        + struct.pack(">hi", acks, timeout_ms)
        + uvarint(2)
        + compact_string(topic)
        + uvarint(2)
        + struct.pack(">i", partition)
        + compact_bytes(records)
        + EMPTY_TAGS
        + EMPTY_TAGS
        + EMPTY_TAGS
    )


def produce_request(
    version: int, topic: str, partition: int, records: bytes, correlation_id: int, acks: int = -1
) -> bytes:
    return request(
        API_PRODUCE,
        version,
        produce_body(version, topic, partition, records, acks),
        correlation_id,
        flexible=version >= 9,
    )


@dataclass
class ProducePartitionResult:
    correlation_id: int
    topic: str
    partition: int
    error_code: int
    base_offset: int


def parse_produce_response(version: int, resp: bytes) -> ProducePartitionResult:
    """First topic / first partition of a Produce response."""
    (corr,) = struct.unpack_from(">i", resp, 0)
    pos = 4
    if version >= 9:
        ntags, pos = read_uvarint(resp, pos)
        assert ntags == 0, "unexpected tagged fields in response header"
        ntopics, pos = read_uvarint(resp, pos)
        assert ntopics - 1 >= 1, "no topics in produce response"
        slen, pos = read_uvarint(resp, pos)
        topic = resp[pos : pos + slen - 1].decode()
        pos += slen - 1
        nparts, pos = read_uvarint(resp, pos)
        assert nparts - 1 >= 1, "no partitions in produce response"
    else:
        (ntopics,) = struct.unpack_from(">i", resp, pos)
        assert ntopics >= 1, "no topics in produce response"
        (slen,) = struct.unpack_from(">h", resp, pos + 4)
        topic = resp[pos + 6 : pos + 6 + slen].decode()
        pos += 6 + slen
        (nparts,) = struct.unpack_from(">i", resp, pos)
        assert nparts >= 1, "no partitions in produce response"
        pos += 4
    part, err, base = struct.unpack_from(">ihq", resp, pos)
    return ProducePartitionResult(corr, topic, part, err, base)


# --------------------------------------------------------------------------- Fetch


def fetch_request(
    version: int,
    topic: str,
    partition: int,
    offset: int,
    correlation_id: int,
    max_bytes: int = 8 << 20,
    max_wait_ms: int = 200,
    isolation_level: int = 0,
) -> bytes:
    assert 4 <= version <= 11, version
    body = struct.pack(">iiii", -1, max_wait_ms, 1, max_bytes) + struct.pack(">b", isolation_level)
    if version >= 7:
        body += struct.pack(">ii", 0, -1)  # session_id, session_epoch (-1: full fetch, no session)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", 1) + struct.pack(">i", partition)
    if version >= 9:
        body += struct.pack(">i", -1)  # current_leader_epoch
    body += struct.pack(">q", offset)
    if version >= 5:
        body += struct.pack(">q", -1)  # log_start_offset (followers only)
    body += struct.pack(">i", max_bytes)
    if version >= 7:
        body += struct.pack(">i", 0)  # forgotten_topics_data
    if version >= 11:
        body += string("")  # rack_id
    return request(API_FETCH, version, body, correlation_id)


@dataclass
class FetchPartition:
    error_code: int
    high_watermark: int
    records: bytes


def parse_fetch_response(version: int, resp: bytes) -> FetchPartition:
    pos = 4  # correlation id
    pos += 4  # throttle_time_ms (v1+)
    if version >= 7:
        (top_err,) = struct.unpack_from(">h", resp, pos)
        assert top_err == 0, f"fetch top-level error {top_err}"
        pos += 2 + 4  # error_code, session_id
    (ntopics,) = struct.unpack_from(">i", resp, pos)
    assert ntopics == 1, ntopics
    (slen,) = struct.unpack_from(">h", resp, pos + 4)
    pos += 6 + slen
    (nparts,) = struct.unpack_from(">i", resp, pos)
    assert nparts == 1, nparts
    pos += 4
    _part, err, hw, _lso = struct.unpack_from(">ihqq", resp, pos)
    pos += 22
    if version >= 5:
        pos += 8  # log_start_offset
    (naborted,) = struct.unpack_from(">i", resp, pos)
    pos += 4 + 16 * max(naborted, 0)
    if version >= 11:
        pos += 4  # preferred_read_replica
    (rlen,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    records = b"" if rlen < 0 else resp[pos : pos + rlen]
    return FetchPartition(err, hw, records)


def fetch_all_batches(bootstrap: str, topic: str, partition: int, timeout: float = 120.0) -> list[ParsedBatch]:
    """Every batch of a partition from offset 0 to the high watermark, via raw Fetch requests."""
    deadline = time.monotonic() + timeout
    with connect(bootstrap) as sock:
        version = pick_version(api_versions(sock), API_FETCH, 4, 11)
        batches: list[ParsedBatch] = []
        offset = 0
        corr = 100
        while True:
            assert time.monotonic() < deadline, f"raw fetch of {topic}/{partition} did not finish in {timeout}s"
            corr += 1
            sock.sendall(fetch_request(version, topic, partition, offset, corr))
            part = parse_fetch_response(version, recv_frame(sock))
            assert part.error_code == 0, f"fetch {topic}/{partition}@{offset}: error {part.error_code}"
            for b in parse_batches(part.records):
                if b.base_offset + b.last_offset_delta < offset:
                    continue
                batches.append(b)
                offset = b.base_offset + b.last_offset_delta + 1
            if offset >= part.high_watermark:
                return batches
