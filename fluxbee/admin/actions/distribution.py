"""``sync_hint`` and ``update``: the original's two steps between publishing a runtime and spawning it.

In the original, motherbee publishes a package into its dist folder, Syncthing copies that folder to
every worker, ``POST /hives/{h}/sync-hint`` waits until the copy is idle and ``POST /hives/{h}/update``
(``SYSTEM_UPDATE``) makes the hive check the manifest it now holds against the one the caller
published, and the packages that manifest promises.  Only ``ok`` gates a spawn; ``sync_pending``
(HTTP 202) means "not there yet, ask again".

Here every hive reads its runtimes from its own store (the run dir's ``dist/runtimes`` locally, the
Runtime resources in a cluster); nothing replicates a store to another hive.  So:

- ``sync_hint`` has nothing to wait for: it answers ``ok`` with ``state: idle`` and says why
  (``replication: none``), after checking the request the way the original does (``folder_id`` must
  belong to ``channel``).
- ``update`` with category ``runtime`` is the original's check, for real, on this hive's store: a
  manifest newer than the caller's is ``VERSION_MISMATCH`` (409); an older or different one is
  ``sync_pending`` (a store that was not given the caller's packages stays so: nothing copies them);
  the same one is ``ok`` only when every runtime in scope (the targeted one, or every runtime's
  current version) is ready to launch, else ``sync_pending`` with the reasons in ``errors``.  The
  original's retention clean-up of versions dropped from the manifest is not done: nothing is deleted.
- categories ``core`` and ``vendor`` swap the original's binaries and restart its services; a hive
  here is a Python package and its images, upgraded by pip or Helm, so they are ``NOT_IMPLEMENTED``.

``remove_runtime_version`` (``DELETE /hives/{h}/runtimes/{rt}/versions/{v}``) deletes one version
from a hive's store with the original's refusals: the current version while others exist (or the
word ``current``) is ``RUNTIME_CURRENT_CONFLICT``, a version some running or starting node uses is
``RUNTIME_IN_USE``, any version of a runtime another one names as ``runtime_base`` is
``RUNTIME_HAS_DEPENDENTS`` (all 409); an unknown one is ``RUNTIME_VERSION_NOT_FOUND`` (404).  The
original allows it on motherbee only, its store being the one Syncthing copies; here every hive
owns its store, so the hive in the path is the one changed (another hive's is relayed to it).
"""

from __future__ import annotations

import time
from typing import Any, Final

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, check_hive, observe, record_change
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane.names import RUNTIME_NAME_RE, VERSION_RE

FOLDERS: Final = {"dist": "fluxbee-dist", "blob": "fluxbee-blob"}
"""The original's folder id for each channel."""


