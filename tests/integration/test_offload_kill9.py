"""kill -9 of a real offloader process at seeded random points (must-show 3 of issue 5).

Each round writes one or two new ledgers (real bookie journal, embedded metadata store on disk), starts
``python -m tests.integration.offload_env`` (offload of every pending ledger, sometimes a DeleteRecords-style
retention, then orphan GC, printing each step) and SIGKILLs it: half the rounds after a seeded random number
of steps plus 0-20 ms (anywhere in the work), the others exactly at a random step boundary (the worker holds
still there). After the rounds one clean run, then: nothing lost (every byte from the log start reads back
through segments), no ledger listed twice, segments contiguous, every offloaded ledger deleted from the
bookie, no intent left, and no object that no segment names (orphans, which some rounds make, collected).
The objects live in a moto S3 server over HTTP.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata.models import OffloadIntent
from storage.offload import STEPS
from storage.segment.catalog import list_segments
from storage.segment.format import partition_prefix
from tests.integration.offload_env import PARTITION, check_invariants, open_world, write_ledgers
from tests.moto_server import MotoServer
from tests.segment_data import Batch

BUCKET = "tidelog-kill9"
WAIT = 60.0  # hang guard only
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server.s3_url(BUCKET, f"k-{uuid.uuid4().hex[:8]}")


def _run_worker(args: list[str], kill_after: int | str | None, delay: float) -> tuple[bool, list[str]]:
    """Run the offloader child; SIGKILL it ``delay`` s after its ``kill_after``-th line, or after the line
    ``step {kill_after}`` (if it gets there). Returns whether it was killed and the lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.offload_env", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    killed = False
    deadline = time.monotonic() + WAIT
    buf = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode())
                due = len(lines) >= kill_after if isinstance(kill_after, int) else lines[-1] == f"step {kill_after}"
                if kill_after is not None and not killed and due:
                    time.sleep(delay)
                    proc.kill()
                    killed = True
            if killed:
                break
        proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if not killed:
        assert proc.returncode == 0 and lines[-1:] == ["done"], f"worker failed ({proc.returncode}):\n{stderr[-3000:]}"
    else:
        assert proc.returncode == -signal.SIGKILL
    return killed, lines


async def _kill9_rounds(tmp_path: Path, url: str, seed: int, kills: int) -> Counter[str]:
    """Rounds of: write 1-2 ledgers, start an offloader process, kill -9 it after a seeded random number of
    steps (plus 0-20 ms). Then one clean run, and every invariant is checked. Returns where kills landed."""
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    topic = f"kill9-{seed}"
    meta, bookie = tmp_path / "meta", tmp_path / "bookie"
    batches: list[Batch] = []
    orphans_seen: set[str] = set()
    done_kills = 0
    for round_no in range(kills * 3):
        if done_kills >= kills:
            break
        world = await open_world(meta, bookie, url)
        try:
            first = batches[-1].last_offset + 1 if batches else 0
            batches += await write_ledgers(world, topic, rng.randint(1, 2), seed=seed * 1000 + round_no * 10,
                                           first_offset=first, entries=rng.randint(10, 40))  # fmt: skip
            segs = await list_segments(world.store, world.keys, topic, PARTITION)
            intents = await world.store.list(world.keys.offload_intents_prefix(topic, PARTITION))
            listed = await world.objects.list(partition_prefix("tidelog", topic, PARTITION))
            named = {s.object_key for s in segs} | {OffloadIntent.decode(v.value).object_key for v in intents}
            orphans_seen |= {m.key for m in listed} - named
            state = await world.state(topic)
        finally:
            await world.close()
        args = ["--meta", str(meta), "--bookie", str(bookie), "--url", url, "--topic", topic]
        live = [s for s in segs if s.last_offset >= state.log_start_offset]
        # half the rounds: after a random number of steps plus 0-20 ms (anywhere); the others: exactly at a
        # random step boundary (the worker holds still there), retention's included when it runs
        kill_after: int | str = rng.randint(1, 14)
        exact = [*STEPS[:-1]]
        if len(live) >= 3 and rng.random() < 0.5:  # DeleteRecords into the second live segment
            args += ["--retain-below", str(rng.randint(live[1].base_offset, live[1].last_offset))]
            exact += ["retention_committed"] * 3
        if rng.random() < 0.5:
            kill_after = rng.choice(exact)
            args += ["--pause-after", kill_after]
        killed, lines = _run_worker(args, kill_after=kill_after, delay=rng.uniform(0, 0.02))
        if killed:
            done_kills += 1
            landed[lines[-1].removeprefix("step ")] += 1
    assert done_kills >= kills, f"only {done_kills} kills landed"
    killed, lines = _run_worker(
        ["--meta", str(meta), "--bookie", str(bookie), "--url", url, "--topic", topic], None, 0.0
    )
    world = await open_world(meta, bookie, url)
    try:
        await check_invariants(world, topic, batches)
        assert (await world.state(topic)).log_start_offset <= batches[-1].last_offset
    finally:
        await world.close()
    print(f"kill -9: {done_kills} kills after steps {dict(landed)}; {len(orphans_seen)} orphans seen, all collected")
    assert orphans_seen or "retention_committed" not in landed
    return landed


@pytest.mark.asyncio
async def test_kill9_during_offload_24_times(tmp_path: Path, url: str) -> None:
    landed = await _kill9_rounds(tmp_path, url, seed=2026, kills=24)
    assert {"intent", "built", "uploaded", "committed", "ledger_deleted", "retention_committed"} <= set(landed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 31, 4242])
@pytest.mark.asyncio
async def test_kill9_during_offload_many_seeds(tmp_path: Path, url: str, seed: int) -> None:
    await _kill9_rounds(tmp_path, url, seed=seed, kills=40)
