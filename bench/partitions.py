"""Metadata latency and restart time against the number of (idle) partitions.

For each partition count N: a fresh ``tidelog run`` (in-process bookie, local object store), topics of
``--per-topic`` partitions created by CreateTopics until N partitions exist (nothing produced), then:

* Metadata (all topics, v1 over a raw socket): the first answer after the topics were created (built and
  encoded), and the median of 5 more (the response cache);
* restart: SIGTERM, start again, seconds until the port accepts, then until the first all-topics Metadata
  is answered;
* then every partition used once (ListOffsets v1, latest, one request per topic): how long loading them all
  takes, and the broker's peak RSS after that.

    .venv/bin/python bench/partitions.py --counts 1000,10000
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import EmbeddedBroker, machine


def _frame(api_key: int, version: int, body: bytes, correlation_id: int) -> bytes:
    head = struct.pack(">hhih", api_key, version, correlation_id, 5) + b"bench"
    payload = head + body
    return struct.pack(">i", len(payload)) + payload


def _recv(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        out += chunk
    return bytes(out)


def _call(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    sock.sendall(_frame(api_key, version, body, 1))
    (size,) = struct.unpack(">i", _recv(sock, 4))
    return _recv(sock, size)


def metadata_all(port: int) -> float:
    """Seconds for one all-topics Metadata v1 round trip."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        start = time.perf_counter()
        _call(sock, 3, 1, struct.pack(">i", -1))
        return time.perf_counter() - start


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def create_topics(port: int, total: int, per_topic: int) -> None:
    """CreateTopics v2 until ``total`` partitions exist; raises when a topic is refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        made, i = 0, 0
        while made < total:
            n = min(per_topic, total - made)
            topic = _string(f"idle-{i}") + struct.pack(">ihii", n, 1, 0, 0)
            resp = _call(sock, 19, 2, struct.pack(">i", 1) + topic + struct.pack(">i?", 600_000, False))
            # response: corr(4) throttle(4) count(4) name(2+len) error(2)
            (name_len,) = struct.unpack_from(">h", resp, 12)
            (code,) = struct.unpack_from(">h", resp, 14 + name_len)
            if code != 0:
                raise SystemExit(f"CreateTopics idle-{i} ({n} partitions) failed with error {code}")
            made += n
            i += 1


def touch_all(port: int, total: int, per_topic: int) -> float:
    """Seconds to ListOffsets every partition once (each is loaded on this first use)."""
    with socket.create_connection(("127.0.0.1", port), timeout=900) as sock:
        start = time.perf_counter()
        made, i = 0, 0
        while made < total:
            n = min(per_topic, total - made)
            parts = b"".join(struct.pack(">iq", p, -1) for p in range(n))
            body = struct.pack(">ii", -1, 1) + _string(f"idle-{i}") + struct.pack(">i", n) + parts
            _call(sock, 2, 1, body)
            made += n
            i += 1
        return time.perf_counter() - start


def measure(count: int, per_topic: int, configs: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tidelog-partitions-") as tmp:
        data = Path(tmp) / "data"
        broker = EmbeddedBroker(data, configs=configs).start()
        try:
            create_topics(broker.port, count, per_topic)
            first = metadata_all(broker.port)
            cached = statistics.median(metadata_all(broker.port) for _ in range(5))
            broker.stop()
            start = time.perf_counter()
            broker.start(timeout=900)
            listening = time.perf_counter() - start
            metadata_all(broker.port)
            answered = time.perf_counter() - start
            rss = broker.peak_rss_mb()
            touched = touch_all(broker.port, count, per_topic)
            rss_all = broker.peak_rss_mb()
            after = statistics.median(metadata_all(broker.port) for _ in range(3))
        finally:
            broker.stop()
    return {"first": first, "cached": cached, "listening": listening, "answered": answered, "rss": rss,
            "touched": touched, "rss_all": rss_all, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000", help="comma-separated partition counts")
    parser.add_argument("--per-topic", type=int, default=1000, help="partitions per topic")
    parser.add_argument("--config", "-c", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    configs = dict(pair.split("=", 1) for pair in args.config)
    print(machine())
    print("| partitions | first Metadata (all topics) | cached Metadata | restart: listening | restart: first "
          "Metadata answered | peak RSS after restart | all partitions used once | peak RSS then | Metadata then |")
    print("|---|---|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        r = measure(count, args.per_topic, configs)
        print(f"| {count:,} | {r['first'] * 1000:.0f} ms | {r['cached'] * 1000:.1f} ms | {r['listening']:.2f} s "
              f"| {r['answered']:.2f} s | {r['rss']:.0f} MiB | {r['touched']:.1f} s | {r['rss_all']:.0f} MiB "
              f"| {r['after'] * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
