"""The hive actions: this hive's status and the registry of worker hives (add, list, remove)."""

from __future__ import annotations

import ipaddress
import os
import re
import time
from typing import Any

from fluxbee import __version__
from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, record_change, router_visible
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane.names import HIVE_ID_RE


async def hive_status(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    visible, status = await router_visible(ctx)
    router = status.get("router") if status else None
    return {"status": "ok", "hive_id": ctx.backend.hive_id, "pid": os.getpid(),
            "uptime_ms": int((time.time() - ctx.started_at) * 1000), "backend": ctx.backend.kind,
            "version": __version__, "router": router, "router_connected": status is not None,
            "node_count": len(visible)}


async def _local_hive_row(ctx: Context) -> dict[str, Any]:
    return {"status": "alive", **await ctx.backend.hive_info(), "is_local": True}


async def list_hives(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    rows = [await _local_hive_row(ctx), *(await ctx.backend.remote_hives()).values()]
    return {"status": "ok", "hives": sorted(rows, key=lambda r: str(r["hive_id"]))}


async def get_hive(ctx: Context, target: str, p: s.HiveIdParams, call: Call) -> dict[str, Any]:
    if p.hive_id == ctx.backend.hive_id:
        return {"status": "ok", "hive": await _local_hive_row(ctx)}
    record = (await ctx.backend.remote_hives()).get(p.hive_id)
    if record is None:
        raise AdminError("NOT_FOUND", f"hive {p.hive_id!r} is not known")
    return {"status": "ok", "hive": record}


def _valid_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        pass
    labels = address.split(".")
    return len(address) <= 253 and all(
        0 < len(label) <= 63 and re.fullmatch(r"[A-Za-z0-9-]+", label) and not label.startswith("-")
        and not label.endswith("-") for label in labels)


async def add_hive(ctx: Context, target: str, p: s.AddHiveParams, call: Call) -> dict[str, Any]:
    if not HIVE_ID_RE.match(p.hive_id):
        raise AdminError("INVALID_HIVE_ID", f"hive_id {p.hive_id!r} must match {HIVE_ID_RE.pattern}")
    if not _valid_address(p.address):
        raise AdminError("INVALID_ADDRESS", f"address {p.address!r} is neither an IP address nor a DNS name")
    if p.hive_id == ctx.backend.hive_id or p.hive_id in await ctx.backend.remote_hives():
        raise AdminError("HIVE_EXISTS", f"hive {p.hive_id!r} already exists")

    async def work() -> dict[str, Any]:
        record = {"hive_id": p.hive_id, "address": p.address, "created_at": str(int(time.time() * 1000)),
                  "status": "registered", "role": "worker", "is_local": False, "wan_connected": False}
        done = await ctx.backend.add_remote_hive(record)
        restrict = p.harden_ssh if p.restrict_ssh is None else p.restrict_ssh
        return {"status": "ok", "hive_id": p.hive_id, "address": p.address, "harden_ssh": p.harden_ssh,
                "harden_ssh_applied": False, "restrict_ssh": restrict, "require_dist_sync": p.require_dist_sync,
                "dist_sync_probe_timeout_secs": p.dist_sync_probe_timeout_secs, "wan_connected": False,
                "orchestrator_connected": False, "dist_sync_ready": False,
                "bootstrap_mode": done.get("bootstrap_mode", "registered_only"),
                "message": done.get("message", "registered")}

    return await record_change(ctx, call, "hive", "add_hive", time.time(), work(), {"hive_id": p.hive_id})


async def remove_hive(ctx: Context, target: str, p: s.HiveIdParams, call: Call) -> dict[str, Any]:
    if p.hive_id == ctx.backend.hive_id:
        raise AdminError("INVALID_REQUEST", "the local hive cannot be removed")
    record = (await ctx.backend.remote_hives()).get(p.hive_id)
    if record is None and not HIVE_ID_RE.match(p.hive_id):  # a record kept from a looser rule can still go
        raise AdminError("INVALID_HIVE_ID", f"hive_id {p.hive_id!r} must match {HIVE_ID_RE.pattern}")
    if record is None:
        raise AdminError("NOT_FOUND", f"hive {p.hive_id!r} is not known")

    async def work() -> dict[str, Any]:
        await ctx.backend.remove_remote_hive(p.hive_id)
        return {"status": "ok", "hive_id": p.hive_id, "address": record.get("address"),
                "remote_cleanup": "local_only", "remote_cleanup_via": "local_only"}

    return await record_change(ctx, call, "hive", "remove_hive", time.time(), work(), {"hive_id": p.hive_id})

