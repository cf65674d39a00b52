"""Certificates for router links: a hive CA, one certificate per hive, the hive id read back.

Every router of a hive presents the hive's certificate on its links (mesh and gateway alike), and
the peer believes the hive id the certificate names, never the one a HELLO claims.  The hive id
travels in a URI subject alternative name, ``fluxbee://hive/<hive-id>``, because SANs are what TLS
stacks verify and what tools show; the subject CN repeats it for people reading ``openssl x509``.
Keys are EC P-256 (small, fast handshakes, accepted everywhere TLS 1.3 is).  Both key usages
(``serverAuth`` and ``clientAuth``) are set: a router dials some links and accepts others with the
same certificate.

The functions turn bytes into bytes; only :func:`write_pem_pair` touches the disk (atomically, keys
``0600``), for ``fluxbee wan`` and ``fluxbee up``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HIVE_URI_PREFIX: Final = "fluxbee://hive/"
HIVE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
"""The hive id grammar (the same as the Hive resource's): it is also a URI path segment."""


class CertificateError(ValueError):
    """A certificate or key that cannot be used, with the reason."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days <= 0:
        raise CertificateError(f"validity must be a positive number of days, got {days!r}")


def make_ca(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA that may sign hive certificates (and nothing below them): (cert PEM, key PEM)."""
    if not common_name or not common_name.strip():
        raise CertificateError("the CA needs a non-empty common name")
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as err:
        raise CertificateError(f"the CA certificate is not a PEM certificate: {err}") from err
    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"the CA key is not an unencrypted PEM private key: {err}") from err
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the CA key must be an EC key, got {type(ca_key).__name__}")
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateError("the CA key does not belong to the CA certificate")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateError("the CA certificate is not a CA (basicConstraints ca=TRUE missing)")
    return ca_cert, ca_key


def issue_hive_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, hive_id: str, *,
    dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (), days: int = 365,
) -> tuple[bytes, bytes]:
    """A certificate for ``hive_id`` signed by the CA: (cert PEM, key PEM).

    Subject CN = the hive id; SANs: the URI ``fluxbee://hive/<hive-id>``, then ``dns_names`` and
    ``ip_addresses`` (for peers that also check the host name they dialled); EKU serverAuth +
    clientAuth.  Bad input (hive id, IP text, a CA that is not one) raises :class:`CertificateError`.
    """
    if not isinstance(hive_id, str) or not HIVE_ID_RE.match(hive_id):
        raise CertificateError(f"hive id {hive_id!r} must match {HIVE_ID_RE.pattern}")
    _check_days(days)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(HIVE_URI_PREFIX + hive_id)]
    for dns in dns_names:
        if not dns or any(c.isspace() for c in dns):
            raise CertificateError(f"not a DNS name: {dns!r}")
        sans.append(x509.DNSName(dns))
    for text in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError as err:
            raise CertificateError(f"not an IP address: {text!r}") from err
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hive_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def hive_id_of(cert_pem_or_der: bytes) -> str:
    """The hive id a certificate carries in its ``fluxbee://hive/<id>`` URI SAN.

    Accepts PEM or DER (``ssl.SSLSocket.getpeercert(binary_form=True)`` gives DER).  Raises
    :class:`CertificateError` when the bytes are not a certificate, carry no such SAN, carry more
    than one, or the id breaks the hive id grammar.
    """
    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(cert_pem_or_der)
        else:
            cert = x509.load_der_x509_certificate(cert_pem_or_der)
    except ValueError as err:
        raise CertificateError(f"not a certificate: {err}") from err
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the certificate has no subjectAltName, so no fluxbee://hive/ URI") from None
    ids = [uri[len(HIVE_URI_PREFIX):] for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
           if uri.startswith(HIVE_URI_PREFIX)]
    if not ids:
        raise CertificateError("the certificate names no hive (no fluxbee://hive/<hive-id> URI SAN)")
    if len(ids) > 1:
        raise CertificateError(f"the certificate names several hives: {', '.join(ids)}")
    if not HIVE_ID_RE.match(ids[0]):
        raise CertificateError(f"the certificate's hive id {ids[0]!r} breaks the hive id grammar")
    return ids[0]


def write_pem_pair(cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes) -> None:
    """Write a certificate (0644) and its key (0600), each atomically (temp file in the same
    directory, fsync, rename): a reader sees the old file or the new one, never half of one.
    The key is written first, so a certificate on disk always has its key next to it."""
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert_pem, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
