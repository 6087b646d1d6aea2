"""Dynamic configs against one ``tidelog run`` process with real clients (issue 13, must-show 1 for the config
APIs): confluent-kafka's alter_configs / incremental_alter_configs / describe_configs, kafka-python's
alter_configs / describe_configs and kafkajs's alterConfigs / describeConfigs on topics, on the broker and on
the cluster-wide default, with Kafka's sources and refusals; and the live effect without a restart — lowering
``retention.ms`` (on a topic, and ``log.retention.ms`` as the cluster-wide default) deletes the old segments at the
next retention check, raising ``max.message.bytes`` (topic, and ``message.max.bytes`` on the broker) admits a
bigger batch at once. The same on a dev cluster: tests/cluster/test_dynamic_configs_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient

from brokers.cli import main
from brokers.cli.client import KafkaClient
from brokers.cli.configs import alter_resource, describe_resource

from .broker_process import BrokerProcess
from .conftest import NODE_DIR, _finish
from .helpers import create_topic
from .test_tiered import EARLIEST, list_offsets_of, produce_one_partition, wait_all_offloaded

WAIT = 120.0  # hang guard only
TIMEOUT = 30.0
RETENTION = {  # small ledgers offloaded quickly, a retention check every 300 ms
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "1500",
    "log.retention.check.interval.ms": "300",
}
TOPIC, BROKER = 2, 4
pytestmark = pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")  # AlterConfigs is the point
BIG = 1_500_000  # one record: a batch over the default max.message.bytes (1048588)


@pytest.fixture(scope="module")
def tidelog(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("configs") / "data", configs=RETENTION)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin_of(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def described(admin: AdminClient, resource: ConfigResource) -> dict[str, ConfigEntry]:
    (fut,) = admin.describe_configs([resource], request_timeout=TIMEOUT).values()
    got: dict[str, ConfigEntry] = fut.result(TIMEOUT)
    return got


def source_of(entry: ConfigEntry) -> tuple[str, int]:
    return entry.value, entry.source


def seen_by(bootstrap: str, node: int, resource_type: int, name: str, key: str) -> tuple[str | None, str]:
    """(value, source) of one config as broker ``node`` reports it."""

    async def ask() -> tuple[str | None, str]:
        async with KafkaClient(bootstrap, timeout=TIMEOUT) as client:
            rows = await describe_resource(client, resource_type, name, node=node)
        return next((r.value, r.source) for r in rows if r.name == key)

    return asyncio.run(ask())


def synonyms_of(bootstrap: str, broker_id: str, key: str) -> list[tuple[str, str | None, str]]:
    async def ask() -> list[tuple[str, str | None, str]]:
        async with KafkaClient(bootstrap, timeout=TIMEOUT) as client:
            rows = await describe_resource(client, BROKER, broker_id)
        return next(list(r.synonyms) for r in rows if r.name == key)

    return asyncio.run(ask())


def confluent_check(bootstrap: str, broker_id: str) -> None:
    """confluent-kafka's three calls on a topic, a broker and the cluster default; Kafka's sources and errors."""
    topic = name("cfg-ck")
    create_topic(bootstrap, topic, 1, {"cleanup.policy": "delete", "segment.ms": "3600000"})
    admin = admin_of(bootstrap)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"retention.ms": "3600000"})
    admin.alter_configs([res], request_timeout=TIMEOUT)[res].result(TIMEOUT)  # replaces the whole set
    entries = described(admin, ConfigResource(ConfigResource.Type.TOPIC, topic))
    assert source_of(entries["retention.ms"]) == ("3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    assert source_of(entries["segment.ms"]) == ("604800000", ConfigSource.DEFAULT_CONFIG.value)

    ops = [
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
    ]
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=ops)
    admin.incremental_alter_configs([res], request_timeout=TIMEOUT)[res].result(TIMEOUT)
    entries = described(admin, ConfigResource(ConfigResource.Type.TOPIC, topic))
    assert entries["cleanup.policy"].value == "compact"  # the AlterConfigs above dropped "delete"
    assert source_of(entries["max.message.bytes"]) == ("2000000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    assert entries["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    # librdkafka and kafka-python refuse a broker resource without an id (the cluster default): our client sets it
    set_default(bootstrap, {"log.segment.bytes": "536870912"})
    mine = ConfigResource(ConfigResource.Type.BROKER, broker_id, incremental_configs=[
        ConfigEntry("log.segment.bytes", "268435456", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([mine], request_timeout=TIMEOUT)[mine].result(TIMEOUT)
    broker = described(admin, ConfigResource(ConfigResource.Type.BROKER, broker_id))
    assert source_of(broker["log.segment.bytes"]) == ("268435456", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    # confluent-kafka keys synonyms by name, so a chain of one name shows its last level only; ours shows all
    assert synonyms_of(bootstrap, broker_id, "log.segment.bytes") == [
        ("log.segment.bytes", "268435456", "DYNAMIC_BROKER_CONFIG"),
        ("log.segment.bytes", "536870912", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
        ("log.segment.bytes", "1073741824", "DEFAULT_CONFIG")]
    assert broker["num.partitions"].is_read_only and not broker["log.segment.bytes"].is_read_only
    # a topic's default is the answering broker's: broker N's own value there, the cluster default elsewhere
    assert seen_by(bootstrap, int(broker_id), TOPIC, topic, "segment.bytes") == ("268435456", "DYNAMIC_BROKER_CONFIG")

    refused = ConfigResource(ConfigResource.Type.BROKER, broker_id, incremental_configs=[
        ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as info:
        admin.incremental_alter_configs([refused], request_timeout=TIMEOUT)[refused].result(TIMEOUT)
    error = info.value.args[0]
    assert error.code() == KafkaError.INVALID_REQUEST and "Cannot update these configs dynamically" in error.str()
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"retention.ms": "soon"})
    with pytest.raises(KafkaException) as info:
        admin.alter_configs([bad], request_timeout=TIMEOUT)[bad].result(TIMEOUT)
    assert info.value.args[0].code() == KafkaError.INVALID_CONFIG
    mine = ConfigResource(ConfigResource.Type.BROKER, broker_id, incremental_configs=[  # as it was, for the rest
        ConfigEntry("log.segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([mine], request_timeout=TIMEOUT)[mine].result(TIMEOUT)
    set_default(bootstrap, {})


def set_default(bootstrap: str, configs: dict[str, str]) -> None:
    """The cluster-wide default broker configs become ``configs`` (resource "", through ``tidelog configs``'s
    client code: the Python clients refuse a broker resource without an id)."""

    async def alter() -> str | None:
        async with KafkaClient(bootstrap, timeout=TIMEOUT) as client:
            current = {c.name for c in await describe_resource(client, BROKER, "")}
            return await alter_resource(client, BROKER, "", configs, sorted(current - set(configs)))

    assert asyncio.run(alter()) is None


def kafka_python_check(bootstrap: str, broker_id: str) -> None:
    """kafka-python's alter_configs (AlterConfigs and IncrementalAlterConfigs) and describe_configs."""
    topic = name("cfg-kp")
    create_topic(bootstrap, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(TIMEOUT * 1000))
    try:
        for incremental in (False, True):
            value = "1800000" if incremental else "900000"
            admin.alter_configs([KpConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": value})],
                                incremental=incremental)
            got = admin.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, topic)],
                                         include_synonyms=True, config_filter="all")
            entry = flat(got)[topic]["retention.ms"]
            assert (entry["value"], source(entry)) == (value, "DYNAMIC_TOPIC_CONFIG")
        admin.alter_configs([KpConfigResource(ConfigResourceType.BROKER, broker_id,
                                              configs={"log.roll.ms": "86400000"})], incremental=False)
        got = flat(admin.describe_configs([KpConfigResource(ConfigResourceType.BROKER, broker_id)],
                                          include_synonyms=True, config_filter="all"))
        assert (got[broker_id]["log.roll.ms"]["value"], source(got[broker_id]["log.roll.ms"])) == (
            "86400000", "DYNAMIC_BROKER_CONFIG")
        admin.alter_configs([KpConfigResource(ConfigResourceType.BROKER, broker_id,
                                              configs={"log.roll.ms": ("DELETE", None)})], incremental=True)
        got = flat(admin.describe_configs([KpConfigResource(ConfigResourceType.BROKER, broker_id)],
                                          include_synonyms=True, config_filter="all"))
        assert source(got[broker_id]["log.roll.ms"]) == "DEFAULT_CONFIG"  # deleted: back to the default
    finally:
        admin.close()


