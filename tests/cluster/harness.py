"""Shared pieces of the tests that run a real cluster (brokers/devcluster.py): start one, read leaders and
their spread from Metadata, wait for convergence, and show the brokers' logs when a test fails.

Every wait here is a hang guard (seconds to converge normally), never a timing assertion.
"""

from __future__ import annotations

import collections
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from brokers.devcluster import DevCluster, tidelog_command

WAIT_S = 45.0
OFFSETS_TOPIC = "__consumer_offsets"


@contextmanager
def running_cluster(
    directory: Path,
    *,
    brokers: int = 3,
    bookies: int = 3,
    session_timeout_ms: int | None = None,
    configs: dict[str, str] | None = None,
) -> Iterator[DevCluster]:
    """A started DevCluster (every broker given ``configs``), stopped on exit; on an exception the tail of
    every broker's log is printed.

    After a clean exit the brokers' and bookies' logs must hold no Python traceback (an unexpected exception
    path), as tests/e2e/conftest.py asks of the single broker.
    """
    args = ["--config", f"broker.session.timeout.ms={session_timeout_ms}"] if session_timeout_ms else []
    args += [a for k, v in (configs or {}).items() for a in ("--config", f"{k}={v}")]
    dev = DevCluster(directory, brokers=brokers, bookies=bookies, broker_args=args)
    dev.start()
    try:
        yield dev
    except BaseException:
        print_logs(dev)
        dev.stop()
        raise
    dev.stop()
    assert_no_tracebacks(dev)


def assert_no_tracebacks(dev: DevCluster) -> None:
    for p in [*dev.brokers, *dev.bookies]:
        text = p.log_tail(10_000_000)
        if "Traceback" in text:
            i = text.index("Traceback")
            raise AssertionError(f"{p.name} logged a traceback ({p.log_path}):\n{text[max(0, i - 500) : i + 3000]}")


def print_logs(dev: DevCluster, chars: int = 3000) -> None:
    for b in dev.brokers:
        print(f"\n--- {b.name} ({b.log_path}) ---\n{b.log_tail(chars)}")


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> leader node id of ``topic`` as ``bootstrap`` answers Metadata (-1: none; {}: no topic)."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p: meta.leader for p, meta in t.partitions.items()}


def spread(owner: dict[int, int]) -> dict[int, int]:
    """Partitions per leader, sorted by node id."""
    return dict(sorted(collections.Counter(owner.values()).items()))


def wait_leaders(
    bootstrap: str, topic: str, partitions: int, allowed: set[int], timeout: float = WAIT_S
) -> dict[int, int]:
    """Until every partition of ``topic`` has a leader among ``allowed``, as ``bootstrap`` sees it."""
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        try:
            got = leaders(bootstrap, topic)
        except KafkaException:
            got = {}
        if len(got) == partitions and set(got.values()) <= allowed:
            return got
        time.sleep(0.2)
    raise AssertionError(f"leaders of {topic} via {bootstrap} never all in {allowed}: {got}")


def wait_balanced(
    bootstrap: str, topic: str, partitions: int, brokers: set[int], timeout: float = WAIT_S
) -> dict[int, int]:
    """Until ``topic``'s partitions are led by exactly ``brokers``, spread max - min <= 1 by count."""
    deadline = time.monotonic() + timeout
    counts: dict[int, int] = {}
    while time.monotonic() < deadline:
        owner = wait_leaders(bootstrap, topic, partitions, brokers, max(deadline - time.monotonic(), 1.0))
        counts = spread(owner)
        if set(counts) == brokers and max(counts.values()) - min(counts.values()) <= 1:
            return owner
        time.sleep(0.2)
    raise AssertionError(f"{topic} never balanced over {brokers}: {counts}")


def tidelog_json(*args: str, timeout: float = 120.0) -> Any:
    """Run a ``tidelog`` subcommand with --json; its parsed output (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [*tidelog_command(), *args, "--json"], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"tidelog {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def balanced(owner: dict[int, int], partitions: int, brokers: set[int]) -> bool:
    """Every partition led by one of exactly ``brokers``, each holding its share (max - min <= 1)."""
    counts = spread(owner)
    return len(owner) == partitions and set(counts) == brokers and max(counts.values()) - min(counts.values()) <= 1


def dead_processes(dev: DevCluster, chars: int = 2000) -> str:
    """Every broker, bookie and etcd of ``dev`` that has exited: its exit code and the tail of its log ("" if
    all run). A negative code is the signal that ended it (-9: SIGKILL, -11: SIGSEGV, -6: SIGABRT)."""
    parts = []
    for p in [*dev.brokers, *dev.bookies, *dev.etcds]:
        if p.popen is not None and not p.alive():
            parts.append(f"{p.name} exited with {p.popen.returncode} ({p.log_path}):\n{p.log_tail(chars)}")
    return "\n".join(parts)


def assert_all_alive(dev: DevCluster) -> None:
    """Fail at once, in one line first, if a process of a cluster that no test stops has exited."""
    dead = dead_processes(dev)
    if dead:
        first = dead.splitlines()[0]
        pytest.fail(f"cluster process died: {first}\n{dead}", pytrace=False)
