"""Bad input to every ``tidelog`` subcommand: one line ``tidelog[ SUBCOMMAND]: error: ...`` on stderr, exit 2,
no traceback; an address in use is bad input too, found before anything is created; and a ``tidelog run``
that fails to start leaves the data directory as it found it (issue 12: "a broker that fails to start says why
in one line, exits 2 for bad input, and leaves no half-made data directory").

Most cases call the entry point (brokers.cli.main) in this process, since they fail before any I/O; the
address-in-use and data-directory cases also run the real command as a process.
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from brokers.cli import main


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def tidelog(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "brokers.cli", "--log-level", "WARNING", *args], capture_output=True, text=True,
        timeout=60, check=False,
    )
    return done.returncode, done.stdout, done.stderr


def assert_one_line(code: int, err: str, expected_code: int = 2) -> str:
    lines = err.strip().splitlines()
    assert code == expected_code, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("tidelog") and ": error: " in lines[0], err
    assert "Traceback" not in err and "Errno" not in err and "invalid literal" not in err, err
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A 127.0.0.1 port something is listening on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_version() -> None:
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"tidelog {metadata.version('tidelog')}"


BAD_INPUT = [
    ("nosuch",),
    ("run", "--bogus"),
    ("run", "--listen", "127.0.0.1:99999"),
    ("run", "--listen", "nowhere"),
    ("run", "--node-id", "x"),
    ("run", "-c", "num.partitions=abc"),
    ("run", "-c", "no.such.config=1"),
    ("run", "-c", "offload.enable=maybe"),
    ("run", "--bookies", "3", "-c", "ledger.ensemble.size=5"),
    ("broker", "--metadata", "nope", "--object-store", "/tmp/x", "--advertised", "127.0.0.1:1"),
    ("broker", "--metadata", "etcd://127.0.0.1:2379", "--object-store", "/tmp/x", "--advertised", "0.0.0.0:9092"),
    ("bookie", "--listen", "x", "--data-dir", "/nonexistent/bookie"),
    ("dev-cluster", "--brokers", "x"),
    ("topics", "create"),
    ("topics", "create", "t", "--partitions", "0"),
    ("topics", "list", "--bootstrap", "nohost"),
    ("topics", "--timeout", "-1", "list"),
    ("produce", "t", "--acks", "0"),
    ("produce", "t", "--count", "many"),
    ("produce", "t", "--value", "x", "--count", "3"),
    ("consume", "t", "--offset", "x"),
    ("consume", "t", "-p", "-1"),
    ("consume", "t", "--from-beginning", "--offset", "3"),
    ("groups", "list", "--timeout", "soon"),
    ("groups", "reset-offsets", "g", "--all-topics"),
    ("offload", "status", "--admin", "x"),
    ("partitions", "move", "notatopicpartition", "--to", "1"),
    ("cluster", "status", "--bootstrap", "a:b"),
    ("verify", "run", "--bogus"),
]


@pytest.mark.parametrize("argv", BAD_INPUT, ids=[" ".join(a) for a in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv: tuple[str, ...], tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = [*argv, "--data-dir", str(data)] if argv[0] == "run" and "--bogus" not in argv else list(argv)
    code, _, err = cli(*args)
    assert_one_line(code, err)
    assert not data.exists()


def test_address_in_use_is_bad_input_and_creates_nothing(busy_port: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _, err = tidelog("run", "--listen", f"127.0.0.1:{busy_port}", "--data-dir", str(data))  # a real process
    line = assert_one_line(code, err)
    assert line == f"tidelog: error: --listen 127.0.0.1:{busy_port}: address already in use"
    assert not data.exists()
    code, _, err = cli("run", "--listen", "127.0.0.1:0", "--admin", f"127.0.0.1:{busy_port}", "--data-dir", str(data))
    assert "--admin" in assert_one_line(code, err) and not data.exists()
    code, _, err = cli("bookie", "--listen", f"127.0.0.1:{busy_port}", "--data-dir", str(data), "--metadata", "none")
    assert "address already in use" in assert_one_line(code, err) and not data.exists()
    code, _, err = cli("broker", "--metadata", "etcd://127.0.0.1:1", "--object-store", str(tmp_path / "objects"),
                       "--listen", f"127.0.0.1:{busy_port}", "--advertised", f"127.0.0.1:{busy_port}")
    assert "address already in use" in assert_one_line(code, err)


def test_failed_start_leaves_the_data_directory_as_it_was(tmp_path: Path) -> None:
    # the object store URL is checked after the metadata directory was made: the failure is past the first mkdir
    fresh = tmp_path / "fresh"
    code, _, err = tidelog("run", "--listen", "127.0.0.1:0", "--object-store", "bogus://x", "--data-dir", str(fresh))
    assert "--object-store" in assert_one_line(code, err)
    assert not fresh.exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _, err = cli("run", "--listen", "127.0.0.1:0", "--object-store", "bogus://x", "--data-dir", str(kept))
    assert_one_line(code, err)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"
