"""FluxNode reconcile: check hive and runtime, write the effective config, keep N Pods."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fluxbee.identity import degrees as dg
from fluxbee.models import FluxNode, Hive, Runtime
from fluxbee.models.effective import config_digest, effective_config, resolve_runtime_version
from fluxbee.models.resources import DegreeBinding
from fluxbee.operator import labels as L
from fluxbee.operator.children import ensure, owned
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.degree.build import verify_binding
from fluxbee.operator.degree.handlers import load_degree, load_identity_key
from fluxbee.operator.fluxnode.build import (
    CLAIM_ANNOTATION,
    CONFIG_KEY,
    build_config_map,
    build_credential_secret,
    build_pod,
    claim_key,
    claim_ref,
    config_map_name,
    credential_secret_name,
    pod_index,
    resolve_package,
)
from fluxbee.operator.hive.build import (
    SYSTEM_NODES,
    build_claims_config_map,
    claim_hashes,
    claim_value,
    claims_config_map_name,
    claims_patch,
    credential_sha256,
    secret_tokens,
)
from fluxbee.operator.hive.handlers import parse_hive
from fluxbee.operator.kube import ApiError, Kube
from fluxbee.operator.runtime.build import parse_resource, parse_runtime, runtime_outcome
from fluxbee.operator.runtime.handlers import load_base

log = logging.getLogger(__name__)

def parse_fluxnode(body: Mapping[str, Any]) -> FluxNode:
    return parse_resource(FluxNode, body)


def _config_version(text: object) -> int:
    """``_system.config_version`` of a stored config (0 when there is none or it is unreadable)."""
    if not isinstance(text, str):
        return 0
    try:
        system = json.loads(text).get("_system", {})
    except (ValueError, AttributeError):
        return 0
    version = system.get("config_version") if isinstance(system, dict) else None
    return version if isinstance(version, int) and version > 0 else 0


def _created_ms(meta: Mapping[str, Any]) -> int | None:
    stamp = meta.get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


async def _stop_pods(ctx: OperatorContext, namespace: str, name: str) -> int:
    pods = await ctx.kube.list("pods", namespace, {L.MANAGED_BY: L.OPERATOR, L.FLUXNODE: name})
    for pod in pods:
        await ctx.kube.delete("pods", namespace, pod["metadata"]["name"])
    return len(pods)


async def _load_runtime(
    ctx: OperatorContext, namespace: str, name: str
) -> tuple[Runtime | None, Runtime | None, Outcome | None]:
    """(runtime, base, problem): ``problem`` is the waiting/degraded outcome if not runnable."""
    body = await ctx.kube.get("runtimes", namespace, name)
    if body is None:
        return None, None, Outcome.degraded(
            "RuntimeNotFound", f"Runtime {name!r} does not exist in namespace {namespace}"
        )
    try:
        runtime = parse_runtime(body)
    except InvalidSpec as err:
        return None, None, Outcome.degraded("RuntimeNotReady", f"Runtime {name!r}: {err.detail}")
    base = await load_base(ctx, namespace, runtime)
    readiness = runtime_outcome(runtime, base, ctx.settings)
    if readiness.phase != "Ready":
        return runtime, base, Outcome.degraded(
            "RuntimeNotReady", f"Runtime {name!r} is not ready: {readiness.message}"
        )
    return runtime, base, None


async def reconcile_fluxnode(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return Outcome.reconciling("Deleting", "the node is being deleted")
    kube = ctx.kube
    try:
        node = parse_fluxnode(body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
        await write_status(kube, "fluxnodes", body, outcome)
        return outcome

    hive_body = await kube.get("hives", namespace, node.spec.hive)
    if hive_body is None or hive_body["metadata"].get("deletionTimestamp"):
        stopped = await _stop_pods(ctx, namespace, name)
        outcome = Outcome.degraded(
            "HiveNotFound",
            f"Hive {node.spec.hive!r} does not exist in namespace {namespace}"
            + (f"; stopped {stopped} pods" if stopped else ""),
            replicas=0,
            readyReplicas=0,
        )
        await write_status(kube, "fluxnodes", body, outcome)
        return outcome
    try:
        hive = parse_hive(hive_body)
    except InvalidSpec as err:
        outcome = Outcome.degraded("HiveInvalid", f"Hive {node.spec.hive!r}: {err.detail}")
        await write_status(kube, "fluxnodes", body, outcome)
        return outcome

    runtime, base, problem = await _load_runtime(ctx, namespace, node.spec.runtime)
    if problem is None and runtime is not None:
        try:
            resolve_runtime_version(runtime, node.spec.runtime_version)
        except ValueError as err:
            problem = Outcome.degraded("RuntimeVersionNotAvailable", str(err))
    if runtime is None or problem is not None:
        waiting = problem or Outcome.degraded("RuntimeNotFound", node.spec.runtime)
        await write_status(kube, "fluxnodes", body, waiting)
        return waiting

    degree_fields: dict[str, Any] = {}
    if node.spec.degree is not None and node.spec.agent_ilk is not None:
        try:
            degree_fields = await _verify_degree(ctx, namespace, node.spec.degree,
                                                 node.spec.agent_ilk)
        except dg.DegreeVerificationError as err:
            # No Pods for an agent whose degree does not verify: its prompt modules are not the signed ones.
            stopped = await _stop_pods(ctx, namespace, name)
            outcome = Outcome.degraded(
                err.code,
                err.detail + (f"; stopped {stopped} pods" if stopped else ""),
                replicas=0,
                readyReplicas=0,
                graduation=err.code,
            )
            await write_status(kube, "fluxnodes", body, outcome)
            return outcome

    refused = await _ensure_claim(ctx, body, node, hive, hive_body)
    if refused is not None:
        stopped = await _stop_pods(ctx, namespace, name)
        outcome = Outcome.degraded(refused.reason, refused.message + (f"; stopped {stopped} pods" if stopped else ""),
                                   replicas=0, readyReplicas=0)
        await write_status(kube, "fluxnodes", body, outcome)
        return outcome

    # Effective config: only rewritten (and Pods replaced) when its digest changes.
    now_ms = int(time.time() * 1000)
    config = effective_config(
        runtime, node, hive.hive_id, now_ms, created_at_ms=_created_ms(meta), base=base
    )
    digest = config_digest(config)  # of the content at config_version 1: what the node runs with
    cm_name = config_map_name(name)
    existing_cm = await kube.get("configmaps", namespace, cm_name)
    if existing_cm is not None:
        have = (existing_cm.get("metadata", {}).get("annotations") or {}).get(L.CONFIG_DIGEST)
        text = (existing_cm.get("data") or {}).get(CONFIG_KEY)
        if have == digest and isinstance(text, str) and _content_digest(text) == digest:
            config = _json(text)  # keep the old version and timestamps: nothing the node runs with changed
        else:
            # The content changed (by the admin API, kubectl edit, a new runtime template): bump
            # `_system.config_version`, whoever made the change.
            previous = _config_version(text)
            config = effective_config(
                runtime, node, hive.hive_id, now_ms, created_at_ms=_created_ms(meta), base=base,
                config_version=previous + 1,
            )
    await ensure(
        kube, "configmaps", namespace, owned(build_config_map(node, namespace, config, digest), body),
        actual=existing_cm,
    )

    package = resolve_package(runtime, base, ctx.settings)
    pods = await kube.list("pods", namespace, {L.MANAGED_BY: L.OPERATOR, L.FLUXNODE: name})
    for pod in pods:
        index = pod_index(pod)
        if index is None or index >= node.spec.replicas:
            await kube.delete("pods", namespace, pod["metadata"]["name"])
    by_name = {p["metadata"]["name"]: p for p in pods}
    actions = []
    for index in range(node.spec.replicas):
        pod = build_pod(node, hive, package, namespace, index, digest, ctx.settings)
        actions.append(await ensure(kube, "pods", namespace, owned(pod, body), recreate=True,
                                    actual=by_name.get(pod["metadata"]["name"])))

    live = [
        p for p in pods
        if (pod_index(p) or 0) < node.spec.replicas and not p["metadata"].get("deletionTimestamp")
    ]
    existing = min(node.spec.replicas, len(live) + actions.count("created"))
    ready = sum(1 for p in live if _pod_ready(p))
    fields = {
        "replicas": existing,
        "readyReplicas": ready,
        "runtimeVersion": runtime.spec.version,
        "configHash": digest,
        **degree_fields,
    }
    if ready >= node.spec.replicas:
        outcome = Outcome.ready(f"{ready}/{node.spec.replicas} pods ready", **fields)
    else:
        outcome = Outcome.reconciling(
            "WaitingForPods", f"{ready}/{node.spec.replicas} pods ready", **fields
        )
    await write_status(kube, "fluxnodes", body, outcome)
    return outcome


async def _verify_degree(
    ctx: OperatorContext, namespace: str, binding: DegreeBinding, ilk: str
) -> dict[str, Any]:
    """Status fields of a verified graduation; DegreeVerificationError with the reason."""
    degree, modules = await load_degree(ctx, namespace, binding.name)
    key = await load_identity_key(ctx, namespace)
    digest = verify_binding(binding, ilk, degree.metadata.name, degree.spec, modules, key)
    return {"degreeDigest": digest, "graduation": "Verified"}


async def cleanup_fluxnode(ctx: OperatorContext, body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    await _stop_pods(ctx, namespace, name)
    await ctx.kube.delete("configmaps", namespace, config_map_name(name))
    secret = await ctx.kube.get("secrets", namespace, credential_secret_name(name))
    if secret is not None:
        # The claim goes before the Secret: without the Secret its hash could not be found again.
        token = secret_tokens(secret).get("token")
        ref = ((secret.get("metadata") or {}).get("annotations") or {}).get(CLAIM_ANNOTATION)
        if token is not None and isinstance(ref, str) and "/" in ref:
            hive_name, _, key = ref.partition("/")
            await _drop_claim(ctx.kube, namespace, hive_name, key, credential_sha256(token))
        await ctx.kube.delete("secrets", namespace, credential_secret_name(name))


async def _ensure_claim(ctx: OperatorContext, body: Mapping[str, Any], node: FluxNode, hive: Hive,
                        hive_body: Mapping[str, Any]) -> Outcome | None:
    """The node's credential Secret, and its token's hash under the node's key of the hive's
    claims ConfigMap; the refusing outcome if the node may not have its name.

    Several FluxNodes may run one node name (the router balances among them): the key holds the
    hash of each, merged one at a time by a merge patch of that key alone.  Two such FluxNodes
    reconciled at the same instant can each miss the other's hash; their next reconcile adds it.
    """
    kube = ctx.kube
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    key = claim_key(node)
    if key in SYSTEM_NODES:
        return Outcome.degraded(
            "NameClaimedBySystem",
            f"{key} is run by the hive pods of Hive {hive.metadata.name!r}; a FluxNode cannot take it")
    secret_name = credential_secret_name(name)
    secret = await kube.get("secrets", namespace, secret_name)
    if secret is None:
        secret = owned(build_credential_secret(node, namespace, secrets.token_hex(32)), body)
        try:
            await kube.create("secrets", namespace, secret)
        except ApiError as err:
            found = await kube.get("secrets", namespace, secret_name) if err.conflict else None
            if found is None:
                raise
            secret = found
    token = secret_tokens(secret).get("token")
    if token is None:
        return Outcome.degraded(
            "CredentialInvalid",
            f"Secret {secret_name} has no `token` of 64 hex characters; delete it and the operator "
            f"makes a new one")
    digest = credential_sha256(token)
    recorded = ((secret.get("metadata") or {}).get("annotations") or {}).get(CLAIM_ANNOTATION)
    if recorded != claim_ref(node):
        if isinstance(recorded, str) and "/" in recorded:  # renamed, or moved to another hive
            old_hive, _, old_key = recorded.partition("/")
            await _drop_claim(kube, namespace, old_hive, old_key, digest)
        await kube.patch("secrets", namespace, secret_name,
                         {"metadata": {"annotations": {CLAIM_ANNOTATION: claim_ref(node)}}})
    await _add_claim(kube, namespace, hive, hive_body, key, digest)
    return None


async def _add_claim(kube: Kube, namespace: str, hive: Hive, hive_body: Mapping[str, Any], key: str,
                     digest: str) -> None:
    cm_name = claims_config_map_name(hive.metadata.name)
    claims = await kube.get("configmaps", namespace, cm_name)
    if claims is None:  # before the Hive's reconcile made it: made here, owned by the Hive all the same
        try:
            await kube.create("configmaps", namespace,
                              owned(build_claims_config_map(hive, namespace, {key: claim_value([digest])}), hive_body))
            return
        except ApiError as err:
            claims = await kube.get("configmaps", namespace, cm_name) if err.conflict else None
            if claims is None:
                raise
    have = claim_hashes((claims.get("data") or {}).get(key))
    if digest not in have:
        await kube.patch("configmaps", namespace, cm_name, claims_patch(key, [*have, digest]))


async def _drop_claim(kube: Kube, namespace: str, hive_name: str, key: str, digest: str) -> None:
    """Take one hash out of one claims key (the key goes with its last hash)."""
    cm_name = claims_config_map_name(hive_name)
    claims = await kube.get("configmaps", namespace, cm_name)
    have = claim_hashes(((claims or {}).get("data") or {}).get(key))
    if digest in have:
        await kube.patch("configmaps", namespace, cm_name, claims_patch(key, [h for h in have if h != digest]))


def _json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _content_digest(text: str) -> str | None:
    """Digest of a stored config as if it were at config_version 1 (None if unreadable).

    Matches the digest of a freshly built config only when the content is the same, so a
    hand-edited ConfigMap is put back (and its version bumped) like any other change.
    """
    try:
        config = _json(text)
    except ValueError:
        return None
    system = config.get("_system")
    if isinstance(system, dict):
        config["_system"] = {**system, "config_version": 1}
    return config_digest(config)


async def nodes_referencing(
    ctx: OperatorContext, namespace: str, *, hive: str | None = None, runtime: str | None = None
) -> list[dict[str, Any]]:
    """FluxNodes that reference ``hive``/``runtime``: their Pods depend on it, so they are
    reconciled again when it changes (or appears)."""
    out = []
    for item in await ctx.kube.list("fluxnodes", namespace):
        spec = item.get("spec") or {}
        if hive is not None and spec.get("hive") != hive:
            continue
        if runtime is not None and spec.get("runtime") != runtime:
            continue
        out.append(item)
    return out
