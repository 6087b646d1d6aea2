"""``tidelog offload status``: a broker's offload backlog and progress, from its admin endpoint.

Reads ``GET /v1/offload`` of a broker started with ``--admin HOST:PORT`` (brokers/admin_http.py) and prints
the broker-wide figures, a table with one row per partition, and the partitions' last offload errors; or the
JSON itself with ``--json``. Pulsar's counterpart is ``pulsar-admin topics offload-status``.
Exit codes: 0 done, 1 the broker could not be reached or answered with an error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any
from urllib.parse import quote

from brokers.cli.common import table
from brokers.config import ConfigError, parse_hostport

PROG = "tidelog offload"
PATH = "/v1/offload"
INTERNAL_PREFIX = "__"


class StatusError(Exception):
    """The figures could not be fetched; the message is printed as one line, exit code 1."""


def _hostport(value: str) -> tuple[str, int]:
    try:
        return parse_hostport(value, "--admin")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return seconds


def add_parser(sub: Any) -> None:
    offload = sub.add_parser("offload", help="offload backlog and progress of a broker (its admin endpoint)")
    actions = offload.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="what waits for offload, how long, the last errors; what is offloaded")
    status.add_argument(
        "--admin", type=_hostport, required=True, metavar="HOST:PORT",
        help="the broker's admin endpoint (what `tidelog run --admin` was given)",
    )  # fmt: skip
    status.add_argument("--topic", metavar="TOPIC", help="only this topic's partitions")
    status.add_argument("--internal", action="store_true", help="list internal topics' partitions (__...) too")
    status.add_argument("--json", action="store_true", help="print the endpoint's JSON instead of tables")
    status.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="give up after (default 10)")
    offload.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    host, port = args.admin
    try:
        status = fetch_status(host, port, args.topic, args.timeout)
    except StatusError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status, internal=args.internal or args.topic is not None))
    return 0


def fetch_status(host: str, port: int, topic: str | None, timeout: float) -> dict[str, Any]:
    """``GET /v1/offload`` of the admin endpoint at ``host:port``; raises StatusError."""
    target = PATH if topic is None else f"{PATH}?topic={quote(topic, safe='')}"
    where = f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise StatusError(
            f"cannot reach the broker's admin endpoint at {where} ({e}); is it running with --admin {where}?"
        ) from None
    finally:
        conn.close()
    if response.status != 200:
        detail = body.decode("utf-8", "replace").strip()[:300]
        raise StatusError(f"{where} answered {response.status} {response.reason}: {detail}")
    try:
        status = json.loads(body)
    except ValueError as e:
        raise StatusError(f"{where} did not answer JSON: {e}") from None
    if not isinstance(status, dict) or not isinstance(status.get("partitions"), list):
        raise StatusError(f"{where} answered JSON that is not an offload status")
    return status


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def render(status: dict[str, Any], *, internal: bool = False) -> str:
    """The status as text: broker-wide figures, a partition table, the last errors."""
    t = status["totals"]
    if not status.get("object_store"):
        state = "off (no object store)"
    else:
        state = "enabled" if status.get("offload_enabled") else "disabled (offload.enable=false)"
    mark = t["high_water_bytes"]
    backpressure = "off" if mark < 0 else f"above {human_bytes(mark)}"
    lines = [
        f"broker {status['node_id']}: offload {state}",
        f"waiting    {_count(t['ledgers_waiting'], 'ledger')}, {human_bytes(t['bytes_waiting'])}, "
        f"oldest {t['oldest_age_s']:.1f}s (backpressure {backpressure})",
        f"offloaded  {_count(t['segments_offloaded'], 'segment')}, {human_bytes(t['bytes_offloaded'])} since the "
        f"broker started; {_count(t['retries'], 'retry', 'retries')}, {_count(t['reuploads'], 're-upload')}, "
        f"{_count(t['orphans_deleted'], 'orphan')} deleted",
        f"failing    {_count(t['failing_partitions'], 'partition')}",
        "",
    ]
    parts = [p for p in status["partitions"] if internal or not str(p["topic"]).startswith(INTERNAL_PREFIX)]
    if not parts:
        lines.append("no partitions")
        return "\n".join(lines)
    headers = ("TOPIC", "PARTITION", "WAITING", "WAITING-BYTES", "OLDEST", "SEGMENTS", "OFFLOADED-BYTES",
               "LOG-START", "HIGH-WATERMARK", "ERROR")  # fmt: skip
    rows = [
        (p["topic"], p["partition"], p["ledgers_waiting"], human_bytes(p["bytes_waiting"]), f"{p['oldest_age_s']:.1f}s",
         p["segments"], human_bytes(p["offloaded_bytes"]), p["log_start_offset"], p["high_watermark"],
         "yes" if p["last_error"] else None)
        for p in parts
    ]  # fmt: skip
    lines.append(table(headers, rows))
    errors = [p for p in parts if p["last_error"]]
    if errors:
        lines += ["", "last offload errors:"]
        lines += [f"  {p['topic']}/{p['partition']}: {' '.join(str(p['last_error']).split())}" for p in errors]
    return "\n".join(lines)
