"""The nemesis: a seeded schedule of faults over a DevCluster while the verify workload runs (issue 11).

One fault at a time, each held for a seeded-random while and then undone, with a quiet gap between faults,
so each one's effect on availability can be read off the history:

* ``kill``: kill -9 of a broker (the leader of a random partition), restarted after the hold;
* ``pause``: SIGSTOP of a partition's leader for 2x the lease TTL (``broker.session.timeout.ms``), then SIGCONT;
* ``move``: AlterPartitionReassignments of a random partition to another broker (a planned move);
* ``partition``: the TCP proxy in front of a bookie (``DevCluster(proxied=True)``) stalls every connection
  (half of the time closing them too), or delays every chunk by 0.1-0.5 s;
* ``etcd``: kill -9 of an etcd member (the leader, in a 3-member cluster, half of the time), restarted after;
* ``bookie``: kill -9 of a bookie, restarted after the hold;
* ``store``: the object store is unreachable (the proxy in front of the S3 server stalls or resets every
  connection) for the hold: offloads wait and retry, reads of offloaded data fail retriably;
* ``disk``: a bookie's disk fills (a file takes all that is free of the small file system its data directory is
  on, ``NemesisRun.small_disks``) for the hold, then the file is deleted.

Each fault is recorded in the history as process ``nemesis-N``, f ``nemesis``: an invoke event when it begins
(``fault`` names it, ``node`` the broker, ``partitions`` the partitions it affects — none: all) and an ok event
when it is undone. ``heal()`` undoes everything at the end (resume, restart, heal the proxies) before the
workload's final read. ``summarize`` measures unavailability per fault: from a fault's start to the first
acknowledgement of a send invoked after it on an affected partition, and the longest time without any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.cli.client import ClientError, KafkaClient
from brokers.devcluster import DevCluster, DevClusterError
from brokers.verify.history import INVOKE, NEMESIS, OK, SEND, Event, HistoryWriter

log = logging.getLogger("tidelog.verify.nemesis")
FAULT_TYPES = ("kill", "pause", "move", "partition", "etcd", "bookie", "store", "disk")
HEAL = "heal"
SCHEDULE_ONLY = ("etcd-leader",)
"""Kinds a schedule may name besides FAULT_TYPES: ``etcd-leader`` always kills the etcd leader."""


@dataclass(frozen=True)
class NemesisConfig:
    """Which faults, how often, how long; every wait is bounded by these."""

    faults: tuple[str, ...] = FAULT_TYPES
    seed: int = 0
    gap: tuple[float, float] = (3.0, 6.0)
    """Quiet seconds between one fault's end and the next one's start (uniform in this range)."""
    hold: tuple[float, float] = (2.0, 6.0)
    """How long a kill, cut or etcd/bookie loss lasts before it is undone."""
    session_timeout_s: float = 3.0
    """The brokers' lease TTL (broker.session.timeout.ms); a pause lasts twice this."""
    ready_timeout: float = 60.0
    schedule: tuple[str, ...] = ()
    """Faults in this order, then stop; empty: seeded shuffles of ``faults``, one of each before any repeats."""
    disks: tuple[str, ...] = ()
    """Bookie i's data directory is ``disks[i-1]``, a small file system of its own that the disk fault fills."""


