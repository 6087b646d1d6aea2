"""kafkajs over SASL_SSL (SCRAM-SHA-512, PLAIN) and mTLS; a wrong password fails with
KafkaJSSASLAuthenticationError, an untrusted certificate is refused (tests/e2e/node/security.js)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from .conftest import NODE_DIR
from .security_fixtures import PASSWORD, USER, SecureBroker


def _run(node: str, tmp_path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / f"cfg-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"topic": f"sec-js-{uuid.uuid4().hex[:8]}", **cfg}))
    res = subprocess.run([node, str(NODE_DIR / "security.js"), str(path)], capture_output=True, text=True,
                         timeout=120, cwd=NODE_DIR, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def _sasl(sb: SecureBroker, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {"brokers": [sb.address(sb.sasl_ssl)], "ssl": {"ca": str(sb.certs.ca)},
            "sasl": {"mechanism": mechanism, "username": USER, "password": password}}


def test_scram_sha_512(secure_broker: SecureBroker, node: str, tmp_path: Path) -> None:
    assert _run(node, tmp_path, _sasl(secure_broker, "scram-sha-512")) == {"ok": True}


def test_plain(secure_broker: SecureBroker, node: str, tmp_path: Path) -> None:
    assert _run(node, tmp_path, _sasl(secure_broker, "plain")) == {"ok": True}


def test_mtls(secure_broker: SecureBroker, node: str, tmp_path: Path) -> None:
    certs = secure_broker.certs
    cfg = {"brokers": [secure_broker.address(secure_broker.ssl)],
           "ssl": {"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)}}
    assert _run(node, tmp_path, cfg) == {"ok": True}


def test_wrong_password(secure_broker: SecureBroker, node: str, tmp_path: Path) -> None:
    result = _run(node, tmp_path, _sasl(secure_broker, "scram-sha-512", "wrong"))
    assert result["ok"] is False
    assert result["error"] == "KafkaJSSASLAuthenticationError", result


def test_untrusted_certificate(secure_broker: SecureBroker, node: str, tmp_path: Path) -> None:
    certs = secure_broker.certs
    cfg = {"brokers": [secure_broker.address(secure_broker.ssl)],
           "ssl": {"ca": str(certs.ca), "cert": str(certs.rogue_cert), "key": str(certs.rogue_key)}}
    result = _run(node, tmp_path, cfg)
    assert result["ok"] is False
    assert result["error"] in ("KafkaJSConnectionError", "KafkaJSNumberOfRetriesExceeded",
                               "KafkaJSNonRetriableError"), result
