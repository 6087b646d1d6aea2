"""CPU of each step a produced byte takes through the broker's produce path, in process (no client, no sockets).

A full-load Produce v9 request as librdkafka sends it (3 partitions, one ~330 KB batch of 1 KiB records each,
~1 MB in all) goes through the steps the broker runs on it, each timed alone (process time, best of --repeat
rounds, the steps taking turns so a burst of load from elsewhere hits them alike):

- frame: ``FrameDecoder.feed`` in 256 KiB reads (the server's read size), joining the frame;
- decode: ``check_request`` then kio's header and body readers (kio copies the records field);
- crc: ``batch.validate`` (framing and CRC-32C of every batch);
- walk: ``validate_batch`` (every record's length, offset delta and timestamp);
- entry: ``log_entry.allocate`` + ``assign_offsets`` + ``log_entry.seal`` (the copy into the ledger entry and
  its CRC-32C);
- journal: ``os.pwritev`` + ``os.fdatasync`` of the entries to a file in --dir (what the bookie journal's
  writer thread does; kernel time, for scale).

Figures are ms of CPU per MB (10^6 bytes of records), comparable to the "ms CPU per MB" that
bench/produce_consume.py prints for the whole broker process.

    .venv/bin/python bench/produce_path.py [--repeat 7] [--rounds 40]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kio.index import load_request_schema
from kio.schema.produce.v9 import request as produce9
from kio.serial import entity_reader

from brokers.codec.batch import assign_offsets, validate
from brokers.codec.frame import FrameDecoder
from brokers.codec.request_check import check_request
from brokers.codec.validate import TopicRules, validate_batch
from storage import log_entry
from tests.request_samples import encode_request
from tests.segment_data import make_batch

MB = 1_000_000
READ = 1 << 18
RULES = TopicRules(log_append_time=False, before_max_ms=2**63 - 1, after_max_ms=2**63 - 1, compacted=False)


def request(partitions: int, records: int, value_size: int) -> tuple[bytes, list[bytes]]:
    now = int(time.time() * 1000)
    batches = [make_batch(0, records, now, value_size=value_size) for _ in range(partitions)]
    body = produce9.ProduceRequest(
        transactional_id=None,
        acks=-1,  # type: ignore[arg-type]
        timeout=datetime.timedelta(seconds=30),  # type: ignore[arg-type]
        topic_data=(
            produce9.TopicProduceData(
                name="bench-topic",  # type: ignore[arg-type]
                partition_data=tuple(
                    produce9.PartitionProduceData(index=i, records=b)  # type: ignore[arg-type]
                    for i, b in enumerate(batches)
                ),
            ),
        ),
    )
    frame = encode_request(0, 9, body, client_id="rdkafka")
    return frame, batches


def best_cpu(fns: list[Callable[[], object]], rounds: int, repeat: int) -> list[float]:
    """Best process time of ``rounds`` calls of each function, over ``repeat`` turns."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.process_time()
            for _ in range(rounds):
                fn()
            best[k] = min(best[k], (time.process_time() - t0) / rounds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--records", type=int, default=320, help="records per partition batch")
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dir", type=Path, default=None, help="where the journal step writes (default: a temp dir)")
    args = ap.parse_args()
    load0 = os.getloadavg()

    frame, batches = request(args.partitions, args.records, args.value_size)
    payload = sum(len(b) for b in batches)
    wire = len(frame).to_bytes(4, "big") + frame
    reads = [wire[i : i + READ] for i in range(0, len(wire), READ)]
    cls: Any = load_request_schema(0, 9)
    read_header, read_body = entity_reader(cls.__header_schema__), entity_reader(cls)
    check_request(frame, 0, 9)
    now = int(time.time() * 1000)
    headers = [validate(b) for b in batches]
    entries: list[bytearray] = []

    def step_frame() -> object:
        decoder = FrameDecoder(100 * MB)
        out = []
        for chunk in reads:
            out += decoder.feed(chunk)
        assert len(out) == 1
        return out

    def step_decode() -> object:
        check_request(frame, 0, 9)
        _, used = read_header(frame, 0)
        return read_body(frame, used)

    def step_crc() -> object:
        return [validate(b) for b in batches]

    def step_walk() -> object:
        return [validate_batch(b, h[0], RULES, now, 9) for b, h in zip(batches, headers, strict=True)]

    def step_entry() -> object:
        entries.clear()
        for b, h in zip(batches, headers, strict=True):
            entry = log_entry.allocate(b)
            end = assign_offsets(entry, h, 1000, 1, log_entry.HEADER_SIZE)
            log_entry.seal(entry, log_entry.EntryHeader(1000, end - 1, now))
            entries.append(entry)
        return entries

    step_entry()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="produce-path-") as tmp:
        fd = os.open(Path(tmp) / "journal", os.O_WRONLY | os.O_CREAT, 0o600)
        pos = 0

        def step_journal() -> object:
            nonlocal pos
            pos += os.pwritev(fd, entries, pos)
            os.fdatasync(fd)
            if pos > 256 * MB:
                os.ftruncate(fd, 0)
                pos = 0
            return pos

        steps = [
            ("frame", step_frame),
            ("decode", step_decode),
            ("crc", step_crc),
            ("walk", step_walk),
            ("entry", step_entry),
            ("journal (kernel)", step_journal),
        ]
        try:
            cpu = best_cpu([fn for _n, fn in steps], args.rounds, args.repeat)
        finally:
            os.close(fd)
    load1 = os.getloadavg()
    print(
        f"Produce v9, {args.partitions} partitions x {args.records} records of {args.value_size} B "
        f"({payload:,} bytes of batches, frame {len(frame):,} B); process time, best of {args.repeat} x "
        f"{args.rounds} requests"
    )
    print("| step | ms CPU per request | ms CPU per MB |")
    print("|---|---|---|")
    for (name, _fn), t in zip(steps, cpu, strict=True):
        print(f"| {name} | {t * 1000:.3f} | {t * 1000 / (payload / MB):.3f} |")
    python = sum(cpu[:-1])
    print(f"| all but the journal | {python * 1000:.3f} | {python * 1000 / (payload / MB):.3f} |")
    print(f"load average {load0[0]:.2f} {load0[1]:.2f} before, {load1[0]:.2f} {load1[1]:.2f} after")


if __name__ == "__main__":
    main()