class Nemesis:
    """``run()`` injects faults until ``stop`` is set (call it in a thread); ``heal()`` undoes everything."""

    def __init__(self, cluster: DevCluster, config: NemesisConfig, writer: HistoryWriter, topic: str) -> None:
        unknown = (set(config.faults) | set(config.schedule)) - set(FAULT_TYPES) - set(SCHEDULE_ONLY)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)} (known: {', '.join(FAULT_TYPES)})")
        wanted = set(config.schedule or config.faults)
        if wanted & {"partition", "store"} and cluster.proxies is None:
            raise ValueError("the partition and store faults need DevCluster(proxied=True)")
        if "disk" in wanted and not config.disks:
            raise ValueError("the disk fault needs the bookies' data directories on small file systems (disks)")
        self.cluster = cluster
        self.config = config
        self.writer = writer
        self.topic = topic
        self.random = random.Random(config.seed)  # noqa: S311 - a reproducible schedule, not a secret
        self.stop = threading.Event()
        self.injected: dict[str, int] = {}
        self.errors: list[str] = []
        self._n = 0

    # --- the schedule ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.config
        kinds = iter(cfg.schedule) if cfg.schedule else self._shuffled()
        while not self.stop.wait(self.random.uniform(*cfg.gap)):
            kind = next(kinds, None)
            if kind is None:
                return
            try:
                getattr(self, "_" + kind.replace("-", "_"))()
            except (DevClusterError, ClientError, OSError, TimeoutError) as e:
                log.warning("nemesis %s: %s", kind, e)
                self.errors.append(f"{kind}: {e}")
                self.heal()

    def _shuffled(self) -> Iterator[str]:
        while True:
            round_ = list(self.config.faults)
            self.random.shuffle(round_)
            yield from round_

    def _hold(self) -> None:
        self.stop.wait(self.random.uniform(*self.config.hold))

    def _begin(self, fault: str, node: int | None = None, partitions: Sequence[int] = ()) -> str:
        process = f"nemesis-{self._n}"
        self._n += 1
        kind = fault.split()[0]
        self.injected[kind] = self.injected.get(kind, 0) + 1
        log.info("nemesis: %s", fault)
        self.writer.add(process, INVOKE, NEMESIS, fault=fault, node=node, partitions=tuple(partitions))
        return process

    def _end(self, process: str, fault: str) -> None:
        self.writer.add(process, OK, NEMESIS, fault=fault)

    def _leaders(self) -> dict[int, int]:
        """partition -> leader node id, asked of any running broker."""
        bootstrap = ",".join(b.address for b in self.cluster.brokers if b.alive())

        async def ask() -> dict[int, int]:
            async with KafkaClient(bootstrap, timeout=3.0) as client:
                return (await client.partitions([self.topic])).get(self.topic, {})

        return asyncio.run(ask())

    def _victim(self) -> tuple[int, list[int]]:
        """A partition's leader (seeded choice) and every partition it leads."""
        leaders = {p: n for p, n in self._leaders().items() if n >= 0}
        if not leaders:
            node = self.random.choice([b.node_id for b in self.cluster.brokers])
        else:
            node = leaders[self.random.choice(sorted(leaders))]
        return node, sorted(p for p, n in leaders.items() if n == node)

    # --- faults ---------------------------------------------------------------------------------
    def _kill(self) -> None:
        node, parts = self._victim()
        fault = f"kill broker {node}"
        process = self._begin(fault, node, parts)
        broker = self.cluster.broker(node)
        broker.kill9()
        self._hold()
        broker.start()
        self.cluster.wait_ready(self.config.ready_timeout)
        self._end(process, fault)

    def _pause(self) -> None:
        node, parts = self._victim()
        fault = f"pause broker {node}"
        process = self._begin(fault, node, parts)
        broker = self.cluster.broker(node)
        broker.pause()
        self.stop.wait(2 * self.config.session_timeout_s)
        broker.resume()
        self._end(process, fault)

    def _move(self) -> None:
        leaders = {p: n for p, n in self._leaders().items() if n >= 0}
        if not leaders:
            return
        partition = self.random.choice(sorted(leaders))
        targets = [b.node_id for b in self.cluster.brokers if b.alive() and b.node_id != leaders[partition]]
        if not targets:
            return
        target = self.random.choice(targets)
        fault = f"move {self.topic}:{partition} {leaders[partition]}->{target}"
        process = self._begin(fault, leaders[partition], [partition])
        bootstrap = ",".join(b.address for b in self.cluster.brokers if b.alive())

        async def move() -> str | None:
            async with KafkaClient(bootstrap, timeout=10.0) as client:
                return (await client.alter_partition_reassignments({(self.topic, partition): target})).get(
                    (self.topic, partition)
                )

        answer = asyncio.run(move())
        if answer is not None:
            log.info("nemesis: %s refused: %s", fault, answer)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not self.stop.is_set():
            with contextlib.suppress(ClientError, OSError, TimeoutError):
                if self._leaders().get(partition) == target:
                    break
            time.sleep(0.2)
        self._end(process, fault)

    def _partition(self) -> None:
        proxies = self.cluster.proxies
        if proxies is None:  # checked in __init__
            return
        i = self.random.randrange(len(self.cluster.bookie_proxies))
        proxy = self.cluster.bookie_proxies[i]
        mode = self.random.choice(("stall", "reset", "delay"))
        if mode == "delay":
            seconds = round(self.random.uniform(0.1, 0.5), 2)
            fault = f"partition bookie-{i + 1} delay {seconds}s"
            process = self._begin(fault)
            proxies.delay(proxy, seconds)
        else:
            fault = f"partition bookie-{i + 1} {mode}"
            process = self._begin(fault)
            proxies.cut(proxy, reset=mode == "reset")
        self._hold()
        proxies.heal(proxy)
        self._end(process, fault)

    def _etcd_leader(self) -> None:
        self._etcd(leader_only=True)

    def _etcd(self, leader_only: bool = False) -> None:
        members = self.cluster.etcds
        leader = self.cluster.etcd_leader() if len(members) > 1 else None
        take_leader = leader is not None and (leader_only or self.random.random() < 0.5)
        member = leader if take_leader and leader is not None else self.random.choice(members)
        role = " (leader)" if member is leader else ""
        fault = f"etcd kill {member.name}{role}"
        process = self._begin(fault)
        member.kill9()
        self._hold()
        member.start()
        self._end(process, fault)

    def _bookie(self) -> None:
        bookie = self.random.choice(self.cluster.bookies)
        fault = f"bookie kill {bookie.bookie_id}"
        process = self._begin(fault)
        bookie.kill9()
        self._hold()
        bookie.start()
        self._end(process, fault)

    def _store(self) -> None:
        proxies, proxy = self.cluster.proxies, self.cluster.store_proxy
        if proxies is None or proxy is None:  # checked in __init__
            return
        reset = self.random.random() < 0.5
        fault = f"store {'reset' if reset else 'stall'}"
        process = self._begin(fault)
        proxies.cut(proxy, reset=reset)
        self._hold()
        proxies.heal(proxy)
        self._end(process, fault)

    def _disk(self) -> None:
        i = self.random.randrange(len(self.config.disks))
        fault = f"disk full bookie-{i + 1}"
        filler = Path(self.config.disks[i]) / "nemesis-filler"
        process = self._begin(fault)
        try:
            fill(filler)
            self._hold()
        finally:
            filler.unlink(missing_ok=True)
        self._end(process, fault)

    # --- healing --------------------------------------------------------------------------------
    def heal(self) -> None:
        """Everything back: proxies healed, paused brokers resumed, dead members, bookies and brokers started."""
        c = self.cluster
        if c.proxies is not None:
            c.proxies.heal_all()
        for disk in self.config.disks:
            (Path(disk) / "nemesis-filler").unlink(missing_ok=True)
        for m in c.etcds:
            if not m.alive():
                m.start()
        for k in c.bookies:
            if not k.alive():
                k.start()
        for b in c.brokers:
            b.resume()
            if not b.alive():
                b.start()
        c.wait_ready(self.config.ready_timeout)


