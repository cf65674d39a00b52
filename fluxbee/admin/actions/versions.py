"""The version actions: core and runtime versions of a hive and the runtimes in its store."""

from __future__ import annotations

from typing import Any

from fluxbee import __version__
from fluxbee.admin import schemas as s
from fluxbee.admin import wan
from fluxbee.admin.actions.common import Call, Context, check_hive, observe
from fluxbee.admin.errors import AdminError


async def _hive_versions(ctx: Context) -> dict[str, Any]:
    return {"hive_id": ctx.backend.hive_id,
            "core": {"status": "ok", "schema_version": 1, "version": __version__, "manifest_hash": None,
                     "components": {"fluxbee": __version__}},
            "runtimes": await ctx.backend.runtimes(),
            "vendor": {"status": "missing", "components": {}, "syncthing_present": False}}


async def get_versions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    """The hive's versions (``hive``), and the runtimes again as a flat ``versions`` list of
    ``{runtime, current, available, type}``: the shape the original's older scripts read."""
    await check_hive(ctx, target)
    hive = await _hive_versions(ctx)
    runtimes = hive["runtimes"].get("runtimes") or {}
    flat = [{"runtime": name, "current": entry.get("current"), "available": entry.get("available", []),
             "type": entry.get("type", "full_runtime")} for name, entry in sorted(runtimes.items())]
    return {"status": "ok", "hive": hive, "versions": flat}


async def list_versions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    """This hive's versions, then every other hive's, asked over the links (a row with the error for a
    hive that cannot be asked)."""
    others = await wan.known_hives(ctx.link, await ctx.backend.remote_hives()) - {ctx.backend.hive_id}
    rows: list[dict[str, Any]] = [await _hive_versions(ctx), *await wan.remote_versions(ctx.link, others)]
    return {"status": "ok", "hives": rows}


async def _runtime_rows(ctx: Context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    info = await ctx.backend.runtimes()
    rows = []
    for name, entry in sorted(info.get("runtimes", {}).items()):
        readiness = entry.get("readiness", {})
        materialized = [v for v, r in readiness.items() if r.get("runtime_present") and r.get("start_sh_executable")]
        current = entry.get("current")
        rows.append({"runtime": name, "current": current, "available": entry.get("available", []),
                     "type": entry.get("type"), "runtime_base": entry.get("runtime_base"), "readiness": readiness,
                     "materialization_summary": {"known_versions": len(entry.get("available", [])),
                                                 "materialized_versions": len(materialized),
                                                 "current_version": current,
                                                 "current_materialized": current in materialized,
                                                 "current_blocking_reason": None if current in materialized
                                                 else "missing_start_script"}})
    return info, rows


async def list_runtimes(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    info, rows = await _runtime_rows(ctx)
    return {"status": "ok", "hive_id": target, "manifest_version": info.get("manifest_version"),
            "manifest_hash": info.get("manifest_hash"), "runtimes": rows}


async def get_runtime(ctx: Context, target: str, p: s.RuntimeParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    info, rows = await _runtime_rows(ctx)
    row = next((r for r in rows if r["runtime"] == p.runtime), None)
    if row is None:
        raise AdminError("RUNTIME_NOT_FOUND", f"runtime {p.runtime!r} is not in the store")
    _, observed = await observe(ctx)
    running = [{"node_name": o.node_name, "hive": o.hive, "runtime": o.runtime.get("name"),
                "runtime_version": o.runtime.get("resolved_version"), "lifecycle": o.lifecycle_state}
               for o in observed if o.runtime.get("name") == p.runtime]
    return {"status": "ok", "hive_id": target, "manifest_version": info.get("manifest_version"),
            "manifest_hash": info.get("manifest_hash"), "runtime": p.runtime, **row,
            "usage": {"scope": "hive_local_visible", "in_use": bool(running),
                      "running_count": sum(1 for r in running if r["lifecycle"] == "RUNNING"),
                      "running_nodes": running}}

