"""Issue 9, must-show 5: a broker whose data directory fills up, through a real ``tidelog run`` process.

The data directory is a 64 MiB tmpfs (mounted here; the test is skipped, saying why, where mounting is not
permitted). A topic ``filler`` is filled first, then raw Produce requests (acks=all, 200 KB records) go to
``main`` until the disk is full. Then:

* produce answers KAFKA_STORAGE_ERROR (56, retriable), never the NOT_ENOUGH_REPLICAS that never clears,
  and /metrics shows ``tidelog_storage_disk_full 1``;
* DeleteTopics of ``filler`` succeeds on the full disk (the reserve files let its deletes commit) and frees
  its space (its journal files, segment objects);
* produce to ``main`` resumes by itself, without a restart;
* every acknowledged record of ``main`` reads back byte-exact, before and after a restart;
* the broker log has no traceback, and says once that writes stopped and once that they resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from . import kafka_wire as kw
from .broker_process import BrokerProcess, free_port
from .helpers import create_topic

KAFKA_STORAGE_ERROR = 56
VALUE_BYTES = 200_000
MAX_PRODUCES = 600  # 120 MB offered to a 64 MiB disk: it fills well before (hang guard only)
RESUME_WAIT = 60.0  # hang guard only
CONFIGS = {
    "bookie.journal.roll.bytes": str(4 << 20),  # journal files small enough to be reclaimed one by one
    "ledger.rollover.bytes": str(2 << 20),
    "ledger.rollover.ms": "1000",
}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` for the duration; skips the test if mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small file system to fill")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); run as root to test disk full")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def metric(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


class RawProducer:
    """Produce v3..v9 requests of one 200 KB record each on one connection; remembers what was acked."""

    def __init__(self, bootstrap: str, acked: dict[int, str] | None = None) -> None:
        self.sock = kw.connect(bootstrap)
        self.version = kw.pick_version(kw.api_versions(self.sock), kw.API_PRODUCE, 3, 9)
        self.corr = 0
        self.acked: dict[int, str] = {} if acked is None else acked  # offset -> sha256 of the value

    def send(self, topic: str) -> int:
        """One record; returns the partition's error code."""
        self.corr += 1
        value = os.urandom(VALUE_BYTES)
        batch = kw.record_batch([kw.Record(key=str(self.corr).encode(), value=value)], int(time.time() * 1000))
        self.sock.sendall(kw.produce_request(self.version, topic, 0, batch, self.corr))
        result = kw.parse_produce_response(self.version, kw.recv_frame(self.sock))
        assert result.correlation_id == self.corr
        if result.error_code == 0 and topic == "main":
            self.acked[result.base_offset] = hashlib.sha256(value).hexdigest()
        return result.error_code

    def close(self) -> None:
        self.sock.close()


def check_acked(bootstrap: str, acked: dict[int, str], who: str) -> None:
    """Every acknowledged record of ``main`` is there, byte-exact (by offset)."""
    got: dict[int, str] = {}
    for batch in kw.fetch_all_batches(bootstrap, "main", 0):
        for offset, _ts, _key, value, _headers in batch.records:
            assert value is not None
            got[offset] = hashlib.sha256(value).hexdigest()
    lost = sorted(o for o, digest in acked.items() if got.get(o) != digest)
    assert not lost, f"{who}: {len(lost)} of {len(acked)} acknowledged records lost or changed, first {lost[:5]}"


def test_disk_full_journal_only(tmp_path: Path) -> None:
    """Offload off: everything is in the bookie journal, and only the delete can free space. The disk stays
    full for a few seconds first (produce refused every time, background work meets the full disk too), and
    the broker is restarted while it is full: it starts, and still answers KAFKA_STORAGE_ERROR."""
    run_disk_full(tmp_path, {**CONFIGS, "offload.enable": "false"}, hold_s=3.0, restart_while_full=True)


