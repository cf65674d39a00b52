"""The Secrets behind a hive's links and identity: found, made once, checked, renewed (API calls).

* The CA (``OperatorSettings.wan_ca_secret`` in ``ca_namespace``): created when absent, then only
  read — never regenerated, patched or owned by a Hive (deleting one hive must not take the trust
  of the others with it).  Two operators racing to create it: the loser reads the winner's.
* ``<hive>-wan-tls``: issued from the CA, owned by the Hive, reissued when it names another hive,
  no longer verifies against the CA, or has less than ``RENEW_BEFORE`` left.
* A user's Secret (``spec.wan.certificate``): checked, never written.
* SY.identity's signing key and the bundled PostgreSQL's password: made once, never rewritten,
  not owned (see ``fluxbee.operator.hive.identity``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxbee.dataplane.link.certs import CertificateError, issue_hive_cert, make_ca
from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.children import owned
from fluxbee.operator.context import OperatorContext
from fluxbee.operator.hive.certs import (
    CA_DAYS,
    HIVE_CERT_DAYS,
    CheckedCertificate,
    SecretProblem,
    check_ca_secret,
    check_certificate,
    check_user_secret,
    generated_still_good,
    secret_bytes,
    tls_data,
)
from fluxbee.operator.hive.identity import (
    build_postgres_secret,
    build_signing_key_secret,
    database_url_ref,
    postgres_name,
    signing_key_secret,
)
from fluxbee.operator.hive.links import (
    certificate_dns_names,
    certificate_secret,
    generated_certificate_name,
    user_certificate,
)
from fluxbee.operator.kube import ApiError, object_path

CA_COMMON_NAME = "Fluxbee hive links CA"
PUBLIC_KEY_KEY = "ed25519.pub"


async def _create_once(ctx: OperatorContext, plural: str, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create ``manifest``; if someone else made it meanwhile, theirs is the one (read back)."""
    try:
        return await ctx.kube.create(plural, namespace, manifest)
    except ApiError as err:
        if not err.conflict:
            raise
    name = manifest["metadata"]["name"]
    found = await ctx.kube.get(plural, namespace, name)
    if found is None:  # made and deleted between our two calls: the next reconcile tries again
        raise ApiError(409, "Conflict", "existed at create, gone at read", method="GET",
                       path=object_path(plural, namespace, name))
    return found


def _ca_manifest(name: str, namespace: str, cert: bytes, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {
            **L.common("wan-ca", name), L.MANAGED_BY: L.OPERATOR}},
        "type": "kubernetes.io/tls",
        "data": tls_data(cert, key),
    }


async def ensure_ca(ctx: OperatorContext, hive_namespace: str) -> tuple[bytes, bytes]:
    """The CA's (cert, key), made once per ``ca_namespace``."""
    namespace = ctx.settings.ca_namespace(hive_namespace)
    name = ctx.settings.wan_ca_secret
    secret = await ctx.kube.get("secrets", namespace, name)
    if secret is None:
        cert, key = make_ca(CA_COMMON_NAME, days=CA_DAYS)
        secret = await _create_once(ctx, "secrets", namespace, _ca_manifest(name, namespace, cert, key))
    return check_ca_secret(secret, f"CA Secret {namespace}/{name}")


async def ensure_link_certificate(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive,
                                  namespace: str) -> CheckedCertificate:
    """The certificate the hive's routers present; raises :class:`SecretProblem` when a user's
    Secret cannot serve, or the CA is damaged."""
    if user_certificate(hive):
        name = certificate_secret(hive)
        return check_user_secret(await ctx.kube.get("secrets", namespace, name), name, hive.hive_id)
    ca_cert, ca_key = await ensure_ca(ctx, namespace)
    name = generated_certificate_name(hive)
    existing = await ctx.kube.get("secrets", namespace, name)
    kept = generated_still_good(existing, ca_cert, hive.hive_id)
    if kept is not None:
        return kept
    try:
        cert, key = issue_hive_cert(ca_cert, ca_key, hive.hive_id, dns_names=certificate_dns_names(hive, namespace),
                                    days=HIVE_CERT_DAYS)
    except CertificateError as err:
        raise SecretProblem("WanCaInvalid", f"cannot issue from the CA: {err}") from None
    data = tls_data(cert, key, ca_cert)
    if existing is None:
        manifest = owned({"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": name, "namespace": namespace,
                                       "labels": {**L.common("hive", hive.metadata.name), L.HIVE: hive.metadata.name}},
                          "type": "kubernetes.io/tls", "data": data}, body)
        created = await _create_once(ctx, "secrets", namespace, manifest)
        if created.get("data") != data:  # another instance issued one first: keep it if it is good
            theirs = generated_still_good(created, ca_cert, hive.hive_id)
            if theirs is not None:
                return theirs
            await ctx.kube.patch("secrets", namespace, name, {"data": data})
    else:
        await ctx.kube.patch("secrets", namespace, name, {"data": data})
    return check_certificate(cert, key, ca_cert, f"Secret {name}")


async def check_database_secret(ctx: OperatorContext, hive: Hive, namespace: str) -> None:
    """Mode ``url``: the Secret key must exist and hold a PostgreSQL URL (:class:`SecretProblem`
    naming the Secret otherwise; the operator never writes it)."""
    name, key = database_url_ref(hive)
    secret = await ctx.kube.get("secrets", namespace, name)
    if secret is None:
        raise SecretProblem("DatabaseSecretNotFound",
                                 f"Secret {name} (spec.identity.database.urlSecret) does not exist")
    value = secret_bytes(secret, key)
    if value is None:
        raise SecretProblem("DatabaseSecretIncomplete", f"Secret {name} has no key {key!r}")
    if not value.decode(errors="replace").strip().startswith(("postgresql://", "postgres://")):
        raise SecretProblem("DatabaseUrlInvalid",
                                 f"Secret {name} key {key!r} is not a postgresql:// URL")


async def ensure_postgres_secret(ctx: OperatorContext, hive: Hive, namespace: str) -> None:
    if await ctx.kube.get("secrets", namespace, postgres_name(hive)) is None:
        await _create_once(ctx, "secrets", namespace,
                           build_postgres_secret(hive, namespace, secrets.token_urlsafe(24)))


async def ensure_signing_key(ctx: OperatorContext, hive: Hive, namespace: str) -> None:
    """SY.identity's Ed25519 key (made once), and its public half in the ConfigMap FluxNodes'
    graduations are verified with (``identity_key_config_map``), unless one is there already."""
    secret = await ctx.kube.get("secrets", namespace, signing_key_secret(hive))
    if secret is None:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        secret = await _create_once(ctx, "secrets", namespace,
                                    build_signing_key_secret(hive, namespace, private, public))
    public_pem = secret_bytes(secret, "signing.key.pub")
    name = ctx.settings.identity_key_config_map
    if public_pem is not None and await ctx.kube.get("configmaps", namespace, name) is None:
        await _create_once(ctx, "configmaps", namespace, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**L.common("identity-key", hive.metadata.name), L.HIVE: hive.metadata.name}},
            "data": {PUBLIC_KEY_KEY: public_pem.decode()}})