LEFT_FREE = 0
"""What the disk fault leaves of a file system: nothing, as on a disk that has filled up."""


def fill(path: Path) -> None:
    """Make ``path`` a file taking all but LEFT_FREE bytes of its file system (allocated, not sparse)."""
    st = os.statvfs(path.parent)
    size = max(st.f_bavail * st.f_frsize - LEFT_FREE, 0)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # a file system without fallocate: write it out
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):
            while size > 0:
                size -= os.write(fd, chunk[: min(size, len(chunk))])
    finally:
        os.close(fd)


# --- the summary ------------------------------------------------------------------------------------
def summarize(events: Iterable[Event]) -> dict[str, Any]:
    """Faults injected by type, and per type two measures of unavailability (p50/p99/max seconds):

    * ``first-ack``: from a fault's start to the first ack of a send invoked after it on a partition it
      affects (``no-ack-after`` counts faults after which none came before the load ended);
    * ``longest-gap``: the longest time without any ack on an affected partition, from the fault's start until
      the next fault starts (or the load ends) — this one also sees an outage that begins later, as when
      the brokers fence themselves a lease TTL after etcd went away.
    """
    evs = list(events)
    invoked: dict[int, float] = {}
    acks: list[tuple[float, float, int]] = []  # (invoke time, ack time, partition)
    faults: list[Event] = []
    for e in evs:
        if e.f == SEND and e.value is not None:
            if e.type == INVOKE:
                invoked[e.value] = e.time
            elif e.type == OK and e.partition is not None and e.value in invoked:
                acks.append((invoked[e.value], e.time, e.partition))
        elif e.f == NEMESIS and e.type == INVOKE and e.fault and e.fault != HEAL:
            faults.append(e)
    acks.sort()
    ack_times: dict[int, list[float]] = {}
    for _inv, ack, p in acks:
        ack_times.setdefault(p, []).append(ack)
    for times in ack_times.values():
        times.sort()
    load_end = max((a for _i, a, _p in acks), default=0.0)
    first: dict[str, list[float]] = {}
    longest: dict[str, list[float]] = {}
    unrecovered: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for i, fe in enumerate(faults):
        kind = fe.fault.split()[0] if fe.fault else "?"
        by_type[kind] = by_type.get(kind, 0) + 1
        affected = set(fe.partitions) or set(ack_times)
        firsts = [ack for inv, ack, p in acks if inv >= fe.time and p in affected]
        if firsts:
            first.setdefault(kind, []).append(min(firsts) - fe.time)
        else:
            unrecovered[kind] = unrecovered.get(kind, 0) + 1
        until = faults[i + 1].time if i + 1 < len(faults) else load_end
        gap = 0.0
        for p in affected:
            prev = fe.time
            for t in ack_times.get(p, ()):
                if t <= fe.time:
                    continue
                if t > until:
                    break
                gap, prev = max(gap, t - prev), t
        longest.setdefault(kind, []).append(gap)
    return {
        "faults": dict(sorted(by_type.items())),
        "first-ack-s": {k: _stats(v) for k, v in sorted(first.items())},
        "longest-gap-s": {k: _stats(v) for k, v in sorted(longest.items())},
        "no-ack-after": dict(sorted(unrecovered.items())),
    }


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": round(statistics.median(values), 3), "p99": round(_p99(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass(frozen=True)
class NemesisRun:
    """What ``run_nemesis`` sets up: the cluster, the load and the schedule."""

    directory: str
    duration: float = 120.0
    seed: int = 0
    brokers: int = 3
    bookies: int = 3
    etcd_members: int = 1
    faults: tuple[str, ...] = FAULT_TYPES
    session_timeout_ms: int = 3000
    partitions: int = 3
    producers: int = 2
    rate: float = 50.0
    history: str | None = None
    schedule: tuple[str, ...] = ()
    """Exactly these faults in order (then the load ends a few seconds later); empty: random until the end."""
    gap: tuple[float, float] = (3.0, 6.0)
    hold: tuple[float, float] = (2.0, 6.0)


