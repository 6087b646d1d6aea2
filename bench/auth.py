"""Cost of authentication and of TLS on the embedded broker.

Starts ``tidelog run`` with PLAINTEXT, SASL_PLAINTEXT, SASL_SSL and SSL (mTLS) listeners (certificates made in a
temporary directory) and measures, each for ``--seconds``:

1. new connections per second, one after another: SASL_PLAINTEXT with SCRAM-SHA-512 (4096 iterations) and with
   PLAIN, and SSL with a client certificate (TLS handshake + ApiVersions); with the broker's CPU per connection;
2. produce throughput of one confluent-kafka producer (1 KiB records, acks=all) over PLAINTEXT and over SASL_SSL.

    .venv/bin/python bench/auth.py --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import EmbeddedBroker, free_port, machine
from brokers.cli.client import Connection
from brokers.handlers.base import make
from brokers.security.scram import salted_password
from tests.e2e.security_fixtures import PASSWORD, USER, create_user, make_certs


async def _scram(conn: Connection) -> None:
    hs = conn.module(17, 1, 1)
    await conn.send(make(hs.SaslHandshakeRequest, mechanism="SCRAM-SHA-512"))
    au = conn.module(36, 1, 2)
    bare = f"n={USER},r={base64.b64encode(secrets.token_bytes(18)).decode()}"
    first = await conn.send(make(au.SaslAuthenticateRequest, auth_bytes=f"n,,{bare}".encode()))
    server_first = first.auth_bytes.decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = salted_password("SCRAM-SHA-512", PASSWORD, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    without_proof = f"c=biws,r={attrs['r']}"
    message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha512(client_key).digest(), message, "sha512").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    final = await conn.send(make(au.SaslAuthenticateRequest, auth_bytes=f"{without_proof},p={proof}".encode()))
    assert final.error_code == 0, final


async def _plain(conn: Connection) -> None:
    hs = conn.module(17, 1, 1)
    await conn.send(make(hs.SaslHandshakeRequest, mechanism="PLAIN"))
    au = conn.module(36, 1, 2)
    resp = await conn.send(make(au.SaslAuthenticateRequest, auth_bytes=f"\0{USER}\0{PASSWORD}".encode()))
    assert resp.error_code == 0, resp


async def _connections(port: int, how: str, seconds: float, tls: ssl.SSLContext | None) -> int:
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tls is None:
            conn = await Connection.open("127.0.0.1", port, request_timeout=30)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1")
            conn = Connection(reader, writer, f"127.0.0.1:{port}", "bench", 30)
            await conn._negotiate()  # the CLI client's ApiVersions, over this TLS stream
        try:
            if how == "scram":
                await _scram(conn)
            elif how == "plain":
                await _plain(conn)
        finally:
            await conn.close()
        n += 1
    return n


def _produce(conf: dict[str, str], seconds: float) -> float:
    from confluent_kafka import Producer

    producer = Producer({**conf, "acks": "all", "linger.ms": "5", "batch.size": "1000000"})
    value = os.urandom(1024)
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            producer.produce("bench-auth", value)
            sent += 1
        except BufferError:
            producer.poll(0.01)
    producer.flush(60)
    return sent * 1024 / (time.monotonic() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp) / "certs")
        plain, sasl, sasl_ssl, ssl_port = free_port(), free_port(), free_port(), free_port()
        broker = EmbeddedBroker(Path(tmp) / "data", port=plain, configs={
            "listeners": f"PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl},"
            f"SASL_SSL://127.0.0.1:{sasl_ssl},SSL://127.0.0.1:{ssl_port}",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512", "ssl.keystore.location": str(certs.keystore),
            "ssl.truststore.location": str(certs.ca), "ssl.client.auth": "required",
        }).start()
        try:
            create_user(broker.bootstrap)
            tls = ssl.create_default_context(cafile=str(certs.ca))
            tls.load_cert_chain(str(certs.client_cert), str(certs.client_key))
            print(f"machine: {machine()}; load before: {os.getloadavg()}")
            for name, port, how, ctx in (("PLAINTEXT (ApiVersions only)", plain, "none", None),
                                         ("SASL_PLAINTEXT SCRAM-SHA-512", sasl, "scram", None),
                                         ("SASL_PLAINTEXT PLAIN", sasl, "plain", None),
                                         ("SSL mTLS (handshake + ApiVersions)", ssl_port, "none", tls)):
                cpu = broker.cpu_seconds()
                n = asyncio.run(_connections(port, how, args.seconds, ctx))
                used = broker.cpu_seconds() - cpu
                print(f"{name:38s} {n / args.seconds:8.1f} connections/s  broker CPU {used / n * 1000:6.2f} ms each")
            base = {"bootstrap.servers": broker.bootstrap}
            secure = {"bootstrap.servers": f"127.0.0.1:{sasl_ssl}", "security.protocol": "SASL_SSL",
                      "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": USER, "sasl.password": PASSWORD,
                      "ssl.ca.location": str(certs.ca)}
            for name, conf in (("PLAINTEXT", base), ("SASL_SSL SCRAM-SHA-512", secure)):
                cpu = broker.cpu_seconds()
                mbs = _produce(conf, args.seconds)
                used = broker.cpu_seconds() - cpu
                print(f"produce 1 KiB acks=all over {name:24s} {mbs:7.1f} MB/s  broker CPU {used / args.seconds:.0%}")
            print(f"load after: {os.getloadavg()}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
