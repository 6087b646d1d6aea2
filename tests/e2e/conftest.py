"""Fixtures for the end-to-end suite: the real ``tidelog run`` subprocess on a free 127.0.0.1 port.

* ``broker``          — function-scoped, fresh data dir, default configs.
* ``module_broker``   — one broker per test module (tests must use distinct topic names).
* ``broker_factory``  — function-scoped factory: ``broker_factory(configs={...})`` for custom configs;
                        every broker it made is stopped at teardown.
* ``topic_factory``   — ``topic_factory(bootstrap, partitions=3) -> name`` (created via AdminClient).
* ``secure_broker``   — module-scoped broker with PLAINTEXT, SASL_SSL, SSL (mTLS) and SASL_PLAINTEXT listeners
                        and a SCRAM user (tests/e2e/security_fixtures.py).

At teardown a test fails if its broker logged a Python traceback (set ``BROKER_TRACEBACKS_OK = True``
in a module that provokes error paths on purpose), and a failed test's report carries the broker's output
(``TIDELOG_E2E_SHOW_LOGS=1`` shows it always).
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.moto_server import MotoServer

from .broker_process import BrokerProcess
from .helpers import create_topic
from .security_fixtures import secure_broker  # noqa: F401 - the security tests' module fixture

NODE_DIR = Path(__file__).parent / "node"


def _finish(broker: BrokerProcess, request: pytest.FixtureRequest) -> None:
    """Stop the broker; attach its output to a failed test's report; and fail the test if the broker
    logged a traceback (an unexpected exception path) — except in modules that set
    ``BROKER_TRACEBACKS_OK = True`` (the bad-input tests provoke error paths on purpose)."""
    broker.close()
    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    if failed or os.environ.get("TIDELOG_E2E_SHOW_LOGS"):
        print(f"\n--- tidelog output ({broker.log_path}) ---\n{broker.log_tail(200)}")
    log = broker.log_text()
    if "Traceback" in log and not failed and not getattr(request.module, "BROKER_TRACEBACKS_OK", False):
        i = log.index("Traceback")
        pytest.fail(f"the broker logged a traceback ({broker.log_path}):\n{log[max(0, i - 300) : i + 3000]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data")
    try:
        yield b.start()
    finally:
        _finish(b, request)


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("tidelog") / "data")
    try:
        yield b.start()
    finally:
        _finish(b, request)


@pytest.fixture
def broker_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., BrokerProcess]]:
    made: list[BrokerProcess] = []
    counter = itertools.count()

    def make(configs: dict[str, str] | None = None, start: bool = True) -> BrokerProcess:
        b = BrokerProcess(tmp_path / f"data{next(counter)}", configs=configs)
        made.append(b)
        return b.start() if start else b

    try:
        yield make
    finally:
        for b in made:
            _finish(b, request)


@pytest.fixture
def finish() -> Iterator[list[BrokerProcess]]:
    """Brokers to stop at teardown (their output is shown when the test fails); a broker that logged a
    traceback fails the test."""
    brokers: list[BrokerProcess] = []
    yield brokers
    for broker in brokers:
        broker.close()
        print(f"--- tidelog output ({broker.log_path}) ---\n{broker.log_tail(200)}")
        assert "Traceback" not in broker.log_text(), broker.log_tail(200)


@pytest.fixture
def topic_factory() -> Callable[..., str]:
    def make(bootstrap: str, partitions: int = 3, prefix: str = "e2e", configs: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topic(bootstrap, name, partitions, configs)
        return name

    return make


@pytest.fixture(scope="session")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (`make system-deps` installs it)")
    return path


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed (`make system-deps` installs it)")
    if not (NODE_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail(f"kafkajs is not installed in {NODE_DIR} (`make node-deps` installs it)")
    return path


@pytest.fixture(scope="module")
def moto(request: pytest.FixtureRequest) -> Iterator[MotoServer]:
    """A moto S3 server (real HTTP on 127.0.0.1) per test module, with the bucket the module names ``BUCKET``."""
    with MotoServer() as server:
        server.create_bucket(request.module.BUCKET)
        yield server