def run_nemesis(spec: NemesisRun) -> dict[str, Any]:
    """Start a DevCluster, run the workload for ``spec.duration`` s with the nemesis, heal, final-read, check.

    Returns the checker's summary with ``nemesis`` (faults and unavailability, see ``summarize``) and
    ``workload-errors``/``nemesis-errors`` when there were any; ``valid?`` is the checker's verdict.
    """
    import uuid
    from pathlib import Path

    from brokers.verify.checker import check
    from brokers.verify.workload import Workload, WorkloadConfig

    # Ledgers roll every 10 s, so sealed ones are offloaded during the run and the store fault bites.
    args = ["--config", f"broker.session.timeout.ms={spec.session_timeout_ms}", "--config", "ledger.rollover.ms=10000"]
    wanted = set(spec.schedule or spec.faults)
    proxied = bool(wanted & {"partition", "store"})
    cluster = DevCluster(spec.directory, brokers=spec.brokers, bookies=spec.bookies, broker_args=args,
                         etcd_members=spec.etcd_members, proxied=proxied)  # fmt: skip
    Path(spec.directory).mkdir(parents=True, exist_ok=True)
    out = open(spec.history or Path(spec.directory) / "history.jsonl", "w", encoding="utf-8")
    disks: list[Path] = []
    faults_wanted = spec.faults
    try:
        if "disk" in wanted:
            try:
                disks = mount_small_disks([Path(spec.directory) / f"bookie-{i + 1}" for i in range(spec.bookies)])
            except OSError as e:
                if "disk" in spec.schedule:
                    raise
                log.warning("no disk fault in this run: %s", e)
                faults_wanted = tuple(f for f in spec.faults if f != "disk")
        cluster.start()
        writer = HistoryWriter(out)
        topic = f"nemesis-{uuid.uuid4().hex[:8]}"
        workload = Workload(WorkloadConfig(bootstrap=cluster.bootstrap, topic=topic, partitions=spec.partitions,
                                           duration=spec.duration, producers=spec.producers, rate=spec.rate,
                                           drain_timeout=60.0, final_read_timeout=90.0), writer)  # fmt: skip
        nemesis = Nemesis(cluster, NemesisConfig(faults=faults_wanted, seed=spec.seed, schedule=spec.schedule,
                                                 gap=spec.gap, hold=spec.hold, disks=tuple(map(str, disks)),
                                                 session_timeout_s=spec.session_timeout_ms / 1000), writer, topic)
        load_done = threading.Event()
        original_final_read = workload.final_read

        def final_read_after_heal() -> None:
            # The workload calls this once producers and consumers are done: stop the faults, heal, then read.
            load_done.set()
            nemesis.stop.set()
            faults.join()
            writer.add("nemesis", INVOKE, NEMESIS, fault=HEAL)
            nemesis.heal()
            writer.add("nemesis", OK, NEMESIS, fault=HEAL)
            original_final_read()

        workload.final_read = final_read_after_heal  # type: ignore[method-assign]
        faults = threading.Thread(target=_guarded(nemesis), name="nemesis", daemon=True)
        # Faults only while producers run: the schedule stops when the load phase ends.
        if spec.schedule:  # the load lasts as long as the schedule (at most the duration), plus a little
            def end_load() -> None:
                faults.join(spec.duration)
                nemesis.stop.wait(3.0)
                workload.stop.set()

            stopper = threading.Thread(target=end_load, daemon=True)
        else:
            stopper = threading.Thread(target=_stop_after, args=(nemesis, spec.duration), daemon=True)
        faults.start()
        stopper.start()
        workload.run()
        summary = check(writer.events)
        summary["topic"] = topic
        summary["nemesis"] = summarize(writer.events)
        if workload.errors:
            summary["workload-errors"] = workload.errors
        if nemesis.errors:
            summary["nemesis-errors"] = nemesis.errors
        summary["seed"] = spec.seed
        return summary
    finally:
        cluster.stop()
        out.close()
        unmount(disks)


