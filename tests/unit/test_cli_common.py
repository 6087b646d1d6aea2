"""The CLI's small parts without a broker: key placement (Kafka's murmur2), consume's --format, decoding a
Fetch answer cut off mid-batch, tables, the progress bar (only on a terminal), and the data-directory guard."""

from __future__ import annotations

import io
from pathlib import Path

from brokers.cli.common import Progress, table
from brokers.cli.consume import render
from brokers.cli.records import Record, decode_records, murmur2, partition_for
from brokers.cli.startup import DataDirGuard
from brokers.codec.batch import BatchHeader, assign_offsets, iter_headers
from brokers.codec.builder import build_batch


def test_murmur2_matches_kafka() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    cases = {
        b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {k: murmur2(k) for k in cases} == cases
    assert all(0 <= partition_for(k, 7) < 7 for k in cases)


def test_render_takes_kcat_tokens() -> None:
    r = Record("t", 2, 41, 1700000000000, b"k", "v\u00e9".encode())
    assert render("%t/%p@%o %k=%v", r) == "t/2@41 k=v\u00e9\n"
    assert render("%S %s %T%%\\t.\\n", r) == "1 3 1700000000000%\t.\n"  # ends with a newline: none added
    null = Record("t", 0, 0, 0, None, b"\xff")
    assert render("[%k][%v] %S", null) == "[][\\xff] -1\n"


def _batches(*groups: int) -> bytes:
    """Batches of ``groups[i]`` records each, with consecutive offsets from 10."""
    buf = bytearray()
    base = 10
    for n in groups:
        raw = bytearray(build_batch([(None, f"v{base + i}".encode()) for i in range(n)], 1000))
        heads: list[BatchHeader] = iter_headers(raw)
        assign_offsets(raw, heads, base, 0)
        buf += raw
        base += n
    return bytes(buf)


def test_decode_records_skips_before_the_offset_and_stops_at_a_cut_batch() -> None:
    data = _batches(3, 2, 4)
    records, nxt = decode_records("t", 0, data, 11)
    assert [r.offset for r in records] == [11, 12, 13, 14, 15, 16, 17, 18] and nxt == 19
    records, nxt = decode_records("t", 0, data[:-5], 10)  # the last batch cut off: left for the next fetch
    assert [r.value for r in records] == [b"v10", b"v11", b"v12", b"v13", b"v14"] and nxt == 15
    assert decode_records("t", 0, b"", 7) == ([], 7)


def test_table_aligns_columns() -> None:
    assert table(("A", "LONGER"), [("xyz", None), ("w", 12345678)]).splitlines() == [
        "A    LONGER", "xyz  -", "w    12345678"]


def test_progress_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    p = Progress("produce t", 10, stream=quiet)
    p.advance(10)
    p.done()
    assert quiet.getvalue() == "" and not p.enabled
    shown = io.StringIO()
    p = Progress("produce t", 4, stream=shown, force=True)
    for _ in range(4):
        p.advance()
    p.done()
    text = shown.getvalue()
    assert text.startswith("\rproduce t [") and "4/4 100%" in text and text.endswith("\n")


def test_data_dir_guard_undoes_only_what_start_up_made(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    guard = DataDirGuard.before_start(str(fresh))
    (fresh / "metadata").mkdir(parents=True)
    guard.undo()
    assert not fresh.exists()
    kept = tmp_path / "kept"
    (kept / "old").mkdir(parents=True)
    (kept / "old" / "x").write_text("x")
    guard = DataDirGuard.before_start(str(kept))
    (kept / "bookie").mkdir()
    (kept / "LOCK").write_text("")
    guard.undo()
    assert sorted(p.name for p in kept.iterdir()) == ["old"] and (kept / "old" / "x").exists()
