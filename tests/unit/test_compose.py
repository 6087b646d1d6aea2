"""compose/docker-compose.yml: the service set, the wiring, and every ``tidelog`` command line as the real
CLI parses and validates it (brokers/cli's parser; ``tidelog broker``'s build_config; the bookie's own
address checks), so a flag the CLI does not take, or a value it refuses, fails here rather than in a
container. When Debian's ``docker-compose`` is installed (``make system-deps``) the file is also checked
with ``docker-compose config``, which validates it against the compose schema without a Docker engine."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from brokers import cli
from brokers.cli import broker as cli_broker
from storage.bookie import cli as bookie_cli
from storage.objectstore import S3ObjectStore, open_object_store

yaml = pytest.importorskip("yaml")

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
BOOKIES = ["bookie1", "bookie2", "bookie3"]
BROKERS = ["broker1", "broker2", "broker3"]
SERVICES = {"etcd", "minio", "minio-init", *BOOKIES, *BROKERS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def parse(command: list[str]) -> argparse.Namespace:
    """A service's command line as ``tidelog`` parses it (argparse exits on an unknown flag: fail instead)."""
    assert command[0] == "tidelog", command
    assert all(isinstance(arg, str) for arg in command), f"every argument must be a string: {command}"
    try:
        return cli._parser().parse_args(command[1:])
    except SystemExit as e:
        pytest.fail(f"tidelog rejects {command}: exit {e.code}")


def test_the_service_set(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert "name" not in compose  # docker-compose 1.x rejects it; the project name is given with -p


def test_infrastructure_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5")
    assert "minio/minio:" in services["minio"]["image"]
    assert "minio/mc:" in services["minio-init"]["image"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mb --ignore-existing tidelog/tidelog" in " ".join(services["minio-init"]["entrypoint"])


def test_tidelog_services_build_from_the_compose_dockerfile(compose: dict[str, Any]) -> None:
    for name in BOOKIES + BROKERS:
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "compose/Dockerfile", name
        assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
        assert service["hostname"] == name


def test_only_bookies_and_brokers_run_tidelog(compose: dict[str, Any]) -> None:
    services = compose["services"].items()
    runs = {name for name, s in services if isinstance(s.get("command"), list) and s["command"][:1] == ["tidelog"]}
    assert runs == set(BOOKIES + BROKERS)


def test_bookie_command_lines_parse_and_validate(compose: dict[str, Any]) -> None:
    ids = set()
    for name in BOOKIES:
        args = parse(compose["services"][name]["command"])
        assert args.run is bookie_cli.run, name
        assert args.metadata == "etcd://etcd:2379"
        assert bookie_cli.parse_hostport(args.listen, "--listen") == ("0.0.0.0", 3181)
        assert bookie_cli.parse_hostport(args.advertised, "--advertised") == (name, 3181)  # reachable by name
        assert args.data_dir == "/data"
        ids.add(args.bookie_id)
    assert ids == set(BOOKIES)  # stable ids: a recreated container keeps its identity


def test_broker_command_lines_parse_and_validate(compose: dict[str, Any]) -> None:
    node_ids = set()
    for name in BROKERS:
        args = parse(compose["services"][name]["command"])
        assert args.run is cli_broker.run_command, name
        config, endpoints = cli_broker.build_config(args)  # the broker's own checks (ConfigError otherwise)
        assert endpoints == ["etcd://etcd:2379"]
        assert args.advertised == f"{name}:9092"
        node_ids.add(config.node_id)
        store = open_object_store(args.object_store)  # builds the client only; nothing is contacted
        assert isinstance(store, S3ObjectStore)
        assert (store.bucket, store.prefix) == ("tidelog", "")
    assert node_ids == {1, 2, 3}


def test_bookies_keep_separate_data_volumes(compose: dict[str, Any]) -> None:
    volumes = [compose["services"][name]["volumes"][0] for name in BOOKIES]
    assert all(volume.endswith(":/data") for volume in volumes)
    assert len({volume.split(":")[0] for volume in volumes}) == len(BOOKIES)
    assert {volume.split(":")[0] for volume in volumes} <= set(compose["volumes"])


def test_brokers_wait_for_their_dependencies(compose: dict[str, Any]) -> None:
    for name in BROKERS:
        service = compose["services"][name]
        depends = service["depends_on"]
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
        assert depends["etcd"]["condition"] == "service_healthy"
        assert set(BOOKIES) <= set(depends)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(service["environment"])


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (make system-deps)")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker-compose", "-p", "tidelog", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
