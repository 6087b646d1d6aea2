"""CPU cost of producer batch validation (brokers/codec/validate.py) next to the CRC-32C check it follows.

For ~1 MB batches of 10 B, 100 B and 1 KiB records, uncompressed and with each codec: CPU time (process
time, best of --repeat) of ``batch.validate`` (framing + CRC-32C) and of ``validate_batch`` (decompress into
the bounded scratch buffer, walk every record). Values are pseudo-random, so compressed sizes are close to the
uncompressed ones; MB = 10^6 bytes of the batch as sent.

    .venv/bin/python bench/validate_batches.py
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cramjam
import crc32c

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from brokers.codec.batch import read_header, validate
from brokers.codec.validate import TopicRules, validate_batch
from tests.segment_data import make_batch

CODECS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "none": (0, lambda b: b),
    "gzip": (1, lambda b: bytes(cramjam.gzip.compress(b))),
    "snappy": (2, lambda b: bytes(cramjam.snappy.compress_raw(b))),
    "lz4": (3, lambda b: bytes(cramjam.lz4.compress(b))),
    "zstd": (4, lambda b: bytes(cramjam.zstd.compress(b))),
}


def compressed(batch: bytes, codec: int, compress: Callable[[bytes], bytes]) -> bytes:
    head = read_header(batch, 0)
    body = compress(batch[61:])
    after = (
        struct.pack(
            ">hiqqqhii",
            codec,
            head.last_offset_delta,
            head.base_timestamp,
            head.max_timestamp,
            -1,
            -1,
            -1,
            head.records_count,
        )
        + body
    )
    return struct.pack(">qiibI", 0, 9 + len(after), -1, 2, crc32c.crc32c(after)) + after


def best_of(repeat: int, loops: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(loops):
            fn()
        best = min(best, (time.process_time() - t) / loops)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rules = TopicRules()
    print(f"{'records':>16} {'codec':>6} {'MB':>5} {'crc ms':>7} {'walk ms':>8} {'ns/rec':>7} {'walk MB/s':>9}")
    for size, count in ((1024, 1000), (100, 10_000), (10, 50_000)):
        plain = make_batch(0, count, 1_700_000_000_000, value_size=size)
        for name, (codec, compress) in CODECS.items():
            batch = compressed(plain, codec, compress) if codec else plain
            head = validate(batch)[0]
            loops = max(1, 20_000 // count)
            crc = best_of(args.repeat, loops, lambda b=batch: validate(b))
            walk = best_of(args.repeat, loops, lambda b=batch, h=head: validate_batch(b, h, rules, 0, 12))
            print(
                f"{count:>7} x {size:>5} B {name:>6} {len(batch) / 1e6:>5.2f} {crc * 1e3:>7.3f} {walk * 1e3:>8.2f}"
                f" {walk / count * 1e9:>7.0f} {len(batch) / walk / 1e6:>9.0f}"
            )


if __name__ == "__main__":
    main()
