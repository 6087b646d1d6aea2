"""brokers/metrics.py: the snapshot series (a prometheus_client Collector) in the Prometheus text format (0.0.4),
and the offload status, of a constructed snapshot."""

from __future__ import annotations

import json
import re

from brokers.metrics import BrokerFigures, PartitionFigures, offload_status, render_prometheus
from brokers.observability.groups import GroupOffsetFigures
from storage.offload.offloader import OffloadStats

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"({NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE},?)*)\}})? (\S+)")
LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")

ODD = 'we"ird\\topic\nname'  # a quote, a backslash and a line feed (not a legal Kafka name: the worst case)

FIGURES = BrokerFigures(
    node_id=7,
    tiering=True,
    offload_enabled=True,
    partitions=(
        PartitionFigures("events", 0, log_start_offset=10, high_watermark=5000, ledgers=3, segments=4,
                         tiered_bytes=400_000, backlog_ledgers=2, backlog_bytes=131_072, lag_seconds=12.5,
                         last_error="ObjectStoreUnavailable('connect refused')"),
        PartitionFigures("events", 1, high_watermark=70, ledgers=1, segments=1, tiered_bytes=9000),
        PartitionFigures(ODD, 0, high_watermark=3, ledgers=2, backlog_ledgers=1, backlog_bytes=700, lag_seconds=0.25),
    ),
    held_bytes=131_772,
    high_water_bytes=4 * 1024**3,
    stats=OffloadStats(
        segments=5, bytes=409_000, retries=3, reuploads=1, orphans_deleted=2, from_owner=4, from_bookies=1
    ),
    owner_bytes=2048,
)  # fmt: skip


def unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), quoted[1:-1])


Families = dict[str, tuple[str, list[tuple[dict[str, str], float]]]]


def parse(text: str) -> Families:
    """A strict reader of the 0.0.4 text format: name -> (type, [(labels, value)]). Fails on any line out of
    place: a sample before its family's TYPE, a family declared twice, a malformed line."""
    assert text.endswith("\n") and "\n\n" not in text
    families: Families = {}
    helped: set[str] = set()
    current = None
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in families, f"TYPE without HELP first, or twice: {line}"
            assert kind in ("gauge", "counter"), line
            assert (kind == "counter") == name.endswith("_total"), line
            families[name] = (kind, [])
            current = name
        else:
            match = SAMPLE.fullmatch(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name == current, f"sample of {name} outside its family block"
            got = {k: unescape(v) for k, v in LABEL.findall(labels or "")}
            families[name][1].append((got, float(value)))
    return families


def series(families: Families, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels.get(k, "") for k in ("topic", "partition")): v for labels, v in families[name][1]}


def test_every_line_is_in_the_text_format_and_every_family_is_typed() -> None:
    families = parse(render_prometheus(FIGURES))
    expected = {
        "tidelog_offload_enabled", "tidelog_offload_backlog_ledgers", "tidelog_offload_backlog_bytes",
        "tidelog_offload_lag_seconds", "tidelog_offload_failing", "tidelog_partition_log_start_offset",
        "tidelog_partition_high_watermark", "tidelog_partition_ledgers", "tidelog_partition_segments",
        "tidelog_partition_tiered_bytes", "tidelog_broker_offload_backlog_ledgers",
        "tidelog_broker_offload_backlog_bytes", "tidelog_broker_offload_lag_seconds",
        "tidelog_broker_offload_failing_partitions", "tidelog_offload_bookie_high_water_bytes",
        "tidelog_offload_segments_total", "tidelog_offload_bytes_total", "tidelog_offload_retries_total",
        "tidelog_offload_reuploads_total", "tidelog_offload_orphans_deleted_total",
        "tidelog_offload_owner_bytes", "tidelog_offload_segments_from_owner_total",
        "tidelog_offload_segments_from_bookies_total", "tidelog_storage_disk_full",
        "tidelog_tiered_read_failures_total",
        "tidelog_consumer_group_committed_offset", "tidelog_consumer_group_lag",
    }  # fmt: skip
    assert set(families) == expected
    for name, (_kind, samples) in families.items():
        if name.startswith("tidelog_consumer_group_"):
            assert samples == [], name  # no group in this snapshot
            continue
        per_partition = name.startswith(("tidelog_partition_", "tidelog_offload_backlog", "tidelog_offload_lag",
                                         "tidelog_offload_failing"))  # fmt: skip
        assert len(samples) == (3 if per_partition else 1), name
        assert all(set(labels) == ({"topic", "partition"} if per_partition else set()) for labels, _ in samples)


def test_partition_series_carry_each_partitions_figures() -> None:
    families = parse(render_prometheus(FIGURES))
    assert series(families, "tidelog_offload_backlog_ledgers") == {("events", "0"): 2, ("events", "1"): 0,
                                                                   (ODD, "0"): 1}  # fmt: skip
    assert series(families, "tidelog_offload_backlog_bytes")[("events", "0")] == 131_072
    assert series(families, "tidelog_offload_lag_seconds") == {("events", "0"): 12.5, ("events", "1"): 0.0,
                                                               (ODD, "0"): 0.25}  # fmt: skip
    assert series(families, "tidelog_offload_failing") == {("events", "0"): 1, ("events", "1"): 0, (ODD, "0"): 0}
    assert series(families, "tidelog_partition_log_start_offset")[("events", "0")] == 10
    assert series(families, "tidelog_partition_high_watermark") == {("events", "0"): 5000, ("events", "1"): 70,
                                                                    (ODD, "0"): 3}  # fmt: skip
    assert series(families, "tidelog_partition_segments")[("events", "0")] == 4
    assert series(families, "tidelog_partition_tiered_bytes")[("events", "1")] == 9000
    assert series(families, "tidelog_partition_ledgers")[(ODD, "0")] == 2


