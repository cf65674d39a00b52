"""The emulated API server behind HTTPS and a login, as a real API server is.

``fluxbee operator`` and ``fluxbee admin --backend kubernetes`` must find the server, its CA and
their credentials by themselves (kubeconfig or service account).  This wraps the emulator in an
HTTPS listener with a CA made by the test, and answers 401 to any request that carries neither
the expected bearer token nor a client certificate signed by that CA, so a test that sees its
subprocess reconcile has proven the login was used.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fluxbee_emulator import FluxEmulator, declare_fluxbee_resources


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, the server's certificate (127.0.0.1) and a client's."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @staticmethod
    def b64(path: Path) -> str:
        """Kubeconfig ``*-data`` form of a PEM file."""
        return base64.b64encode(path.read_bytes()).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fluxbee-test-ca")).issuer_name(_name("fluxbee-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("kube-apiserver", ExtendedKeyUsageOID.SERVER_AUTH, True)
    client, client_key = leaf("fluxbee-test-user", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key",
              directory / "client.crt", directory / "client.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


@dataclass
class SecureApi:
    """The running server: its URL, what it accepts, and what it refused."""

    url: str
    port: int
    token: str
    pki: Pki
    emulator: FluxEmulator
    refused: list[str] = field(default_factory=list)
    """``METHOD path`` of every request answered 401."""
    logins: dict[str, int] = field(default_factory=dict)
    """Accepted requests by how they logged in: ``token`` or ``certificate``."""

    def client_ssl(self) -> ssl.SSLContext:
        """What the test's own client (``kubectl``) trusts and presents."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return ctx

    def kubeconfig(self, path: Path, *, user: dict[str, Any], cluster: dict[str, Any] | None = None,
                   namespace: str | None = None) -> Path:
        """Write a one-context kubeconfig for this server (JSON is YAML)."""
        context: dict[str, Any] = {"cluster": "test", "user": "tester"}
        if namespace:
            context["namespace"] = namespace
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": cluster or {
                "server": self.url, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [{"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}},
                         {"name": "test", "context": context}],
        }
        path.write_text(json.dumps(doc))
        return path


@asynccontextmanager
async def secure_api(directory: Path) -> AsyncIterator[SecureApi]:
    """The fixed-up emulator on 127.0.0.1 over HTTPS, requiring a token or a client certificate."""
    pki = make_pki(directory)
    token = secrets.token_hex(16)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server_ssl.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_ssl.verify_mode = ssl.CERT_OPTIONAL  # no certificate: a token must do (401 otherwise)
    emulator = FluxEmulator()
    declare_fluxbee_resources(emulator)
    api: SecureApi | None = None

    async def handle(request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        assert api is not None
        how = None
        if request.headers.get("Authorization") == f"Bearer {token}":
            how = "token"
        elif request.transport is not None and request.transport.get_extra_info("peercert"):
            how = "certificate"  # verified against the CA by the handshake
        if how is None:
            api.refused.append(f"{request.method} {request.path}")
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Unauthorized",
                 "message": "Unauthorized", "code": 401}, status=401)
        api.logins[how] = api.logins.get(how, 0) + 1
        return await emulator(request)

    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(handle, handler_cancellation=True),
                                       shutdown_timeout=1.0)
    async with emulator:
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
            await site.start()
            port = int(runner.addresses[0][1])
            api = SecureApi(url=f"https://127.0.0.1:{port}", port=port, token=token, pki=pki, emulator=emulator)
            yield api
        finally:
            await runner.cleanup()
