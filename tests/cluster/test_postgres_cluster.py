"""Issue 12, must-show 4: the cluster issue's must-shows 1 and 2 with the metadata on PostgreSQL.

One DevCluster started with ``metadata="postgres"`` (``tidelog dev-cluster --metadata postgres``: a local
PostgreSQL instead of etcd; brokers and bookies get ``--metadata postgresql://...``), shared by the module.
The checks are the etcd tests' own functions (tests/cluster/test_clients_cluster.py and
test_move_under_load.py), called on this cluster:

* must-show 1: a 12-partition topic and ``__consumer_offsets`` spread over the three brokers (max - min <= 1),
  and confluent-kafka, kafka-python, aiokafka, kafkajs and kcat each produce and read back byte-exact, each
  bootstrapping through one broker (the brokers in turn) and reading back through the next one too;
* must-show 2: a partition moves back and forth under a steady idempotent acks=all producer: nothing lost,
  nothing twice, offsets contiguous, pauses printed (10 moves here, 100 in the slow suite).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.devcluster import DevCluster, tidelog_command
from tests.cluster import test_clients_cluster as clients
from tests.cluster.harness import assert_no_tracebacks, print_logs, tidelog_json
from tests.cluster.test_clients_cluster import node_bin  # noqa: F401  (fixture)
from tests.cluster.test_move_under_load import move_back_and_forth
from tests.postgres_server import postgres_available

# Slow as a whole (a second dev cluster, 30-40 s): make test runs the metadata contract suite on PostgreSQL.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed (make system-deps)"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    # Not tmp_path: pytest's temp directories are private to root, and PostgreSQL runs as its own account.
    base = Path(tempfile.mkdtemp(prefix="tidelog-pg-cluster-"))
    base.chmod(0o755)
    dev = DevCluster(base / "cluster", brokers=3, bookies=3, metadata="postgres")
    try:
        dev.start()
        assert dev.metadata_url.startswith("postgresql://")
        try:
            yield dev
        except BaseException:
            print_logs(dev)
            raise
        dev.stop()
        assert_no_tracebacks(dev)
    finally:
        dev.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_partitions_spread_over_the_three_brokers(cluster: DevCluster) -> None:
    clients.test_partitions_spread_over_the_three_brokers(cluster)


def test_cluster_status_reads_the_bookies_from_postgres(cluster: DevCluster) -> None:
    status = tidelog_json("cluster", "status", "--bootstrap", cluster.bootstrap, "--metadata", cluster.metadata_url)
    assert [b["node_id"] for b in status["brokers"]] == [1, 2, 3]
    assert sorted(b["id"] for b in status["bookies"]) == ["bookie-1", "bookie-2", "bookie-3"]


def test_confluent_kafka(cluster: DevCluster) -> None:
    clients.test_confluent_kafka(cluster, 1)


def test_kafka_python(cluster: DevCluster) -> None:
    clients.test_kafka_python(cluster, 2)


@pytest.mark.asyncio
async def test_aiokafka(cluster: DevCluster) -> None:
    await clients.test_aiokafka(cluster, 3)


def test_kafkajs(cluster: DevCluster, node_bin: str, tmp_path: Path) -> None:  # noqa: F811
    clients.test_kafkajs(cluster, 1, node_bin, tmp_path)


needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")


@needs_kcat
def test_kcat(cluster: DevCluster, tmp_path: Path) -> None:
    clients.test_kcat(cluster, 2, tmp_path)


def test_ten_moves_under_a_steady_idempotent_producer(cluster: DevCluster) -> None:
    move_back_and_forth(cluster, "pg-moving-10", 10)


@pytest.mark.slow
def test_hundred_moves_under_a_steady_idempotent_producer(cluster: DevCluster) -> None:
    move_back_and_forth(cluster, "pg-moving-100", 100)


def test_dev_cluster_parser_takes_metadata_postgres() -> None:
    from brokers.cli import _parser

    args = _parser().parse_args(["dev-cluster", "--metadata", "postgres", "--brokers", "1"])
    assert (args.metadata, args.brokers) == ("postgres", 1)
    with pytest.raises(SystemExit):
        _parser().parse_args(["dev-cluster", "--metadata", "zookeeper"])


@needs_kcat
@pytest.mark.slow  # a second cluster beside the module's: ~10 s on a quiet machine, a minute on a busy one
def test_dev_cluster_command_on_postgres_serves_and_stops_on_ctrl_c() -> None:
    """``tidelog dev-cluster --metadata postgres`` (one broker, three bookies): prints the PostgreSQL URL and the
    bootstrap, serves kcat, and Ctrl-C stops everything it started, PostgreSQL included."""
    base = Path(tempfile.mkdtemp(prefix="tidelog-pg-devcli-"))
    base.chmod(0o755)
    out_path, cluster_dir = base / "out", base / "dc"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [*tidelog_command(), "dev-cluster", "--metadata", "postgres", "--brokers", "1", "--bookies", "3",
             "--dir", str(cluster_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        text = ""
        while "bootstrap: " not in text and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            text = out_path.read_text(errors="replace")
        assert "bootstrap: " in text, f"exit {proc.poll()}:\n{text[-3000:]}"
        assert "postgres: postgresql://" in text, text
        bootstrap = text.split("bootstrap: ", 1)[1].split()[0]
        postmaster = int((cluster_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        done = subprocess.run(
            ["kcat", "-b", bootstrap, "-P", "-t", "pgcli", "-p", "0", "-m", "30"], input="a\nb\n", text=True,
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = subprocess.run(
            ["kcat", "-b", bootstrap, "-C", "-t", "pgcli", "-p", "0", "-o", "beginning", "-e", "-q", "-m", "30"],
            text=True, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.stdout.splitlines() == ["a", "b"], done.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for _ in range(100):  # the server was stopped before the command returned; allow the reaping
            if not Path(f"/proc/{postmaster}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{postmaster}").exists(), "PostgreSQL outlived tidelog dev-cluster"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