def test_totals_sum_ledgers_take_the_oldest_lag_and_count_failing_partitions() -> None:
    families = parse(render_prometheus(FIGURES))
    total = {name: samples[0][1] for name, (_k, samples) in families.items() if samples and not samples[0][0]}
    assert total["tidelog_broker_offload_backlog_ledgers"] == 3
    assert total["tidelog_broker_offload_backlog_bytes"] == 131_772  # the backpressure counter itself
    assert total["tidelog_broker_offload_lag_seconds"] == 12.5
    assert total["tidelog_broker_offload_failing_partitions"] == 1
    assert total["tidelog_offload_bookie_high_water_bytes"] == 4 * 1024**3
    assert total["tidelog_offload_enabled"] == 1
    assert (total["tidelog_offload_segments_total"], total["tidelog_offload_bytes_total"]) == (5, 409_000)
    assert (total["tidelog_offload_retries_total"], total["tidelog_offload_reuploads_total"]) == (3, 1)
    assert total["tidelog_offload_orphans_deleted_total"] == 2


def test_label_values_are_escaped() -> None:
    text = render_prometheus(FIGURES)
    assert 'topic="we\\"ird\\\\topic\\nname"' in text
    assert ODD in {labels["topic"] for labels, _ in parse(text)["tidelog_partition_segments"][1]}


def test_consumer_group_offsets_and_lag_where_the_high_watermark_is_known() -> None:
    figures = BrokerFigures(0, groups=(
        GroupOffsetFigures("billing", "events", 0, committed=4000, high_watermark=5000),
        GroupOffsetFigures("billing", "events", 1, committed=70, high_watermark=60),  # a watermark read earlier
        GroupOffsetFigures("audit", "events", 0, committed=10),  # watermark unknown: no lag series
    ))  # fmt: skip
    families = parse(render_prometheus(figures))

    def by_group(name: str) -> dict[tuple[str, str, str], float]:
        return {(lb["group"], lb["topic"], lb["partition"]): v for lb, v in families[name][1]}

    assert by_group("tidelog_consumer_group_committed_offset") == {
        ("billing", "events", "0"): 4000, ("billing", "events", "1"): 70, ("audit", "events", "0"): 10,
    }  # fmt: skip
    assert by_group("tidelog_consumer_group_lag") == {("billing", "events", "0"): 1000, ("billing", "events", "1"): 0}


def test_no_partitions_and_offload_off() -> None:
    figures = BrokerFigures(node_id=0, tiering=True, offload_enabled=False, high_water_bytes=1000)
    families = parse(render_prometheus(figures))
    assert families["tidelog_partition_segments"][1] == []  # HELP and TYPE only
    assert families["tidelog_offload_enabled"][1][0][1] == 0
    assert families["tidelog_offload_bookie_high_water_bytes"][1][0][1] == -1  # backpressure is off without offload
    assert families["tidelog_broker_offload_lag_seconds"][1][0][1] == 0.0


def test_offload_status_json_per_partition_and_totals() -> None:
    status = json.loads(json.dumps(offload_status(FIGURES)))
    assert (status["node_id"], status["object_store"], status["offload_enabled"]) == (7, True, True)
    assert status["totals"] == {
        "ledgers_waiting": 3, "bytes_waiting": 131_772, "oldest_age_s": 12.5, "failing_partitions": 1,
        "high_water_bytes": 4 * 1024**3, "segments_offloaded": 5, "bytes_offloaded": 409_000, "retries": 3,
        "reuploads": 1, "orphans_deleted": 2, "segments_from_owner": 4, "segments_from_bookies": 1,
        "owner_bytes": 2048,
    }  # fmt: skip
    first = status["partitions"][0]
    assert first == {
        "topic": "events", "partition": 0, "ledgers_waiting": 2, "bytes_waiting": 131_072, "oldest_age_s": 12.5,
        "last_error": "ObjectStoreUnavailable('connect refused')", "segments": 4, "offloaded_bytes": 400_000,
        "ledgers": 3, "log_start_offset": 10, "high_watermark": 5000, "owner_bytes": 0,
    }  # fmt: skip
    only = offload_status(FIGURES, topic=ODD)
    assert [(p["topic"], p["partition"]) for p in only["partitions"]] == [(ODD, 0)]
    assert only["totals"] == status["totals"]  # totals stay broker-wide
    assert offload_status(FIGURES, topic="absent")["partitions"] == []


def test_disk_full_and_tiered_read_failures_are_exposed() -> None:
    figures = BrokerFigures(0, disk_refusing=("/data/bookie/journal",), tiered_read_failures=3)
    families = parse(render_prometheus(figures))
    assert families["tidelog_storage_disk_full"] == ("gauge", [({}, 1.0)])
    assert families["tidelog_tiered_read_failures_total"] == ("counter", [({}, 3.0)])
    assert parse(render_prometheus(BrokerFigures(0)))["tidelog_storage_disk_full"] == ("gauge", [({}, 0.0)])
