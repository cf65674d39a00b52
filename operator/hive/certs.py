"""What the operator checks in link certificates and their Secrets (pure: Secret dicts and bytes in).

A hive's routers present one certificate on every link; the peer believes the hive id it names
(``fluxbee.dataplane.link.certs.hive_id_of``), never the one a HELLO claims.  So the operator
refuses a user's Secret that names another hive, and reissues a generated one that no longer
verifies against the CA, names another hive, or is close to expiry.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fluxbee.dataplane.link.certs import CertificateError, hive_id_of
from fluxbee.operator.hive.links import CA_CERT, TLS_CERT, TLS_KEY

HIVE_CERT_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
"""A generated hive certificate is reissued once it has less than this left (or is invalid)."""
CA_DAYS = 3650
SECRET_RETRY_S = 15.0
"""How soon a hive held back by a missing or bad Secret looks again (a Secret it does not own
sends it no event when the user fixes it)."""


class SecretProblem(Exception):
    """A Secret the hive needs (link certificate, CA, database URL) is missing or cannot serve;
    ``reason`` is CamelCase for conditions.  Unlike a bad spec it may be fixed without touching the
    Hive, so the reconcile is retried (``SECRET_RETRY_S``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def secret_bytes(secret: Mapping[str, Any], key: str) -> bytes | None:
    """One key of a Secret, decoded (``data`` is base64; ``stringData`` only before the server folds it)."""
    raw = (secret.get("data") or {}).get(key)
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return None
    text = (secret.get("stringData") or {}).get(key)
    return text.encode() if isinstance(text, str) else None


def tls_data(cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None = None) -> dict[str, str]:
    out = {TLS_CERT: base64.b64encode(cert_pem).decode(), TLS_KEY: base64.b64encode(key_pem).decode()}
    if ca_pem is not None:
        out[CA_CERT] = base64.b64encode(ca_pem).decode()
    return out


@dataclass(frozen=True)
class CheckedCertificate:
    hive_id: str
    not_after: datetime.datetime

    @property
    def not_after_text(self) -> str:
        return self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise SecretProblem("CertificateInvalid", f"{what} is not a PEM certificate: {err}") from None


def check_pair(secret: Mapping[str, Any], where: str, *, need_ca: bool = True) -> tuple[bytes, bytes, bytes | None]:
    """(cert, key, ca) of a TLS Secret, or :class:`SecretProblem` naming the missing or bad key."""
    cert, key = secret_bytes(secret, TLS_CERT), secret_bytes(secret, TLS_KEY)
    ca = secret_bytes(secret, CA_CERT)
    wanted = ((TLS_CERT, cert), (TLS_KEY, key), (CA_CERT, ca)) if need_ca else ((TLS_CERT, cert), (TLS_KEY, key))
    missing = [k for k, v in wanted if v is None]
    if missing or cert is None or key is None:
        raise SecretProblem("CertificateSecretIncomplete", f"{where} has no {', '.join(missing)}")
    return cert, key, ca


def check_certificate(cert_pem: bytes, key_pem: bytes, ca_pem: bytes, where: str,
                      now: datetime.datetime | None = None) -> CheckedCertificate:
    """The hive id and expiry of a link certificate that is usable: parses, its key matches, it is
    signed by ``ca_pem`` and valid now.  Anything else raises :class:`SecretProblem`."""
    cert = _load(cert_pem, f"{where} {TLS_CERT}")
    ca = _load(ca_pem, f"{where} {CA_CERT}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise SecretProblem("CertificateInvalid", f"{where} {TLS_KEY} is not an unencrypted PEM key: {err}") \
            from None
    if key.public_key() != cert.public_key():
        raise SecretProblem("CertificateInvalid", f"{where}: {TLS_KEY} does not belong to {TLS_CERT}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise SecretProblem("CertificateNotFromCa", f"{where}: {TLS_CERT} is not signed by {CA_CERT}") from None
    try:
        hive_id = hive_id_of(cert_pem)
    except CertificateError as err:
        raise SecretProblem("CertificateNamesNoHive", f"{where}: {err}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now:
        raise SecretProblem("CertificateExpired",
                                 f"{where}: valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                                 f"{cert.not_valid_after_utc:%Y-%m-%d}, not now")
    return CheckedCertificate(hive_id, cert.not_valid_after_utc)


def check_user_secret(secret: Mapping[str, Any] | None, name: str, hive_id: str) -> CheckedCertificate:
    """A user's TLS Secret for ``hive_id`` (never written by the operator: a problem is reported)."""
    where = f"Secret {name}"
    if secret is None:
        raise SecretProblem("CertificateSecretNotFound", f"{where} (spec.wan.certificate) does not exist")
    cert, key, ca = check_pair(secret, where)
    if ca is None:
        raise SecretProblem("CertificateSecretIncomplete", f"{where} has no {CA_CERT}")
    checked = check_certificate(cert, key, ca, where)
    if checked.hive_id != hive_id:
        raise SecretProblem("CertificateHiveMismatch",
                                 f"{where} names hive {checked.hive_id!r}, this hive is {hive_id!r}")
    return checked


def generated_still_good(secret: Mapping[str, Any] | None, ca_pem: bytes, hive_id: str,
                         now: datetime.datetime | None = None) -> CheckedCertificate | None:
    """The generated certificate if it can stay (this hive, this CA, not due for renewal), else None."""
    if secret is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        cert, key, ca = check_pair(secret, "generated", need_ca=True)
        if ca != ca_pem:
            return None
        checked = check_certificate(cert, key, ca_pem, "generated", now)
    except SecretProblem:
        return None
    if checked.hive_id != hive_id or checked.not_after - now < RENEW_BEFORE:
        return None
    return checked


def check_ca_secret(secret: Mapping[str, Any], where: str) -> tuple[bytes, bytes]:
    """The CA's (cert, key) from its Secret; a damaged CA is reported, never replaced (every hive
    certificate issued from it would stop verifying)."""
    cert, key, _ = check_pair(secret, where, need_ca=False)
    ca = _load(cert, f"{where} {TLS_CERT}")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise SecretProblem("WanCaInvalid", f"{where}: {TLS_CERT} is not a CA certificate")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise SecretProblem("WanCaInvalid", f"{where}: {TLS_KEY} is not an unencrypted PEM key: {err}") \
            from None
    if private.public_key() != ca.public_key():
        raise SecretProblem("WanCaInvalid", f"{where}: {TLS_KEY} does not belong to {TLS_CERT}")
    return cert, key
