"""What every client subcommand shares: the connection options, one-line errors, tables, JSON and progress.

The options ``--bootstrap``, ``--json`` and ``--timeout`` are accepted before and after the action
(``tidelog topics --json list`` and ``tidelog topics list --json``), so scripts need not care where they go.
Errors the user can fix are one line on stderr, ``PROG: error: ...``, never a traceback; exit codes are 0 done,
1 the cluster refused or could not be reached, 2 bad arguments (as argparse does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import IO, Any, NoReturn

from brokers.cli.client import ClientError, KafkaClient, parse_bootstrap
from brokers.config import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
USAGE_ERROR = 2
FAILED = 1


class CommandError(Exception):
    """The command cannot do what was asked; the message is printed as one line, exit code 1."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``tidelog run: error: ...``) and exit code 2, no usage dump:
    the usage block buried the one line that says what was wrong. ``--help`` still shows it all."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see {self.prog} --help)"
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}{hint}\n")


def bootstrap_arg(value: str) -> str:
    try:
        parse_bootstrap(value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e9:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def add_common(parser: argparse.ArgumentParser, top: bool, timeout: float = 30.0) -> None:
    """``--bootstrap``, ``--json`` and ``--timeout``. Call it on the command (``top``) and on each action: the
    action's copies default to SUPPRESS so they only override what was given before the action."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--bootstrap", "--bootstrap-server", "-b", type=bootstrap_arg, default=default(DEFAULT_BOOTSTRAP),
        metavar="HOST:PORT", help=f"a broker to start from (comma-separated list allowed; default {DEFAULT_BOOTSTRAP})",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")
    parser.add_argument(
        "--timeout", type=seconds_arg, default=default(timeout), metavar="SECONDS",
        help=f"give up on a request (and on its retries) after this long (default {timeout:g})",
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, like kafka-topics.sh; None prints as '-'."""
    cells = [list(headers)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    """JSON (for scripts) with ``--json``, else the human text."""
    print(json.dumps(data, indent=2) if args.json else text)


def fail(prog: str, message: object, code: int = FAILED) -> int:
    """Print the one error line and return the exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal (pipes and logs stay clean).

    Redrawn at most every 0.1 s; ``done()`` ends the line. Nothing beyond the standard library.
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: IO[str] | None = None, force: bool = False) -> None:
        self.label = label
        self.total = max(total, 0)
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self._on = force or _is_tty(self._stream)
        self._start = time.monotonic()
        self._drawn = 0.0

    @property
    def enabled(self) -> bool:
        return self._on

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self._on and (now - self._drawn >= 0.1 or self.count >= self.total):
            self._drawn = now
            self._draw(now)

    def done(self) -> None:
        if self._on:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        frac = min(self.count / self.total, 1.0) if self.total else 1.0
        filled = int(frac * self.WIDTH)
        rate = self.count / max(now - self._start, 1e-9)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r{self.label} [{bar}] {self.count}/{self.total} {frac:4.0%} {rate:,.0f}/s ")
        self._stream.flush()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def parse_kv(pairs: Sequence[str], what: str) -> dict[str, str]:
    """``k=v`` strings to a dict; raises CommandError naming the bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{what} {pair!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out


def kv_arg(value: str) -> tuple[str, str]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key.strip(), raw


def json_default(value: Any) -> Any:
    """bytes in JSON output: text when it decodes as UTF-8, else a hex string."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    raise TypeError(type(value).__name__)


Action = Callable[[KafkaClient, argparse.Namespace], Coroutine[Any, Any, int]]
"""One subcommand action of a client command (``tidelog groups describe``, ``tidelog transactions list``)."""


async def run_action(args: argparse.Namespace, actions: Mapping[str, Action], prog: str, client_id: str) -> int:
    """Run ``args.action`` with a client of ``args.bootstrap``; errors become one line on stderr and exit 1."""
    try:
        async with KafkaClient(args.bootstrap, client_id=client_id, timeout=args.timeout) as client:
            return await actions[args.action](client, args)
    except (ClientError, CommandError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
