"""Tiered-storage replay benchmark, part 1: segment reads against the object store's own GET bandwidth.

Starts a moto S3 server (a real HTTP endpoint on 127.0.0.1), writes ``--total-mib`` of record batches as
segment objects of ``--segment-mib`` each (SegmentWriter, create-only PUTs), then measures in the same run,
over the same objects:

1. raw obstore GET bandwidth: each whole object fetched with ``obstore.get_async`` on a plain S3Store,
   one after the other (one stream, as one consumer of one partition); and with 2 objects in flight;
   and the reader's own access pattern without the reader: the index tail, then ``--max-get-mib`` ranged
   GETs, ``--read-ahead`` at once;
2. SegmentReader replay: PartitionSegments from offset 0 to the end with ``--fetch-kib`` per read (as a
   consumer's max.partition.fetch.bytes), through a fresh BlockCache of ``--block-kib`` blocks, ranged GETs
   growing to ``--max-get-mib`` and ``--read-ahead`` such GETs ahead; the "consumer" hashes every batch it
   gets (xxh64), and the hash must equal the hash of what was written (byte-exact check).

Rounds alternate the order of (1) and (2). MB = 10^6 bytes. The end-to-end replay through a broker with a
confluent-kafka consumer is bench/replay.py.

    .venv/bin/python bench/replay_segments.py                         # 2 GiB, the figures in docs/benchmarks.md
    .venv/bin/python bench/replay_segments.py --total-mib 256 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

import obstore
import xxhash
from obstore.store import LocalStore, S3Store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, table  # noqa: E402

from metadata.models import SegmentRecord  # noqa: E402
from storage.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore  # noqa: E402
from storage.segment.cache import BlockCache  # noqa: E402
from storage.segment.catalog import PartitionSegments  # noqa: E402
from storage.segment.format import SegmentFooter, SegmentWriter, object_key  # noqa: E402
from tests.moto_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer  # noqa: E402
from tests.segment_data import make_batch  # noqa: E402

MiB = 1024 * 1024
MB = 1e6
BUCKET = "tidelog-bench"
PREFIX = "replay"


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def templates(batch_bytes: int, record_bytes: int, count: int = 8) -> list[bytes]:
    """A few distinct batches of about ``batch_bytes`` (base offset patched per use; the CRC skips it)."""
    rng = random.Random(1)
    records = max(1, batch_bytes // (record_bytes + 8))
    return [make_batch(0, records, 1_700_000_000_000 + i * records, record_bytes, rng=rng) for i in range(count)]


async def write_segments(
    store: ObjectStore, total: int, segment_bytes: int, batches: list[bytes]
) -> tuple[list[SegmentRecord], int, float]:
    """Upload segments holding ``total`` bytes of batches; returns records, xxh64 of the data, upload MB/s."""
    records: list[SegmentRecord] = []
    digest = xxhash.xxh64()
    offset = written = 0
    ledger = 1
    uploaded = 0
    upload_s = 0.0
    span = struct.unpack_from(">i", batches[0], 23)[0] + 1
    while written < total:
        writer = SegmentWriter(offset, ledger, size_hint=segment_bytes + len(batches[0]))
        base = offset
        while writer.data_length < segment_bytes and written < total:
            batch = bytearray(batches[(offset // span) % len(batches)])
            struct.pack_into(">q", batch, 0, offset)
            writer.append_batches(batch)
            digest.update(batch)
            offset += span
            written += len(batch)
        obj = writer.finish()
        footer = SegmentFooter.parse(obj, len(obj))
        key = object_key("bench", "topic", 0, base, ledger)
        started = time.perf_counter()
        await store.put(key, memoryview(obj))
        upload_s += time.perf_counter() - started
        uploaded += len(obj)
        records.append(SegmentRecord(base, footer.last_offset, ledger, key, len(obj), footer.data_length,
                                     footer.max_timestamp, footer.checksum))  # fmt: skip
        ledger += 1
    return records, digest.intdigest(), uploaded / MB / upload_s


async def raw_get(s3: S3Store | LocalStore, records: list[SegmentRecord], in_flight: int) -> tuple[float, float]:
    """Whole-object GETs through obstore (``in_flight`` at once, in key order): MB/s and client CPU s."""
    cpu0, t0 = _self_cpu(), time.perf_counter()
    total = 0
    queue = list(records)

    async def worker() -> int:
        got = 0
        while queue:
            record = queue.pop(0)
            result = await obstore.get_async(s3, record.object_key)
            buf = await result.bytes_async()
            got += len(memoryview(buf))
        return got

    for n in await asyncio.gather(*(worker() for _ in range(in_flight))):
        total += n
    return total / MB / (time.perf_counter() - t0), _self_cpu() - cpu0


async def raw_ranged(s3: S3Store | LocalStore, records: list[SegmentRecord], chunk: int, in_flight: int) -> float:
    """The reader's access pattern without the reader: per object one GET of the index tail, then ranged GETs
    of ``chunk`` bytes, ``in_flight`` at once, in order. MB/s of data bytes."""
    jobs: list[tuple[str, int, int]] = []
    for r in records:
        jobs.append((r.object_key, r.data_length, r.size - r.data_length))
        jobs += [(r.object_key, a, min(chunk, r.data_length - a)) for a in range(0, r.data_length, chunk)]
    total = sum(r.data_length for r in records)
    t0 = time.perf_counter()

    async def worker() -> None:
        while jobs:
            key, start, length = jobs.pop(0)
            buf = await obstore.get_range_async(s3, key, start=start, length=length)
            assert len(memoryview(buf)) == length

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / MB / (time.perf_counter() - t0)


async def replay(
    store: ObjectStore, records: list[SegmentRecord], expected: int, args: argparse.Namespace
) -> dict[str, float]:
    cache = BlockCache(args.cache_mib * MiB)
    segments = PartitionSegments(store, cache, records, block_size=args.block_kib * 1024, read_ahead=args.read_ahead,
                                 max_get_blocks=max(1, args.max_get_mib * 1024 // args.block_kib),
                                 ahead_bytes=args.ahead_mib * MiB)  # fmt: skip
    digest = xxhash.xxh64()
    offset, end = 0, records[-1].last_offset + 1
    total = reads = 0
    cpu0, t0 = _self_cpu(), time.perf_counter()
    while offset < end:
        got = await segments.read(offset, args.fetch_kib * 1024)
        reads += 1
        for view in got:
            digest.update(view)
            total += len(view)
        last = got[-1]
        offset = struct.unpack_from(">q", last, 0)[0] + struct.unpack_from(">i", last, 23)[0] + 1
    elapsed = time.perf_counter() - t0
    cpu = _self_cpu() - cpu0
    await segments.settle()
    await segments.close()
    if digest.intdigest() != expected:
        raise SystemExit("replay returned different bytes than were written")
    stats = cache.stats()
    return {"mb_s": total / MB / elapsed, "seconds": elapsed, "client_cpu_s": cpu, "reads": reads,
            "block_gets": stats.misses, "coalesced": stats.coalesced, "cache_hits": stats.hits}  # fmt: skip


class CountingS3(S3ObjectStore):
    """S3ObjectStore counting ranged GETs (the figure the block size and read-ahead window drive)."""

    gets = 0

    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        self.gets += 1
        return await super().get_range(key, start, length)


class CountingLocal(LocalObjectStore):
    gets = 0

    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        self.gets += 1
        return await super().get_range(key, start, length)


async def run(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"machine": machine(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        store: CountingS3 | CountingLocal
        if args.store == "moto":
            moto = stack.enter_context(MotoServer())
            moto.create_bucket(BUCKET)
            server_pid = moto._proc.pid if moto._proc is not None else 0  # for its CPU figures
            store = CountingS3(BUCKET, prefix=PREFIX, endpoint=moto.endpoint, region=REGION,
                               access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)  # fmt: skip
            raw: S3Store | LocalStore = S3Store(BUCKET, prefix=PREFIX, config={"endpoint": moto.endpoint,
                "region": REGION, "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY},
                client_options={"allow_http": True})  # fmt: skip
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tidelog-replay-")))
            server_pid = 0
            store = CountingLocal(root, fsync=False)
            raw = LocalStore(root)
        s3 = raw
        batches = templates(args.batch_kib * 1024, args.record_bytes)
        print(f"writing {args.total_mib} MiB as {args.segment_mib} MiB segments of {len(batches[0])} B batches...")
        records, expected, upload = await write_segments(store, args.total_mib * MiB, args.segment_mib * MiB, batches)
        out["upload_mb_s"] = upload
        rounds: list[dict[str, object]] = []
        for n in range(args.rounds):
            row: dict[str, object] = {}
            for phase in (("raw", "replay") if n % 2 == 0 else ("replay", "raw")):
                m0 = _cpu(server_pid)
                if phase == "raw":
                    mb_s, cpu = await raw_get(s3, records, 1)
                    row["raw_mb_s"], row["raw_client_cpu_s"] = mb_s, cpu
                    row["raw_moto_cpu_s"] = _cpu(server_pid) - m0
                    mb_s2, _ = await raw_get(s3, records, 2)
                    row["raw2_mb_s"] = mb_s2
                    row["raw_ranged_mb_s"] = await raw_ranged(s3, records, args.max_get_mib * MiB, args.read_ahead)
                else:
                    gets0 = store.gets
                    row.update(await replay(store, records, expected, args))
                    row["replay_moto_cpu_s"] = _cpu(server_pid) - m0
                    row["ranged_gets"] = store.gets - gets0
            rounds.append(row)
            print(f"round {n + 1}: raw {row['raw_mb_s']:.0f} MB/s (2 in flight {row['raw2_mb_s']:.0f}), "
                  f"replay {row['mb_s']:.0f} MB/s ({float(row['mb_s']) / float(row['raw_mb_s']):.2f}x)")  # fmt: skip
        out["rounds"] = rounds
        out["segments"] = len(records)
        out["bytes"] = sum(r.data_length for r in records)
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-mib", type=int, default=2048)
    parser.add_argument("--segment-mib", type=int, default=64, help="segment size (ledger.rollover.bytes)")
    parser.add_argument("--batch-kib", type=int, default=64, help="record batch size")
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--fetch-kib", type=int, default=1024, help="bytes per read, as max.partition.fetch.bytes")
    parser.add_argument("--block-kib", type=int, default=1024)
    parser.add_argument("--read-ahead", type=int, default=2, help="GET windows fetched ahead")
    parser.add_argument("--max-get-mib", type=int, default=16, help="largest ranged GET (the window's cap)")
    parser.add_argument("--cache-mib", type=int, default=256)
    parser.add_argument("--ahead-mib", type=int, default=48,
                        help="small segments fetched ahead, MiB (capped at a quarter of the cache; 0: read-ahead only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", choices=["moto", "local"], default="moto",
                        help="moto S3 server (default) or a local directory (ranged reads cost their length)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    runner_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            runner_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        result = runner.run(run(args))
    rounds = result["rounds"]
    assert isinstance(rounds, list)
    best = max(rounds, key=lambda r: r["mb_s"])
    ratios = [float(r["mb_s"]) / float(r["raw_mb_s"]) for r in rounds]
    median = sorted(ratios)[len(ratios) // 2]
    result["ratio_median"] = median
    gb = int(result["bytes"]) / 1e9  # type: ignore[call-overload]

    def per_gb(seconds: object) -> str:
        return f"{float(seconds) / gb:.2f} s"  # type: ignore[arg-type]

    rows = [
        ("machine", str(result["machine"])),
        ("data", f"{int(result['bytes']) / MiB:.0f} MiB in {result['segments']} segments"),  # type: ignore[call-overload]
        ("upload (create-only PUT)", f"{result['upload_mb_s']:.0f} MB/s"),
        ("raw obstore GET, 1 object at a time", " / ".join(f"{r['raw_mb_s']:.0f}" for r in rounds) + " MB/s"),
        ("raw obstore GET, 2 objects at a time", " / ".join(f"{r['raw2_mb_s']:.0f}" for r in rounds) + " MB/s"),
        (f"raw ranged GETs as the reader's ({args.max_get_mib} MiB, {args.read_ahead} at once)",
         " / ".join(f"{r['raw_ranged_mb_s']:.0f}" for r in rounds) + " MB/s"),
        ("SegmentReader replay", " / ".join(f"{r['mb_s']:.0f}" for r in rounds) + " MB/s"),
        ("replay / raw, per round (median)", " / ".join(f"{x:.2f}" for x in ratios) + f"x ({median:.2f}x)"),
        ("replay CPU (client, server) /GB", f"{per_gb(best['client_cpu_s'])}, {per_gb(best['replay_moto_cpu_s'])}"),
        ("raw GET CPU (client, server) /GB", f"{per_gb(best['raw_client_cpu_s'])}, {per_gb(best['raw_moto_cpu_s'])}"),
        ("ranged GETs / blocks / reads (best)", f"{best['ranged_gets']} / {best['block_gets']} / {best['reads']}"),
    ]  # fmt: skip
    where = "moto S3 over HTTP on 127.0.0.1" if args.store == "moto" else "local directory"
    print(table(rows, f"Tiered storage replay ({where})"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
