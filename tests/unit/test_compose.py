"""compose/: the service set, the wiring, and every ``tidelog`` command line as the real CLI parses and
validates it (brokers/cli's parser; ``tidelog broker``'s build_config; the bookie's own address checks), so a
flag the CLI does not take, or a value it refuses, fails here rather than in a container. The compose file
is also checked with Debian's ``docker-compose config`` (schema validation, no Docker engine needed),
compose/prometheus.yml with ``promtool check config`` and against the services it must scrape, and the
Grafana provisioning against the mounts and the dashboard. The same topology as local processes (etcd, an S3
server, three bookies, three brokers) is what ``tidelog dev-cluster`` starts in tests/cluster."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from brokers import cli, devcluster
from brokers.cli import broker as cli_broker
from storage.bookie import cli as bookie_cli
from storage.objectstore import S3ObjectStore, open_object_store

yaml = pytest.importorskip("yaml")

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
GRAFANA_DIR = COMPOSE_DIR / "grafana"
BOOKIES = ["bookie1", "bookie2", "bookie3"]
BROKERS = ["broker1", "broker2", "broker3"]
SERVICES = {"etcd", "minio", "minio-init", *BOOKIES, *BROKERS, "prometheus", "grafana"}


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


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port) for each ``HOST_IP:HOST_PORT:CONTAINER_PORT`` mapping."""
    ports = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = spec.split(":")
        ports[int(container_port)] = (host_ip, int(host_port))
    return ports


def test_the_service_set(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert "name" not in compose  # docker-compose 1.x rejects it; the project name is given with -p


def test_the_topology_is_the_dev_clusters(compose: dict[str, Any]) -> None:
    """Three bookies and three brokers, as ``tidelog dev-cluster`` starts by default (tests/cluster run it)."""
    parser = argparse.ArgumentParser()
    devcluster.add_parser(parser.add_subparsers())
    defaults = parser.parse_args(["dev-cluster"])
    assert (defaults.brokers, defaults.bookies) == (len(BROKERS), len(BOOKIES))


def test_infrastructure_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5")
    assert "minio/minio:" in services["minio"]["image"]
    assert "minio/mc:" in services["minio-init"]["image"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mb --ignore-existing tidelog/tidelog" in " ".join(services["minio-init"]["entrypoint"])
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        assert ":latest" not in service.get("image", ":pinned"), f"{name}: pin the image version"


def test_tidelog_services_build_from_the_compose_dockerfile(compose: dict[str, Any]) -> None:
    for name in BOOKIES + BROKERS:
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "compose/Dockerfile", name
        assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
        assert service["hostname"] == name


def test_the_image_is_multi_stage_without_test_tools() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2 and all(stage.endswith("-slim") for stage in stages), stages
    assert "COPY --from=build" in dockerfile
    assert "[test]" not in dockerfile.replace("not `.[test]`", "")  # the install is the base package only
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*")] == "*" and "!brokers/" in ignore  # context: only what the image copies


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
        assert bookie_cli.parse_hostport(args.admin, "--admin") == ("0.0.0.0", 9644)  # Prometheus scrapes it
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
        node_ids.add(config.node_id)
        store = open_object_store(config.object_store)  # --s3-* folded in; builds the client, contacts nothing
        assert isinstance(store, S3ObjectStore)
        assert (store.bucket, store.prefix) == ("tidelog", "")
        assert "endpoint=http://minio:9000" in config.object_store
        assert (config.admin_listen, config.host) == ("0.0.0.0:9644", "0.0.0.0")
    assert node_ids == {1, 2, 3}


def test_brokers_are_reachable_from_the_host_and_the_network(compose: dict[str, Any]) -> None:
    """One listener per broker serves both sides: it advertises ``brokerN:PORT`` (the compose network resolves
    the service name; the host, given the /etc/hosts line the header documents, resolves it to 127.0.0.1) and
    PORT is published on the host as the same number, so the advertised address works from either side."""
    header = COMPOSE_FILE.read_text(encoding="utf-8").split("services:")[0]
    assert "127.0.0.1 broker1 broker2 broker3" in header
    kafka_ports = set()
    for name in BROKERS:
        service = compose["services"][name]
        config, _ = cli_broker.build_config(parse(service["command"]))
        host, port = config.advertised
        assert host == name == service["hostname"]
        assert config.port == port, f"{name}: listen and advertise the same port, so the host mapping keeps it"
        assert published(service)[port] == ("127.0.0.1", port), name
        assert published(service)[9644][0] == "127.0.0.1", name  # admin HTTP for tidelog offload status
        kafka_ports.add(port)
    assert len(kafka_ports) == len(BROKERS)


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
        assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_prometheus_scrapes_every_broker_and_bookie(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in service["volumes"]
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        if job["job_name"].startswith("tidelog")
        for group in job["static_configs"]
        for target in group["targets"]
    }
    expected = set()
    for name in BOOKIES + BROKERS:
        args = parse(compose["services"][name]["command"])
        _, port = bookie_cli.parse_hostport(args.admin, "--admin")
        expected.add(f"{name}:{port}")
    assert targets == expected


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian's prometheus)")
def test_promtool_accepts_the_prometheus_config() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_is_provisioned_with_the_dashboard(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in service["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./grafana/dashboards"]
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text("utf-8"))
    (source,) = datasources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/tidelog.yml").read_text("utf-8"))
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == dashboards_dir
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    dashboard_file = GRAFANA_DIR / "dashboards" / Path(home).name
    if not dashboard_file.exists():
        pytest.skip(f"{dashboard_file} is not written yet")
    dashboard = json.loads(dashboard_file.read_text(encoding="utf-8"))
    uids = {
        ref.get("uid")
        for panel in dashboard.get("panels", [])
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]
        if isinstance(ref, dict)
    }
    # a panel names the provisioned datasource's uid, or a template variable the dashboard defines
    variables = {f"${{{v['name']}}}" for v in dashboard.get("templating", {}).get("list", [])}
    variables |= {f"${v['name']}" for v in dashboard.get("templating", {}).get("list", [])}
    assert uids <= {source["uid"], *variables}, uids


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (make system-deps)")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker-compose", "-p", "tidelog", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
