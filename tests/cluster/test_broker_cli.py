"""``tidelog broker`` refuses bad arguments and settings before connecting to anything: exit 2 and one line
naming the option or setting. A good command line against an etcd nobody runs exits 1 with one line."""

from __future__ import annotations

import pytest

from brokers import cli
from brokers.cli.broker import metadata_endpoints
from tests.etcd_server import free_port

GOOD = {
    "--metadata": "etcd://127.0.0.1:2379",
    "--object-store": "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
    "--listen": "127.0.0.1:0",
    "--advertised": "127.0.0.1:9092",
}


def _args(**changes: str | None) -> list[str]:
    values = {**GOOD, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    return [item for key, value in values.items() if value is not None for item in (key, value)]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (_args(metadata="127.0.0.1:2379"), "--metadata"),
        (_args(metadata="zookeeper://127.0.0.1:2181"), "--metadata"),
        (_args(metadata="etcd://127.0.0.1:2379,nope"), "--metadata"),
        (_args(metadata="etcd://127.0.0.1:0"), "--metadata"),
        (_args(object_store=""), "--object-store"),
        (_args(object_store="memory://"), "--object-store"),
        (_args(object_store="ftp://host/x"), "--object-store"),
        (_args(listen="nope"), "--listen"),
        (_args(listen="127.0.0.1:99999"), "--listen"),
        (_args(advertised="0.0.0.0:9092"), "--advertised"),
        (_args(advertised="127.0.0.1:0"), "--advertised"),
        (_args(advertised="no-port"), "--advertised"),
        ([*_args(), "--node-id", "-1"], "--node-id"),
        ([*_args(), "--node-id", "2147483648"], "--node-id"),
        ([*_args(), "--admin", "127.0.0.1:http"], "--admin"),
        ([*_args(), "--config", "no.such.setting=1"], "no.such.setting"),
        ([*_args(), "--config", "broker.session.timeout.ms=0"], "broker.session.timeout.ms"),
        ([*_args(), "--config", "ledger.ack.quorum=4"], "ledger.ack.quorum"),
        ([*_args(), "--config", "num.partitions=20", "--config", "max.partitions.per.topic=10"], "num.partitions"),
    ],
)
def test_bad_broker_arguments_exit_2_naming_them(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["broker", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tidelog broker: error:") and named in err, err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "args", [_args(metadata=None), _args(object_store=None), _args(advertised=None), [*_args(), "--node-id", "x"]]
)
def test_missing_or_unparsable_broker_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["broker", *args])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_several_etcd_endpoints_are_split() -> None:
    assert metadata_endpoints("etcd://10.0.0.1:2379,10.0.0.2:2380") == ["etcd://10.0.0.1:2379", "etcd://10.0.0.2:2380"]


def test_unreachable_etcd_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    nobody = free_port()
    code = cli.main(["broker", *_args(metadata=f"etcd://127.0.0.1:{nobody}")])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("tidelog broker: error:") and f"127.0.0.1:{nobody}" in err, err
