"""Hive reconcile: ConfigMap, DaemonSet, admin Deployment, Services, admin token, link certificate, gateway,
SY.identity and its PostgreSQL; status from the DaemonSet.

What could make the hive unusable is checked before anything is written (the link certificate, a
database URL Secret, a ``spec.wan`` that names the hive itself): such a spec ends Degraded with the
reason and leaves every existing child as it was, so a bad edit never tears down a running hive and
a bad new hive leaves nothing half made.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

import kopf

from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.children import ensure, ensure_absent, is_subset, owned
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.hive.build import (
    SYSTEM_NODES,
    build_admin_deployment,
    build_admin_history,
    build_admin_secret,
    build_config_map,
    build_daemon_set,
    build_services,
    build_system_claims,
    build_system_credentials,
    credential_data,
    credential_sha256,
    identity_primary,
    names,
    secret_tokens,
    system_nodes,
)
from fluxbee.operator.hive.certs import SECRET_RETRY_S, CheckedCertificate, SecretProblem
from fluxbee.operator.hive.gateway import build_gateway_deployment, build_gateway_service, build_mesh_service
from fluxbee.operator.hive.identity import (
    build_identity_deployment,
    build_postgres_service,
    build_postgres_stateful_set,
    identity_name,
    postgres_name,
)
from fluxbee.operator.hive.keys import (
    check_database_secret,
    ensure_link_certificate,
    ensure_postgres_secret,
    ensure_signing_key,
)
from fluxbee.operator.hive.links import certificate_secret, gateway_name, wan_problem
from fluxbee.operator.kube import ApiError
from fluxbee.operator.runtime.build import parse_resource

log = logging.getLogger(__name__)


def parse_hive(body: Mapping[str, Any]) -> Hive:
    return parse_resource(Hive, body)


def identity_summary(hive: Hive) -> str:
    """``status.identity``: what runs SY.identity for this hive."""
    if not hive.spec.identity.enabled:
        return "off"
    if identity_primary(hive):
        mode = hive.spec.identity.database.mode
        return f"primary {identity_name(hive)} (database: {mode}), a replica in every hive pod"
    if hive.spec.identity.primary_hive:
        return f"a replica of SY.identity@{hive.spec.identity.primary_hive} in every hive pod"
    return "no replicas: spec.identity.primaryHive names no mother hive"


def hive_outcome(hive: Hive, daemon_set: Mapping[str, Any] | None,
                 certificate: CheckedCertificate | None = None, certificate_secret: str | None = None) -> Outcome:
    """Ready once every selected host runs a ready hive pod (from the DaemonSet status)."""
    st = (daemon_set or {}).get("status") or {}
    desired = int(st.get("desiredNumberScheduled") or 0)
    ready = int(st.get("numberReady") or 0)
    n = names(hive)
    fields: dict[str, Any] = {
        "hiveId": hive.hive_id,
        "daemonSet": n.daemon_set,
        "configMap": n.config_map,
        "desiredPods": desired,
        "readyPods": ready,
        "gateway": gateway_name(hive) if hive.spec.wan is not None else None,
        "identity": identity_summary(hive),
    }
    if certificate is not None:
        fields["linkCertificate"] = certificate_secret
        fields["linkCertificateNotAfter"] = certificate.not_after_text
    if desired == 0:
        return Outcome.reconciling(
            "WaitingForHosts", "no host runs a hive pod yet (check spec.nodeSelector)", **fields
        )
    if ready < desired:
        return Outcome.reconciling(
            "WaitingForPods", f"{ready}/{desired} hive pods ready", **fields
        )
    return Outcome.ready(f"{ready}/{desired} hive pods ready", **fields)


async def reconcile_hive(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    namespace = meta["namespace"]
    if meta.get("deletionTimestamp"):
        return Outcome.reconciling("Deleting", "the hive is being deleted")
    try:
        hive = parse_hive(body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
        await write_status(ctx.kube, "hives", body, outcome)
        return outcome
    kube = ctx.kube
    n = names(hive)
    try:
        certificate = await _preflight(ctx, body, hive, namespace)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail, hiveId=hive.hive_id)
        await write_status(ctx.kube, "hives", body, outcome)
        return outcome
    except SecretProblem as err:
        await write_status(ctx.kube, "hives", body, Outcome.degraded(err.reason, err.message, hiveId=hive.hive_id))
        raise kopf.TemporaryError(f"{err}; will look again in {SECRET_RETRY_S:.0f} s", delay=SECRET_RETRY_S) from None
    if hive.spec.admin.enabled and hive.spec.admin.token_secret is None:
        if await kube.get("secrets", namespace, n.admin_secret) is None:
            secret = owned(build_admin_secret(hive, namespace, secrets.token_urlsafe(32)), body)
            try:
                await kube.create("secrets", namespace, secret)
            except ApiError as err:
                if not err.conflict:
                    raise
    await _ensure_system_claims(ctx, body, hive, namespace)
    version = int(meta.get("generation") or 1)
    await ensure(kube, "configmaps", namespace, owned(build_config_map(hive, namespace, version), body))
    await ensure(kube, "daemonsets", namespace, owned(build_daemon_set(hive, namespace, ctx.settings), body))
    if hive.spec.admin.enabled:  # the history outlives a disabled admin API, and goes with the Hive
        await ensure(kube, "configmaps", namespace, owned(build_admin_history(hive, namespace), body))
        await ensure(kube, "deployments", namespace,
                     owned(build_admin_deployment(hive, namespace, ctx.settings), body))
    else:
        await ensure_absent(kube, "deployments", namespace, n.admin_deployment)
    wanted = {s["metadata"]["name"] for s in build_services(hive, namespace)}
    for service in build_services(hive, namespace):
        await ensure(kube, "services", namespace, owned(service, body))
    if n.admin_service not in wanted:
        await ensure_absent(kube, "services", namespace, n.admin_service)
    await _ensure_links(ctx, body, hive, namespace)
    await _ensure_identity(ctx, body, hive, namespace)
    daemon_set = await kube.get("daemonsets", namespace, n.daemon_set)
    outcome = hive_outcome(hive, daemon_set, certificate, certificate_secret(hive))
    await write_status(ctx.kube, "hives", body, outcome)
    return outcome


async def _preflight(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive,
                     namespace: str) -> CheckedCertificate:
    """Everything that can refuse the spec, before any child is written; the link certificate
    (issued or renewed here when it is the operator's to make)."""
    problem = wan_problem(hive, namespace)
    if problem is not None:
        raise InvalidSpec(*problem)
    if identity_primary(hive) and hive.spec.identity.database.mode == "url":
        await check_database_secret(ctx, hive, namespace)
    return await ensure_link_certificate(ctx, body, hive, namespace)


async def _ensure_links(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive, namespace: str) -> None:
    """The mesh Service always; the gateway Deployment and Service with ``spec.wan`` only."""
    kube = ctx.kube
    await ensure(kube, "services", namespace, owned(build_mesh_service(hive, namespace), body))
    if hive.spec.wan is not None:
        await ensure(kube, "deployments", namespace,
                     owned(build_gateway_deployment(hive, namespace, ctx.settings), body))
        await ensure(kube, "services", namespace, owned(build_gateway_service(hive, namespace), body))
    else:
        await ensure_absent(kube, "deployments", namespace, gateway_name(hive))
        await ensure_absent(kube, "services", namespace, gateway_name(hive))


async def _ensure_identity(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive, namespace: str) -> None:
    """SY.identity's primary on a motherbee (with the bundled PostgreSQL unless a URL is given).
    Switching a hive to worker, to ``url`` or identity off removes what it no longer needs, except
    the data volume and the Secrets that open it (kept: see ``fluxbee.operator.hive.identity``)."""
    kube = ctx.kube
    bundled = identity_primary(hive) and hive.spec.identity.database.mode == "bundled"
    if bundled:
        await ensure_postgres_secret(ctx, hive, namespace)
        await ensure(kube, "services", namespace, owned(build_postgres_service(hive, namespace), body))
        desired = owned(build_postgres_stateful_set(hive, namespace, ctx.settings), body)
        actual = await kube.get("statefulsets", namespace, postgres_name(hive))
        if actual is not None and "volumeClaimTemplates" in desired["spec"]:
            # The API server refuses any change to a StatefulSet's claim templates: a new size or class
            # applies to claims made from now on, never to the existing one (resize that claim itself).
            if actual["spec"].get("volumeClaimTemplates") and not is_subset(
                    desired["spec"]["volumeClaimTemplates"], actual["spec"]["volumeClaimTemplates"]):
                log.warning("hive %s/%s: spec.identity.database storage changed; the existing claim of %s "
                            "keeps its size and class (resize data-%s-0 yourself)", namespace,
                            hive.metadata.name, postgres_name(hive), postgres_name(hive))
            desired = {**desired, "spec": {k: v for k, v in desired["spec"].items() if k != "volumeClaimTemplates"}}
        await ensure(kube, "statefulsets", namespace, desired, actual=actual)
    else:
        await ensure_absent(kube, "statefulsets", namespace, postgres_name(hive))
        await ensure_absent(kube, "services", namespace, postgres_name(hive))
    if identity_primary(hive):
        await ensure_signing_key(ctx, hive, namespace)
        await ensure(kube, "deployments", namespace,
                     owned(build_identity_deployment(hive, namespace, ctx.settings), body))
    else:
        await ensure_absent(kube, "deployments", namespace, identity_name(hive))


async def _system_tokens(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive,
                         namespace: str) -> dict[str, str]:
    """The tokens of the hive's SY.* containers: kept once made, missing ones added."""
    kube, n = ctx.kube, names(hive)
    wanted = system_nodes(hive)
    secret = await kube.get("secrets", namespace, n.system_credentials)
    if secret is None:
        tokens = {name: secrets.token_hex(32) for name in wanted}
        try:
            await kube.create("secrets", namespace,
                              owned(build_system_credentials(hive, namespace, tokens), body))
            return tokens
        except ApiError as err:
            secret = await kube.get("secrets", namespace, n.system_credentials) if err.conflict else None
            if secret is None:
                raise
    tokens = secret_tokens(secret)
    missing = {name: secrets.token_hex(32) for name in wanted if name not in tokens}
    if missing:  # e.g. the admin API was just enabled; the other tokens stay as they are
        await kube.patch("secrets", namespace, n.system_credentials, {"data": credential_data(missing)})
    return {**tokens, **missing}


async def _ensure_system_claims(ctx: OperatorContext, body: Mapping[str, Any], hive: Hive,
                                namespace: str) -> None:
    """The claims ConfigMap with the hashes of the system tokens (FluxNodes add their own keys).

    It exists before the DaemonSet that mounts it into the router.  A system name the hive no
    longer runs loses its key, so nothing can prove it any more.
    """
    tokens = await _system_tokens(ctx, body, hive, namespace)
    hashes = {name: credential_sha256(tokens[name]) for name in system_nodes(hive)}
    cm_name = names(hive).claims_config_map
    actual = await ctx.kube.get("configmaps", namespace, cm_name)
    await ensure(ctx.kube, "configmaps", namespace, owned(build_system_claims(hive, namespace, hashes), body),
                 actual=actual)
    stale = {k: None for k in (actual or {}).get("data") or {} if k in SYSTEM_NODES and k not in hashes}
    if stale:
        await ctx.kube.patch("configmaps", namespace, cm_name, {"data": stale})


async def cleanup_hive(ctx: OperatorContext, body: Mapping[str, Any]) -> None:
    """Delete what the hive owns now (ownerReference GC would do it later, or never off-cluster)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for component, plurals in (("admin", ("deployments",)),
                               ("gateway", ("deployments", "services")),
                               ("identity", ("deployments",)),
                               ("postgres", ("statefulsets", "services")),
                               ("hive", ("daemonsets", "services", "configmaps", "secrets"))):
        selector = {L.MANAGED_BY: L.OPERATOR, L.HIVE: name, L.COMPONENT: component}
        for plural in plurals:
            for child in await ctx.kube.list(plural, namespace, selector):
                if _owned_by(child, meta.get("uid")):
                    await ctx.kube.delete(plural, namespace, child["metadata"]["name"])
    log.info("hive %s/%s: children deleted; its FluxNodes stop until it comes back", namespace, name)


def _owned_by(child: Mapping[str, Any], uid: str | None) -> bool:
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return uid is None or any(r.get("uid") == uid for r in refs)
