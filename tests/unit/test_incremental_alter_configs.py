"""IncrementalAlterConfigs (brokers/handlers/incremental_alter_configs.py) on an in-process broker: each
operation, validation as CreateTopics validates, per-resource errors, validate-only, and that the change is
what DescribeConfigs then reports. ``tidelog topics alter --config`` over real sockets: tests/e2e/test_cli_topics.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.handlers import describe_configs, incremental_alter_configs
from tests.unit.test_admin_handlers import broker, call, rq  # noqa: F401  (fixture)

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
TOPIC, BROKER = 2, 4
pytestmark = pytest.mark.asyncio


async def alter(b: Broker, version: int, *resources: tuple[int, str, list[tuple[str, int, str | None]]],
                validate_only: bool = False) -> list[tuple[str, ErrorCode, str | None]]:
    m = rq(incremental_alter_configs, version)
    request = m.IncrementalAlterConfigsRequest(
        validate_only=validate_only,
        resources=tuple(
            m.AlterConfigsResource(resource_type=kind, resource_name=name, configs=tuple(
                m.AlterableConfig(name=k, config_operation=op, value=v) for k, op, v in ops))
            for kind, name, ops in resources
        ),
    )
    resp = await call(b, incremental_alter_configs, version, request)
    return [(r.resource_name, r.error_code, r.error_message) for r in resp.responses]


async def described(b: Broker, topic: str) -> dict[str, tuple[Any, int]]:
    m = rq(describe_configs, 4)
    request = m.DescribeConfigsRequest(resources=(
        m.DescribeConfigsResource(resource_type=TOPIC, resource_name=topic, configuration_keys=None),))
    resp = await call(b, describe_configs, 4, request)
    return {c.name: (c.value, c.config_source) for c in resp.results[0].configs}


@pytest.mark.parametrize("version", [0, 1])
async def test_set_delete_append_subtract(broker: Broker, version: int) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {"retention.ms": "1000"})
    got = await alter(broker, version, (TOPIC, "t", [
        ("max.message.bytes", SET, "2000"), ("retention.ms", DELETE, None), ("cleanup.policy", APPEND, "compact"),
    ]))
    assert got == [("t", ErrorCode.none, None)]
    assert broker.topics.get("t").configs == {  # type: ignore[union-attr]
        "max.message.bytes": "2000", "cleanup.policy": "compact"}
    configs = await described(broker, "t")
    assert configs["max.message.bytes"] == ("2000", 1)  # DYNAMIC_TOPIC_CONFIG
    assert configs["retention.ms"][1] == 5  # back to DEFAULT_CONFIG
    assert (await alter(broker, version, (TOPIC, "t", [("cleanup.policy", APPEND, "delete")])))[0][1] == ErrorCode.none
    assert broker.topics.get("t").configs["cleanup.policy"] == "compact,delete"  # type: ignore[union-attr]
    await alter(broker, version, (TOPIC, "t", [("cleanup.policy", SUBTRACT, "compact")]))
    assert broker.topics.get("t").configs["cleanup.policy"] == "delete"  # type: ignore[union-attr]


async def test_refusals_are_per_resource_and_change_nothing(broker: Broker) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {})
    await broker.topics.create("u", 1, 1, {})
    got = await alter(
        broker, 1,
        (TOPIC, "t", [("bogus.config", SET, "1")]),
        (TOPIC, "u", [("max.message.bytes", SET, "lots")]),
        (TOPIC, "missing", [("retention.ms", SET, "1")]),
        (BROKER, "0", [("num.partitions", SET, "3")]),
        (TOPIC, "u", [("retention.ms", SET, "1")]),  # u named twice: both refused
    )
    codes = [(name, code) for name, code, _ in got]
    assert codes == [
        ("t", ErrorCode.invalid_config), ("u", ErrorCode.invalid_request),
        ("missing", ErrorCode.unknown_topic_or_partition), ("0", ErrorCode.invalid_request),
        ("u", ErrorCode.invalid_request),
    ]
    assert all(message for _, _, message in got)
    got = await alter(broker, 1, (TOPIC, "u", [("max.message.bytes", SET, "lots")]))
    assert got[0][1] == ErrorCode.invalid_config and "max.message.bytes" in (got[0][2] or "")
    got = await alter(broker, 1, (TOPIC, "u", [("retention.ms", SET, "1"), ("retention.ms", DELETE, None)]))
    assert got[0][1] == ErrorCode.invalid_request  # a key twice in one resource
    got = await alter(broker, 1, (TOPIC, "u", [("retention.ms", APPEND, "1")]))
    assert got[0][1] == ErrorCode.invalid_config  # append only for list configs
    assert broker.topics.get("t").configs == {} and broker.topics.get("u").configs == {}  # type: ignore[union-attr]


async def test_validate_only_changes_nothing(broker: Broker) -> None:  # noqa: F811
    await broker.topics.create("t", 1, 1, {})
    got = await alter(broker, 1, (TOPIC, "t", [("retention.ms", SET, "5")]), validate_only=True)
    assert got == [("t", ErrorCode.none, None)]
    assert broker.topics.get("t").configs == {}  # type: ignore[union-attr]
