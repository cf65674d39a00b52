"""Hive reconcile: ConfigMap, DaemonSet, admin Deployment, Services, admin token; status from the DaemonSet."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.children import ensure, ensure_absent, owned
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
    names,
    secret_tokens,
    system_nodes,
)
from fluxbee.operator.kube import ApiError
from fluxbee.operator.runtime.build import parse_resource

log = logging.getLogger(__name__)


def parse_hive(body: Mapping[str, Any]) -> Hive:
    return parse_resource(Hive, body)


def hive_outcome(hive: Hive, daemon_set: Mapping[str, Any] | None) -> Outcome:
    """Ready once every selected host runs a ready hive pod (from the DaemonSet status)."""
    st = (daemon_set or {}).get("status") or {}
    desired = int(st.get("desiredNumberScheduled") or 0)
    ready = int(st.get("numberReady") or 0)
    n = names(hive)
    fields = {
        "hiveId": hive.hive_id,
        "daemonSet": n.daemon_set,
        "configMap": n.config_map,
        "desiredPods": desired,
        "readyPods": ready,
    }
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
    daemon_set = await kube.get("daemonsets", namespace, n.daemon_set)
    outcome = hive_outcome(hive, daemon_set)
    await write_status(ctx.kube, "hives", body, outcome)
    return outcome


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