def flat(got: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """kafka-python's describe_configs answer as {resource name: {config name: entry dict}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for by_name in got.values():
        for resource, configs in by_name.items():
            out[str(resource)] = {k: dict(v) for k, v in configs.items()}
    return out


def source(entry: dict[str, Any]) -> str:
    """kafka-python names the source (DYNAMIC_TOPIC_CONFIG...)."""
    return str(entry["config_source"])


def kafkajs_check(bootstrap: str, broker_id: str, tmp_path: Path, one_broker: bool = True) -> None:
    """kafkajs's alterConfigs and describeConfigs; ``one_broker``: the topic is described by broker_id too (in a
    cluster kafkajs asks the controller, whose own per-broker value is not broker_id's)."""
    node = shutil.which("node")
    assert node, "node is not installed"
    topic = name("cfg-js")
    create_topic(bootstrap, topic, 1)
    out = tmp_path / f"kafkajs-{topic}.json"
    res = subprocess.run([node, str(NODE_DIR / "configs.js"), bootstrap, topic, broker_id, str(out)],
                         capture_output=True, text=True, timeout=WAIT, cwd=NODE_DIR, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["altered"] == [[topic, 0], [broker_id, 0]]
    by_name = {r["name"]: r for r in got["described"]}
    retention = by_name[topic]["configs"]["retention.ms"]
    assert (retention["value"], retention["source"]) == ("7200000", 1)
    size = by_name[topic]["configs"]["retention.bytes"]
    if one_broker:
        assert (size["value"], size["source"]) == ("5000000000", 2)  # the broker's dynamic value of its synonym
        assert size["synonyms"][0] == ["log.retention.bytes", "5000000000", 2]
    assert by_name[broker_id]["configs"]["log.retention.bytes"]["source"] == 2
    assert got["refused"] is not None and got["refused"]["type"] == "INVALID_REQUEST"  # a static config
    admin = admin_of(bootstrap)  # held: a collected AdminClient cancels its futures
    res = ConfigResource(ConfigResource.Type.BROKER, broker_id, set_config={})  # the broker as it was
    admin.alter_configs([res], request_timeout=TIMEOUT)[res].result(TIMEOUT)


def test_confluent_kafka(tidelog: BrokerProcess) -> None:
    confluent_check(tidelog.bootstrap, "0")


def test_kafka_python(tidelog: BrokerProcess) -> None:
    kafka_python_check(tidelog.bootstrap, "0")


def test_kafkajs(tidelog: BrokerProcess, tmp_path: Path) -> None:
    kafkajs_check(tidelog.bootstrap, "0", tmp_path)


def alter_topic(bootstrap: str, resource_type: ConfigResource.Type, resource: str, key: str, value: str) -> None:
    admin = admin_of(bootstrap)
    res = ConfigResource(resource_type, resource, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res], request_timeout=TIMEOUT)[res].result(TIMEOUT)


def retention_live(bootstrap: str, alter: Callable[[str], None], topic: str) -> None:
    """An hour-old offloaded log with a young tail: kept under the default 7 days, gone (the old part only)
    after ``alter`` lowers the retention to 10 minutes — no restart."""
    now = int(time.time() * 1000)
    old = produce_one_partition(bootstrap, topic, 600, now - 3_600_000)
    wait_all_offloaded(bootstrap, topic, 1)
    produce_one_partition(bootstrap, topic, 200, now, first=len(old))
    time.sleep(1.0)  # a few retention checks (every 300 ms) under the default: nothing may go
    assert list_offsets_of(bootstrap, topic, EARLIEST, 1) == {0: 0}
    alter(topic)
    deadline = time.monotonic() + WAIT
    while list_offsets_of(bootstrap, topic, EARLIEST, 1)[0] < len(old):
        assert time.monotonic() < deadline, "the lowered retention never deleted the old segments"
        time.sleep(0.3)
    assert list_offsets_of(bootstrap, topic, EARLIEST, 1) == {0: len(old)}  # the young records stay


def test_lowering_retention_deletes_old_segments_live(tidelog: BrokerProcess) -> None:
    bootstrap = tidelog.bootstrap
    topic = name("ret-topic")
    create_topic(bootstrap, topic, 1)
    retention_live(bootstrap, lambda t: alter_topic(bootstrap, ConfigResource.Type.TOPIC, t, "retention.ms", "600000"),
                   topic)


def test_cluster_default_retention_applies_live(tidelog: BrokerProcess) -> None:
    bootstrap = tidelog.bootstrap
    topic = name("ret-default")
    create_topic(bootstrap, topic, 1)
    try:
        retention_live(
            bootstrap,
            lambda _t: set_default(bootstrap, {"log.retention.ms": "600000"}),
            topic,
        )
    finally:
        set_default(bootstrap, {})


def produce_big(bootstrap: str, topic: str) -> KafkaError | None:
    """One BIG record in one batch; the delivery error (None: acknowledged). Never retried: too large is final."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10_000_000, "linger.ms": 0,
                         "compression.type": "none", "message.timeout.ms": int(WAIT * 1000)})
    errors: list[KafkaError | None] = []
    producer.produce(topic, b"x" * BIG, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(WAIT) == 0
    return errors[0]


def test_raising_max_message_bytes_admits_bigger_batches_live(tidelog: BrokerProcess) -> None:
    bootstrap = tidelog.bootstrap
    by_topic, by_broker = name("big-topic"), name("big-broker")
    for topic in (by_topic, by_broker):
        create_topic(bootstrap, topic, 1)
        error = produce_big(bootstrap, topic)
        assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE, error
    alter_topic(bootstrap, ConfigResource.Type.TOPIC, by_topic, "max.message.bytes", "4000000")
    assert produce_big(bootstrap, by_topic) is None
    alter_topic(bootstrap, ConfigResource.Type.BROKER, "0", "message.max.bytes", "4000000")
    try:
        assert produce_big(bootstrap, by_broker) is None
    finally:
        admin = admin_of(bootstrap)
        res = ConfigResource(ConfigResource.Type.BROKER, "0", set_config={})
        admin.alter_configs([res], request_timeout=TIMEOUT)[res].result(TIMEOUT)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tidelog_configs(capsys: pytest.CaptureFixture[str], bootstrap: str, *args: str) -> Ran:
    """``tidelog configs ARGS`` in this process (the CLI's own main; a python start per call costs seconds here)."""
    code = main(["configs", *args, "--bootstrap", bootstrap])
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def test_tidelog_configs_cli(tidelog: BrokerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """``tidelog configs alter|describe`` on a topic, the cluster default and one broker; refusals in one line."""
    bootstrap = tidelog.bootstrap
    topic = name("cfg-cli")
    create_topic(bootstrap, topic, 1)
    done = tidelog_configs(capsys, bootstrap, "alter", "--entity-type", "topics", "--entity-name", topic,
                           "--add-config", "retention.ms=3600000,cleanup.policy=[compact,delete]")
    assert done.returncode == 0, done.stderr
    shown = tidelog_configs(capsys, bootstrap, "describe", "--entity-type", "topics", "--entity-name", topic, "--json")
    assert shown.returncode == 0, shown.stderr
    assert {c["name"]: (c["value"], c["source"]) for c in json.loads(shown.stdout)} == {
        "retention.ms": ("3600000", "DYNAMIC_TOPIC_CONFIG"),
        "cleanup.policy": ("compact,delete", "DYNAMIC_TOPIC_CONFIG")}

    done = tidelog_configs(capsys, bootstrap, "alter", "--entity-type", "brokers", "--entity-default",
                           "--add-config", "log.retention.ms=86400000")
    assert done.returncode == 0, done.stderr
    try:
        shown = tidelog_configs(capsys, bootstrap, "describe", "--entity-type", "brokers", "--entity-name", "0",
                                "--all", "--json")
        entry = next(c for c in json.loads(shown.stdout) if c["name"] == "log.retention.ms")
        assert (entry["value"], entry["source"], entry["read_only"]) == (
            "86400000", "DYNAMIC_DEFAULT_BROKER_CONFIG", False)
        assert [s["source"] for s in entry["synonyms"]] == ["DYNAMIC_DEFAULT_BROKER_CONFIG", "DEFAULT_CONFIG"]
        text = tidelog_configs(capsys, bootstrap, "describe", "--entity-type", "brokers", "--entity-default").stdout
        assert text.splitlines()[1].split()[:3] == ["log.retention.ms", "86400000", "DYNAMIC_DEFAULT_BROKER_CONFIG"]
    finally:
        done = tidelog_configs(capsys, bootstrap, "alter", "--entity-type", "brokers", "--entity-default",
                               "--delete-config", "log.retention.ms")
        assert done.returncode == 0, done.stderr

    refused = tidelog_configs(capsys, bootstrap, "alter", "--entity-type", "brokers", "--entity-name", "0",
                              "--add-config", "num.partitions=3")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == ["tidelog configs: error: broker '0': INVALID_REQUEST: "
                                                   "Cannot update these configs dynamically: [num.partitions]"]
    bad = tidelog_configs(capsys, bootstrap, "alter", "--entity-type", "brokers", "--entity-name", "one",
                          "--add-config", "a=1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
