"""How long a ledger rollover holds a partition's appends: closing the full ledger (waiting for its last
entries), recording the switch, and opening the next one unless it was created ahead (``prepared``)."""

from __future__ import annotations

from prometheus_client import Histogram

ROLLOVER = Histogram(
    "tidelog_ledger_rollover_seconds",
    "Duration of ledger rollovers (appends to the partition wait meanwhile), by whether the next ledger had "
    "been created ahead.",
    ["prepared"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
for _prepared in ("true", "false"):
    ROLLOVER.labels(_prepared)  # both series from the start


def observe(seconds: float, prepared: bool) -> None:
    ROLLOVER.labels("true" if prepared else "false").observe(seconds)
