"""``tidelog run`` refuses bad arguments and settings before touching anything: exit 2 and one line naming
the option or setting (no data directory is created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers import cli


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--listen", "nope"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--advertised", "host-without-port"], "--advertised"),
        (["--node-id", "-1"], "--node-id"),
        (["--node-id", "2147483648"], "--node-id"),
        (["--node-id", "1099511627776"], "--node-id"),
        (["--config", "message.max.bytes=1099511627776"], "message.max.bytes"),
        (["--config", "socket.request.max.bytes=2147483648"], "socket.request.max.bytes"),
        (["--config", "ledger.rollover.ms=9223372036854775808"], "ledger.rollover.ms"),
        (["--config", "max.topics=0"], "max.topics"),
        (["--config", "num.partitions=20", "--config", "max.partitions.per.topic=10"], "max.partitions.per.topic"),
        (["--config", "max.partitions.per.broker=10"], "max.partitions.per.broker"),
        (["--bookies", "17"], "--bookies"),
        (["--admin", "127.0.0.1:http"], "--admin"),
        (["--config", "no-equals-sign"], "no-equals-sign"),
        (["--config", "no.such.setting=1"], "no.such.setting"),
        (["--config", "ledger.rollover.bytes=0"], "ledger.rollover.bytes"),
        (["--config", "ledger.rollover.bytes=5000000000"], "ledger.rollover.bytes"),
        (["--config", "offload.enable=maybe"], "offload.enable"),
        (["--config", "offload.bookie.high.water.bytes=-2"], "offload.bookie.high.water.bytes"),
        (["--config", "admin.listen=:x"], "admin.listen"),
        (["--config", "ledger.ensemble.size=3"], "ledger.ensemble.size"),
        (["--config", "ledger.placement=random"], "ledger.placement"),
    ],
)
def test_bad_run_settings_exit_2_naming_them(
    args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert cli.main(["run", "--data-dir", str(data), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tidelog: error:") and named in err, err
    assert len(err.splitlines()) == 1, err
    assert not data.exists()


@pytest.mark.parametrize("args", [["--node-id", "abc"], ["--bookies"], ["--no-such-option"]])
def test_unparsable_run_arguments_exit_2(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--data-dir", str(tmp_path / "data"), *args])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
