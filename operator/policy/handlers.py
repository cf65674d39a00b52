"""Policy reconcile: compile a new spec into a stored version, deliver one version to the hives.

One pass (all steps idempotent, so a retry or a second operator replica repeats none of them):

1. Read the stored versions (ConfigMaps labelled with the Policy's name).  A spec whose digest
   differs from the newest stored version's is compiled (``opa build -t wasm`` when ``opa`` is
   here, regorus otherwise; the status names the engine) into the next version's ConfigMap.  Bad
   Rego ends the pass Degraded (``CompileError`` with line and column) and delivers nothing: the
   hives keep what they run.
2. Choose what to deliver: ``spec.pinVersion`` when set (it must be stored), else the newest.
   The stored artefact is checked against its recorded sha256 before it goes anywhere.
3. Write it into each target hive's policy ConfigMap, guarded by the ``resourceVersion`` read (a
   hive whose ConfigMap belongs to another Policy is reported ``Taken`` and left alone).  Hives
   this Policy no longer targets lose their ConfigMap.
4. Delete stored versions beyond ``spec.keepVersions`` (never the delivered or pinned one).

Everything the Policy makes carries an ownerReference to it, so deleting the Policy lets the
garbage collector remove the versions and the hives' ConfigMaps.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import traceback
from collections.abc import Mapping
from typing import Any

import kopf

from fluxbee.dataplane.policy import Artefact, CompileError, compile_policy
from fluxbee.models import Policy, PolicySpec
from fluxbee.operator.children import owned
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.hive.build import policy_config_map_name
from fluxbee.operator.kube import ApiError, Kube
from fluxbee.operator.policy.build import (
    DELIVERY_COMPONENT,
    POLICY_LABEL,
    VERSION_COMPONENT,
    StoredVersion,
    StoredVersionError,
    build_delivery_config_map,
    build_version_config_map,
    delivered,
    entrypoints,
    next_version,
    source_digest,
    stored_artefact,
    stored_version,
    to_prune,
)
from fluxbee.operator.runtime.build import parse_resource

log = logging.getLogger(__name__)

COMPILE_TIMEOUT_S = 120.0
_CLEARED: dict[str, Any] = {"error": None, "errorLine": None, "errorColumn": None}


async def _stored(kube: Kube, namespace: str, policy: str) -> dict[int, dict[str, Any]]:
    """The version ConfigMaps of ``policy`` by version (unreadable ones are logged and skipped)."""
    out: dict[int, dict[str, Any]] = {}
    for cm in await kube.list("configmaps", namespace, {POLICY_LABEL: policy, "app.kubernetes.io/component":
                                                        VERSION_COMPONENT}):
        try:
            out[stored_version(cm).version] = cm
        except StoredVersionError as err:
            log.warning("policy %s/%s: %s; it is ignored", namespace, policy, err)
    return out


def _compile_here(spec: PolicySpec) -> Artefact | CompileError:
    """Compile in this (worker) thread, and let every regorus object die in it.

    A regorus engine may only be dropped by the thread that made it.  A compile error's traceback and
    cause keep the parser's frames (and its engine) alive in a reference cycle, which the garbage
    collector would otherwise free on whatever thread it next runs on (the event loop's): so the
    frames are cleared and collected here, and the error is handed back as a fresh one, without
    traceback or cause."""
    target, allow = entrypoints(spec)
    try:
        return compile_policy(spec.rego, data=spec.data, target_entrypoint=target, allow_entrypoint=allow,
                              timeout=COMPILE_TIMEOUT_S)
    except CompileError as err:
        fresh = CompileError(err.message, line=err.line, column=err.column, file=err.file, compiler=err.compiler)
        chained: BaseException | None = err
        while chained is not None:  # drop the finished frames' locals now, in this thread
            traceback.clear_frames(chained.__traceback__)
            chained = chained.__cause__ or chained.__context__
    gc.collect()
    return fresh


async def _compile(ctx: OperatorContext, body: Mapping[str, Any], policy: Policy, version: int) -> dict[str, Any]:
    """Compile the spec into version ``version``'s ConfigMap (created, or found made by an earlier pass)."""
    meta = body["metadata"]
    artefact = await asyncio.to_thread(_compile_here, policy.spec)
    if isinstance(artefact, CompileError):
        raise artefact
    manifest = owned(build_version_config_map(
        meta["name"], meta["namespace"], version, artefact.to_bytes(), engine=artefact.engine,
        compiler=artefact.compiler, source_sha256=source_digest(policy.spec),
        fallback_reason=artefact.fallback_reason), body)
    try:
        return await ctx.kube.create("configmaps", meta["namespace"], manifest)
    except ApiError as err:
        if not err.conflict:
            raise
    raise kopf.TemporaryError(f"ConfigMap {manifest['metadata']['name']} exists already (another pass made it); "
                              "will read it again in 2 s", delay=2)


async def _deliver(ctx: OperatorContext, body: Mapping[str, Any], hive: str, version: int,
                   artefact: bytes) -> dict[str, Any]:
    """Write ``version`` into ``hive``'s policy ConfigMap; the hive's status entry."""
    meta = body["metadata"]
    namespace, policy = meta["namespace"], meta["name"]
    name = policy_config_map_name(hive)
    want = owned(build_delivery_config_map(name, policy, namespace, version, artefact), body)
    entry: dict[str, Any] = {"hive": hive, "configMap": name, "version": version,
                             "sha256": want["data"]["sha256"], "state": "Delivered", "message": ""}
    actual = await ctx.kube.get("configmaps", namespace, name)
    if actual is None:
        await ctx.kube.create("configmaps", namespace, want)
        return entry
    labels = (actual.get("metadata") or {}).get("labels") or {}
    if labels.get(POLICY_LABEL) != policy:
        holder = labels.get(POLICY_LABEL) or "(not a Policy)"
        return {**entry, "version": None, "sha256": None, "state": "Taken",
                "message": f"{name} is written by Policy {holder}; a hive runs one Policy"}
    if delivered(actual) == (version, want["data"]["sha256"]) and (actual.get("binaryData") or {}) == \
            want["binaryData"]:
        return entry
    patch = {"metadata": {"resourceVersion": actual["metadata"]["resourceVersion"],
                          "labels": want["metadata"]["labels"]},
             "data": want["data"], "binaryData": want["binaryData"]}
    try:
        await ctx.kube.patch("configmaps", namespace, name, patch)
    except ApiError as err:
        if err.conflict:  # written meanwhile: read it again rather than overwrite blind
            raise kopf.TemporaryError(f"{name} changed while being written; will retry in 1 s", delay=1) from err
        raise
    return entry


async def _target_hives(ctx: OperatorContext, namespace: str, policy: Policy) -> tuple[list[str], set[str]]:
    """The hives to deliver to, and which Hive resources exist."""
    existing = {h["metadata"]["name"] for h in await ctx.kube.list("hives", namespace)}
    return sorted(set(policy.spec.hives) if policy.spec.hives is not None else existing), existing


async def _withdraw(ctx: OperatorContext, namespace: str, policy: str, keep: set[str]) -> None:
    """Delete this Policy's delivery ConfigMaps of hives it no longer targets."""
    for cm in await ctx.kube.list("configmaps", namespace, {POLICY_LABEL: policy,
                                                            "app.kubernetes.io/component": DELIVERY_COMPONENT}):
        if cm["metadata"]["name"] not in keep:
            await ctx.kube.delete("configmaps", namespace, cm["metadata"]["name"])


def _status(versions: dict[int, dict[str, Any]], compiled: int | None) -> dict[str, Any]:
    infos = [stored_version(versions[v]) for v in sorted(versions, reverse=True)]
    return {"versions": [i.status() for i in infos], "compiledVersion": compiled}


async def _reconcile(ctx: OperatorContext, body: Mapping[str, Any], policy: Policy) -> Outcome:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    old = body.get("status") or {}
    recorded = old.get("compiledVersion") if isinstance(old.get("compiledVersion"), int) else None
    versions = await _stored(ctx.kube, namespace, name)
    digest = source_digest(policy.spec)
    newest = max(versions, default=None)
    compiled = max([v for v in (newest, recorded) if v is not None], default=None)
    keep_previous = {k: old.get(k) for k in ("deliveredVersion", "deliveredSha256", "engine", "compiler",
                                             "fallbackReason", "pinnedVersion", "hives")}
    if newest is None or stored_version(versions[newest]).source_sha256 != digest:
        version = next_version(versions, recorded)
        try:
            versions[version] = await _compile(ctx, body, policy, version)
        except CompileError as err:
            return Outcome.degraded("CompileError", str(err), error=str(err), errorLine=err.line,
                                    errorColumn=err.column, **_status(versions, compiled), **keep_previous)
        except ValueError as err:  # too large for a ConfigMap
            return Outcome.degraded("ArtefactTooLarge", str(err), **_CLEARED, error=str(err),
                                    **_status(versions, compiled), **keep_previous)
        compiled = version
        log.info("policy %s/%s: version %d compiled", namespace, name, version)
    pin = policy.spec.pin_version
    chosen = pin if pin is not None else max(versions)
    if chosen not in versions:
        message = (f"spec.pinVersion {pin} is not stored (kept: {', '.join(map(str, sorted(versions))) or 'none'}); "
                   "nothing was delivered")
        return Outcome.degraded("PinnedVersionNotStored", message, **_CLEARED, **_status(versions, compiled),
                                **keep_previous)
    try:
        artefact = stored_artefact(versions[chosen])
    except StoredVersionError as err:
        return Outcome.degraded("StoredVersionInvalid", f"{err}; nothing was delivered", **_CLEARED,
                                **_status(versions, compiled), **keep_previous)
    info: StoredVersion = stored_version(versions[chosen])
    hives, existing = await _target_hives(ctx, namespace, policy)
    entries = [await _deliver(ctx, body, hive, chosen, artefact) for hive in hives]
    for entry in entries:
        if entry["state"] == "Delivered" and entry["hive"] not in existing:
            entry["message"] = "no Hive of this name yet: its routers mount the ConfigMap once it exists"
    await _withdraw(ctx, namespace, name, {e["configMap"] for e in entries if e["state"] == "Delivered"})
    for gone in to_prune(versions, policy.spec.keep_versions, delivered_version=chosen, pinned=pin):
        await ctx.kube.delete("configmaps", namespace, versions.pop(gone)["metadata"]["name"])
    fields = {**_CLEARED, **_status(versions, compiled), "deliveredVersion": chosen, "deliveredSha256": info.sha256,
              "engine": info.engine, "compiler": info.compiler, "fallbackReason": info.fallback_reason,
              "pinnedVersion": pin, "hives": entries,
              "sha256": hashlib.sha256(policy.spec.rego.encode("utf-8")).hexdigest()}
    taken = [e["hive"] for e in entries if e["state"] != "Delivered"]
    if taken:
        return Outcome.degraded("HiveTaken", "; ".join(e["message"] for e in entries if e["state"] != "Delivered"),
                                **fields)
    where = ", ".join(hives) if hives else (
        "no hive (spec.hives is empty)" if policy.spec.hives is not None else "no hive (none in the namespace)")
    pinned = f" (pinned; newest compiled: {compiled})" if pin is not None else ""
    return Outcome.ready(f"version {chosen} ({info.engine}) delivered to {where}{pinned}", **fields)


async def reconcile_policy(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    try:
        policy = parse_resource(Policy, body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
    else:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return Outcome.ready("being deleted")
        outcome = await _reconcile(ctx, body, policy)
    await write_status(ctx.kube, "policies", body, outcome)
    return outcome