async def sync_hint(ctx: Context, target: str, p: s.SyncHintParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    folder = p.folder_id if p.folder_id is not None else FOLDERS[p.channel]
    if folder != FOLDERS[p.channel]:
        raise AdminError("INVALID_REQUEST", f"folder_id {folder!r} does not belong to channel {p.channel!r} "
                                            f"(expected {FOLDERS[p.channel]!r})")
    return {"status": "ok", "hive": target, "channel": p.channel, "folder_id": folder,
            "wait_for_idle": p.wait_for_idle, "timeout_ms": p.timeout_ms, "replication": "none",
            "api_healthy": None, "folder_healthy": True, "state": "idle", "need_total_items": 0, "errors": [],
            "message": f"hive {target!r} reads its runtimes and blobs from its own store; nothing is being "
                       "copied to it, so there is nothing to wait for"}


def _version_health(name: str, entry: dict[str, Any], version: str) -> list[str]:
    """Why ``name`` ``version`` cannot be launched from this store (empty: it can)."""
    ready = (entry.get("readiness") or {}).get(version)
    if not isinstance(ready, dict):
        return [f"{name} {version}: not in the store"]
    errors = []
    if not ready.get("runtime_present"):
        errors.append(f"{name} {version}: package missing")
    if not ready.get("base_runtime_ready"):
        errors.append(f"{name} {version}: its runtime_base {entry.get('runtime_base')!r} has no launchable current "
                      "version")
    elif not ready.get("start_sh_executable"):
        errors.append(f"{name} {version}: bin/start.sh missing or not executable")
    return errors


def _health(scope: str, runtime: str | None, version: str | None, errors: list[str]) -> dict[str, Any]:
    return {"scope": scope, "runtime": runtime, "runtime_version": version,
            "status": "degraded" if errors else "ok", "error_count": len(errors), "errors": errors}


def _scope(p: s.UpdateParams, runtimes: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (runtime, version) pairs the update checks, and the errors found while choosing them."""
    if p.runtime is None:
        pairs, errors = [], []
        for name, entry in sorted(runtimes.items()):
            current = entry.get("current")
            if isinstance(current, str) and current:
                pairs.append((name, current))
            else:
                errors.append(f"{name}: no current version")
        return pairs, errors
    entry = runtimes.get(p.runtime)
    if not isinstance(entry, dict):
        return [], [f"{p.runtime}: not in this hive's manifest"]
    version = p.runtime_version if p.runtime_version not in (None, "current") else entry.get("current")
    if not isinstance(version, str) or not version:
        return [], [f"{p.runtime}: no current version"]
    if version not in (entry.get("available") or []) and version != entry.get("current"):
        return [], [f"{p.runtime} {version}: not in this hive's manifest"]
    return [(p.runtime, version)], []


async def update(ctx: Context, target: str, p: s.UpdateParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    if p.category != "runtime":
        raise AdminError("NOT_IMPLEMENTED", f"category {p.category!r} swaps the hive's own binaries in the "
                                            "original; a hive here is upgraded as a Python package or a Helm "
                                            "release, not through the admin API")
    if p.runtime_version is not None and p.runtime is None:
        raise AdminError("INVALID_REQUEST", "runtime_version requires runtime")
    info = await ctx.backend.runtimes()
    local_version = info.get("manifest_version")
    local_hash = info.get("manifest_hash")
    runtimes = info.get("runtimes") or {}
    head: dict[str, Any] = {"category": "runtime", "hive": target, "manifest_version": p.manifest_version,
                            "manifest_hash": p.manifest_hash, "local_manifest_version": local_version,
                            "local_manifest_hash": local_hash, "runtime": p.runtime,
                            "runtime_version": p.runtime_version,
                            "readiness_scope": "targeted" if p.runtime is not None else "global_current",
                            "updated": [], "restarted": []}
    local_v = local_version if isinstance(local_version, int) else 0
    if p.manifest_version and local_v > p.manifest_version:
        raise AdminError("VERSION_MISMATCH", f"hive {target!r} holds manifest version {local_v}, newer than the "
                                             f"requested {p.manifest_version}")
    pairs, errors = _scope(p, runtimes)
    for name, version in pairs:
        errors += _version_health(name, runtimes[name], version)
    targeted = _health("targeted", p.runtime, pairs[0][1] if p.runtime and pairs else p.runtime_version,
                       errors) if p.runtime is not None else None
    global_errors = errors if p.runtime is None else [
        e for name, entry in sorted(runtimes.items()) if isinstance(entry.get("current"), str)
        for e in _version_health(name, entry, entry["current"])]
    head.update(targeted_runtime_health=targeted,
                global_runtime_health=_health("global_current", None, None, global_errors))
    if (p.manifest_version and local_v < p.manifest_version) or local_hash != p.manifest_hash:
        return {**head, "status": "sync_pending", "unchanged": [], "errors": errors,
                "message": f"hive {target!r} holds manifest version {local_version} hash {local_hash}, not the "
                           f"requested {p.manifest_version} {p.manifest_hash}; nothing copies another hive's "
                           "store here: install the packages into this hive's store"}
    if errors:
        return {**head, "status": "sync_pending", "unchanged": [], "errors": errors,
                "message": "the manifest matches but runtimes in scope are not ready to launch"}
    return {**head, "status": "ok", "unchanged": [f"{n}@{v}" for n, v in pairs], "errors": []}


IN_USE_STATES: Final = frozenset(("RUNNING", "STARTING"))


async def remove_runtime_version(ctx: Context, target: str, p: s.RuntimeVersionParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    if not RUNTIME_NAME_RE.match(p.runtime) or not VERSION_RE.match(p.runtime_version):
        raise AdminError("INVALID_REQUEST", f"runtime {p.runtime!r} or version {p.runtime_version!r} is not a valid "
                                            "name/version token")
    if p.runtime_version == "current":
        raise AdminError("RUNTIME_CURRENT_CONFLICT", "name the version to delete; `current` is not removable")
    runtimes = (await ctx.backend.runtimes()).get("runtimes") or {}
    entry = runtimes.get(p.runtime)
    if not isinstance(entry, dict):
        raise AdminError("RUNTIME_NOT_FOUND", f"runtime {p.runtime!r} is not in hive {target!r}'s store")
    available = list(entry.get("available") or [])
    if p.runtime_version not in available:
        raise AdminError("RUNTIME_VERSION_NOT_FOUND", f"runtime {p.runtime!r} has no version {p.runtime_version!r} "
                                                      f"(available: {', '.join(available) or 'none'})")
    if p.runtime_version == entry.get("current") and len(available) > 1:
        raise AdminError("RUNTIME_CURRENT_CONFLICT", f"{p.runtime} {p.runtime_version} is the current version; make "
                                                     "another one current first (the last version may be deleted)")
    dependents = sorted(n for n, e in runtimes.items() if isinstance(e, dict) and e.get("runtime_base") == p.runtime)
    if dependents:
        raise AdminError("RUNTIME_HAS_DEPENDENTS", f"{', '.join(dependents)} run on {p.runtime} (runtime_base)")
    _, observed = await observe(ctx)
    users = sorted(o.node_name for o in observed if o.runtime.get("name") == p.runtime
                   and o.runtime.get("resolved_version") == p.runtime_version and o.lifecycle_state in IN_USE_STATES)
    if users:
        raise AdminError("RUNTIME_IN_USE", f"{p.runtime} {p.runtime_version} is used by {', '.join(users)}")

    async def work() -> dict[str, Any]:
        done = await ctx.backend.remove_runtime_version(p.runtime, p.runtime_version)
        return {"status": "ok", "owner_hive": target, "runtime": p.runtime, "removed_version": p.runtime_version,
                **done, "convergence_status": "owner_updated"}

    return await record_change(ctx, call, "runtime", "remove_runtime_version", time.time(), work(),
                               {"runtime": p.runtime, "version": p.runtime_version})