def test_disk_full_with_offload_to_the_same_disk(tmp_path: Path) -> None:
    """The default: closed ledgers are offloaded to the local object store on the same (full) disk."""
    run_disk_full(tmp_path, CONFIGS, hold_s=0.0)


def run_disk_full(
    tmp_path: Path, base_configs: dict[str, str], hold_s: float, restart_while_full: bool = False
) -> None:
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        admin_port = free_port()
        log_path = tmp_path / "broker.log"
        configs = {**base_configs, "admin.listen": f"127.0.0.1:{admin_port}"}
        broker = BrokerProcess(mnt / "data", configs=configs, log_path=log_path).start()
        producer: RawProducer | None = None
        try:
            create_topic(broker.bootstrap, "filler")
            create_topic(broker.bootstrap, "main")
            producer = RawProducer(broker.bootstrap)
            for _ in range(80):  # 16 MB
                assert producer.send("filler") == 0
            codes: list[int] = []
            for _ in range(MAX_PRODUCES):
                codes.append(producer.send("main"))
                if codes[-1] != 0:
                    break
            assert codes[-1] != 0, f"the disk never filled: {len(codes)} records taken, {free_bytes(mnt)} bytes free"
            full_after = len(codes)
            for _ in range(5):  # refused at once while the disk stays full
                codes.append(producer.send("main"))
            hold_end = time.monotonic() + hold_s
            while time.monotonic() < hold_end:
                codes.append(producer.send("main"))
                time.sleep(0.5)
            refused = [c for c in codes if c != 0]
            assert set(refused) == {KAFKA_STORAGE_ERROR}, f"produce on a full disk: codes {sorted(set(codes))}"
            assert metric(admin_port, "tidelog_storage_disk_full") == 1
            if restart_while_full:
                producer.close()
                broker.stop()
                broker.start()
                producer = RawProducer(broker.bootstrap, producer.acked)
                codes += [producer.send("main") for _ in range(3)]
                assert set(codes[-3:]) == {KAFKA_STORAGE_ERROR}, f"produce after a restart on a full disk: {codes[-3:]}"
            free_full = free_bytes(mnt)

            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.delete_topics(["filler"], operation_timeout=30)["filler"].result(60)  # raises on an error

            deadline = time.monotonic() + RESUME_WAIT
            tries = 0
            while True:  # produce resumes by itself: no restart
                tries += 1
                code = producer.send("main")
                if code == 0:
                    break
                assert code == KAFKA_STORAGE_ERROR, code
                assert time.monotonic() < deadline, f"produce did not resume within {RESUME_WAIT}s of the delete"
                time.sleep(0.5)
            free_after = free_bytes(mnt)
            # more than the reserves written back (4 MiB each) came free: the filler's 16 MB went
            assert free_after > free_full + 4_000_000, f"the delete freed too little: {free_full} -> {free_after}"
            for _ in range(5):
                assert producer.send("main") == 0
            assert metric(admin_port, "tidelog_storage_disk_full") == 0
            acked = producer.acked
            check_acked(broker.bootstrap, acked, "before restart")
            producer.close()
            producer = None
            broker.stop()
            broker.start()
            check_acked(broker.bootstrap, acked, "after restart")
        finally:
            if producer is not None:
                producer.close()
            broker.close()
        log = log_path.read_text(errors="replace")
        assert "Traceback" not in log, "a traceback in the broker log:\n" + log[-5000:]
        episodes = 2 if restart_while_full else 1  # the restarted broker says it again once
        assert log.count("refusing writes until the disk takes writes again") == episodes, log[-5000:]
        assert log.count("the disk takes writes again; taking writes") == 1, log[-5000:]
        print(  # figures for the report (pytest -s)
            f"\nfull after {full_after} records to main; free when full {free_full}, after the delete {free_after}; "
            f"produce resumed at try {tries}; {len(acked)} acked records read back; "
            f"log lines {len(log.splitlines())}"
        )
