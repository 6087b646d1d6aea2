"""``tidelog run --bookies N``: N local bookie server processes, started and supervised by the broker.

Bookie ``K`` (1..N) is ``tidelog bookie --metadata none --data-dir DATA/bookie-K --listen 127.0.0.1:PORT
--bookie-id bookie-K``, its output in ``DATA/bookie-K.log``. Ports are chosen free on the first start and
remembered, with each process's pid, in ``DATA/bookies.json``, so a restart reuses them (transports
reconnect to the address they know; tests read the file to kill or revive a bookie). A bookie that exits
is started again after ``restart_ms`` (-1: never — for tests that kill and revive bookies themselves). On
shutdown each gets SIGTERM, then SIGKILL after a grace period. Should the broker die, the kernel kills its
bookies (PR_SET_PDEATHSIG, Linux) and the next start also ends any leftover recorded in bookies.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.bookie.tcp_client import TcpBookieClient

log = logging.getLogger(__name__)

STATE_FILE = "bookies.json"
STATE_FORMAT = 1
STOP_GRACE = 10.0
MIN_RESTART_MS = 100  # a bookie that cannot start at all is not restarted in a tight loop
HOST = "127.0.0.1"


class LocalBookiesError(RuntimeError):
    """The local bookies cannot be set up as asked (the message says why)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return prctl


_PRCTL = _load_prctl()  # resolved here: the child, between fork and exec, only calls it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class BookieSlot:
    """Where local bookie ``index`` lives."""

    index: int
    bookie_id: str
    port: int
    data_dir: Path
    log_path: Path


class LocalBookies:
    """The broker's bookie child processes (see the module docstring)."""

    def __init__(self, data_dir: Path, count: int, *, restart_ms: int = 1000, log_level: str = "INFO") -> None:
        if count < 1:
            raise LocalBookiesError(f"--bookies {count}: need at least one bookie")
        self._dir = data_dir
        self._count = count
        self._restart_ms = restart_ms
        self._log_level = log_level
        self.slots: list[BookieSlot] = []
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    @property
    def state_path(self) -> Path:
        return self._dir / STATE_FILE

    def clients(self) -> list[TcpBookieClient]:
        """One TCP transport per bookie (the caller owns and closes them)."""
        return [TcpBookieClient(s.bookie_id, HOST, s.port) for s in self.slots]

    # --- state file ---------------------------------------------------------------------------
    def _load_state(self) -> dict[int, dict[str, int]]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise LocalBookiesError(f"{self.state_path} is unreadable: {e}") from None
        if not isinstance(raw, dict) or raw.get("v") != STATE_FORMAT or not isinstance(raw.get("bookies"), list):
            raise LocalBookiesError(f"{self.state_path}: unknown format")
        return {int(b["index"]): {"port": int(b["port"]), "pid": int(b.get("pid", 0))} for b in raw["bookies"]}

    def _save_state(self) -> None:
        bookies = [
            {
                "index": s.index, "id": s.bookie_id, "port": s.port, "data_dir": str(s.data_dir),
                "log": str(s.log_path), "pid": self._procs[s.index].pid if s.index in self._procs else 0,
            }
            for s in self.slots
        ]  # fmt: skip
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"v": STATE_FORMAT, "bookies": bookies}, indent=1) + "\n")
        tmp.replace(self.state_path)

    def _end_leftover(self, pid: int, data_dir: Path) -> None:
        """Kill a bookie a previous broker left running on this data dir (if the pid is still one)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if b"bookie" in cmdline and str(data_dir).encode() in cmdline:
            log.warning("ending bookie process %d left over from an earlier run", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Assign ports (remembered ones first), start every bookie and supervise them."""
        state = await asyncio.to_thread(self._load_state)
        if state and max(state) > self._count:
            raise LocalBookiesError(
                f"{self._dir} was run with --bookies {max(state)}; its ledgers may live on all of them, "
                f"so --bookies must be at least {max(state)}"
            )
        for index in range(1, self._count + 1):
            known = state.get(index)
            data_dir = self._dir / f"bookie-{index}"
            if known is not None and known["pid"]:
                self._end_leftover(known["pid"], data_dir)
            port = known["port"] if known is not None else _free_port()
            self.slots.append(BookieSlot(index, f"bookie-{index}", port, data_dir, self._dir / f"bookie-{index}.log"))
        for slot in self.slots:
            await self._spawn(slot)
        await asyncio.to_thread(self._save_state)
        self._tasks = [asyncio.create_task(self._supervise(slot), name=slot.bookie_id) for slot in self.slots]

    def _command(self, slot: BookieSlot) -> list[str]:
        return [
            sys.executable, "-m", "brokers.cli", "--log-level", self._log_level, "bookie",
            "--metadata", "none", "--data-dir", str(slot.data_dir), "--listen", f"{HOST}:{slot.port}",
            "--bookie-id", slot.bookie_id,
        ]  # fmt: skip

    async def _spawn(self, slot: BookieSlot) -> None:
        out = await asyncio.to_thread(slot.log_path.open, "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(slot),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the broker, which stops its bookies last
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self._procs[slot.index] = proc
        log.info("started bookie %s (pid %d) on %s:%d", slot.bookie_id, proc.pid, HOST, slot.port)

    async def _supervise(self, slot: BookieSlot) -> None:
        while True:
            proc = self._procs[slot.index]
            code = await proc.wait()
            if self._stopping:
                return
            if self._restart_ms < 0:
                log.warning("bookie %s exited with code %d; not restarting (bookie.restart.ms=-1)",
                            slot.bookie_id, code)
                return
            delay_ms = max(self._restart_ms, MIN_RESTART_MS)
            log.warning("bookie %s exited with code %d; restarting in %d ms", slot.bookie_id, code, delay_ms)
            await asyncio.sleep(delay_ms / 1000)
            if self._stopping:
                return
            try:
                await self._spawn(slot)
            except OSError as e:
                log.error("could not restart bookie %s: %s", slot.bookie_id, e)
                return
            self.restarts += 1
            await asyncio.to_thread(self._save_state)

    async def stop(self) -> None:
        """SIGTERM every bookie and wait (SIGKILL after a grace period)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await proc.wait()
            except TimeoutError:
                log.warning("bookie pid %d did not stop in %.0fs; killing it", proc.pid, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("stopped %d bookie processes", len(procs))
