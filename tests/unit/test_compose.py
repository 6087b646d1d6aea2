"""compose/docker-compose.yml: the service set, wiring, and the ``tidelog`` command lines it relies on.

The ``tidelog bookie`` and ``tidelog broker`` subcommands land later; the flags listed here are the ones
the compose file needs from them, so the CLI work can check itself against this test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage.objectstore import S3ObjectStore, open_object_store

yaml = pytest.importorskip("yaml")

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
BOOKIES = ["bookie1", "bookie2", "bookie3"]
BROKERS = ["broker1", "broker2"]
SERVICES = {"etcd", "minio", "minio-init", *BOOKIES, *BROKERS}
# subcommand -> flags it takes (each with one value)
TIDELOG_FLAGS = {
    "bookie": {"--data-dir", "--listen", "--metadata"},
    "broker": {"--listen", "--advertised", "--metadata", "--object-store"},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _flags(command: list[str]) -> dict[str, str]:
    """``["tidelog", sub, "--a", "1", "--b", "2"]`` -> ``{"--a": "1", "--b": "2"}`` (flags and values alternate)."""
    args = command[2:]
    assert len(args) % 2 == 0, f"every flag takes one value: {command}"
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert all(flag.startswith("--") for flag in pairs), command
    assert len(pairs) == len(args) // 2, f"repeated flag in {command}"
    return pairs


def test_the_service_set(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


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
        assert service["hostname"] == name  # so a bookie's own host name resolves for its peers


def test_every_tidelog_command_uses_known_flags(compose: dict[str, Any]) -> None:
    commands = {
        name: service["command"]
        for name, service in compose["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["tidelog"]
    }
    assert set(commands) == set(BOOKIES + BROKERS)
    for name, command in commands.items():
        subcommand = command[1]
        assert subcommand in TIDELOG_FLAGS, f"{name}: unknown subcommand {subcommand!r}"
        flags = _flags(command)
        assert set(flags) == TIDELOG_FLAGS[subcommand], f"{name}: {sorted(flags)}"
        assert flags["--metadata"] == "etcd://etcd:2379", name


def test_bookies_keep_separate_data_volumes(compose: dict[str, Any]) -> None:
    volumes = [compose["services"][name]["volumes"][0] for name in BOOKIES]
    assert all(volume.endswith(":/data") for volume in volumes)
    assert len({volume.split(":")[0] for volume in volumes}) == len(BOOKIES)
    assert {volume.split(":")[0] for volume in volumes} <= set(compose["volumes"])
    for name in BOOKIES:
        assert _flags(compose["services"][name]["command"])["--data-dir"] == "/data"


def test_brokers_advertise_themselves_and_wait_for_their_dependencies(compose: dict[str, Any]) -> None:
    for name in BROKERS:
        service = compose["services"][name]
        assert _flags(service["command"])["--advertised"] == f"{name}:9092"
        depends = service["depends_on"]
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
        assert depends["etcd"]["condition"] == "service_healthy"
        assert set(BOOKIES) <= set(depends)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(service["environment"])


def test_broker_object_store_url_opens(compose: dict[str, Any]) -> None:
    url = _flags(compose["services"]["broker1"]["command"])["--object-store"]
    store = open_object_store(url)  # builds the client only; nothing is contacted
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix) == ("tidelog", "")