SMALL_DISK = "256m"
"""The size of each bookie's file system in a run with the disk fault (tmpfs: memory, and quick to fill)."""


def mount_small_disks(paths: Sequence[Path]) -> list[Path]:
    """A tmpfs of SMALL_DISK at each path (made if missing); OSError saying why if mounting is not permitted
    (it needs root, or CAP_SYS_ADMIN in a namespace of your own). The disk fault fills one of them."""
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        raise OSError("no mount command: cannot make a small file system for the disk fault")
    mounted: list[Path] = []
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(path)],  # noqa: S603,S607 - fixed argv
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            unmount(mounted)
            raise OSError(f"mounting a tmpfs at {path} failed (the disk fault needs root): {done.stderr.strip()}")
        mounted.append(path)
    return mounted


def unmount(paths: Sequence[Path]) -> None:
    import subprocess

    for path in paths:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)  # noqa: S603,S607 - fixed argv


def _stop_after(nemesis: Nemesis, duration: float) -> None:
    """No fault begins in the last seconds of the load: its effect would land in the drain instead."""
    nemesis.stop.wait(max(duration - 8.0, 0.0))
    nemesis.stop.set()


def _guarded(nemesis: Nemesis) -> Any:
    def body() -> None:
        try:
            nemesis.run()
        except Exception as e:  # the run goes on to heal and check; the error shows in the summary
            log.exception("nemesis failed")
            nemesis.errors.append(repr(e))

    return body
