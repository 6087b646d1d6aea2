"""Certificates, users and a broker with every kind of listener, for the security tests (one helper module).

Certificates are made with ``cryptography`` into tmp_path (a CA, the broker's certificate for 127.0.0.1, a
client certificate ``CN=alice,OU=eng`` signed by the CA and one signed by another, untrusted, CA); nothing
is committed. Users are created over the PLAINTEXT listener with AdminClient.alter_user_scram_credentials.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .broker_process import BrokerProcess, free_port

PASSWORD = "alice-secret"  # noqa: S105 - a test user's password
USER = "alice"


def _name(**parts: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts.items()])


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool = False, ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate (clients' and the broker's truststore)
    keystore: Path  # the broker's key + certificate
    client_cert: Path
    client_key: Path
    client_keystore: Path  # client key + certificate in one file (kafkajs, aiokafka)
    rogue_cert: Path  # CN=mallory, signed by a CA the broker does not trust
    rogue_key: Path


def make_certs(where: Path, server_cn: str = "broker") -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(CN="tidelog-test-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(_name(CN=server_cn), server_key, ca_name, ca_key, ip="127.0.0.1")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert(_name(OU="eng", CN="alice"), client_key, ca_name, ca_key)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca_name = _name(CN="rogue-ca")
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert(_name(CN="mallory"), rogue_key, rogue_ca_name, rogue_ca_key)
    files = {
        "ca.pem": _pem(ca),
        "broker.pem": _key_pem(server_key) + _pem(server),
        "client.pem": _pem(client),
        "client.key": _key_pem(client_key),
        "client-keystore.pem": _key_pem(client_key) + _pem(client),
        "rogue.pem": _pem(rogue),
        "rogue.key": _key_pem(rogue_key),
    }
    for name, data in files.items():
        (where / name).write_bytes(data)
        (where / name).chmod(0o600)
    return Certs(where / "ca.pem", where / "broker.pem", where / "client.pem", where / "client.key",
                 where / "client-keystore.pem", where / "rogue.pem", where / "rogue.key")


@dataclass(frozen=True)
class SecureBroker:
    broker: BrokerProcess
    certs: Certs
    plaintext: int
    sasl_ssl: int
    ssl: int
    sasl_plaintext: int

    def address(self, port: int) -> str:
        return f"127.0.0.1:{port}"


def start_secure_broker(tmp_path: Path, reauth_ms: int = 0) -> SecureBroker:
    """A broker with PLAINTEXT (for admin), SASL_SSL, SSL (mTLS, client auth required) and SASL_PLAINTEXT."""
    certs = make_certs(tmp_path / "certs")
    plain, sasl_ssl, ssl_port, sasl_plain = free_port(), free_port(), free_port(), free_port()
    configs = {
        "listeners": f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{sasl_ssl},"
        f"SSL://127.0.0.1:{ssl_port},SASL_PLAINTEXT://127.0.0.1:{sasl_plain}",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "ssl.keystore.location": str(certs.keystore),
        "ssl.truststore.location": str(certs.ca),
        "ssl.client.auth": "required",
        "connections.max.reauth.ms": str(reauth_ms),
    }
    broker = BrokerProcess(tmp_path / "data", configs=configs, port=plain).start()
    return SecureBroker(broker, certs, plain, sasl_ssl, ssl_port, sasl_plain)


def create_user(bootstrap: str, user: str = USER, password: str = PASSWORD,
                mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")) -> None:
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin = AdminClient({"bootstrap.servers": bootstrap})
    upserts = [
        UserScramCredentialUpsertion(user, ScramCredentialInfo(getattr(ScramMechanism, m.replace("-", "_")), 4096),
                                     password.encode())
        for m in mechanisms
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """One secure broker per test module, with the user alice (both SCRAM mechanisms) created."""
    sb = start_secure_broker(tmp_path_factory.mktemp("secure"))
    try:
        create_user(sb.broker.bootstrap)
        yield sb
    finally:
        sb.broker.close()
        log = sb.broker.log_text()
        assert PASSWORD not in log, "a password reached the broker's log"
        assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:3000]
