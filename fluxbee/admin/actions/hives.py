"""The hive actions: this hive's status, the other hives and the links to them, and actions run on
another hive over the links.

``GET /hives`` merges the hives registered here with what the router's link state shows (each
link's state, last advert and round-trip time; hives reached through a transit hive too);
``POST /hives`` links a worker by its gateway address (the router's ``LINK_ADD``), ``DELETE
/hives/{h}`` unlinks it (``LINK_REMOVE``).  A Kubernetes backend registers a worker as a Hive
resource instead: there the links come from the Hives' ``spec.wan``.  :func:`relay_to` runs a
hive-scoped action on another hive (:mod:`fluxbee.admin.remote`), :func:`authorise_remote`
decides whether a command that came from another hive may run here.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fluxbee import __version__
from fluxbee.admin import remote, wan
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


async def hive_list(ctx: Context) -> list[dict[str, Any]]:
    """This hive, the registered ones and every hive the links reach, each with its link state."""
    return wan.hive_rows(await _local_hive_row(ctx), await ctx.backend.remote_hives(), await wan.wan_view(ctx.link))


async def list_hives(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    return {"status": "ok", "hives": await hive_list(ctx)}


async def get_hive(ctx: Context, target: str, p: s.HiveIdParams, call: Call) -> dict[str, Any]:
    row = next((r for r in await hive_list(ctx) if r["hive_id"] == p.hive_id), None)
    if row is None:
        raise AdminError("NOT_FOUND", f"hive {p.hive_id!r} is not known")
    return {"status": "ok", "hive": row}


def _links_by_router(ctx: Context) -> bool:
    """Local hives link through their router; in a cluster a worker is a Hive resource whose
    ``spec.wan`` the operator turns into links."""
    return ctx.backend.kind == "local"


async def _unlink(ctx: Context, hive_id: str) -> Any:
    """Take the router's link to ``hive_id`` down; a registered hive that never had a link (this hive
    has no WAN gateway, or the link was never made) is still removed."""
    if not _links_by_router(ctx):
        return "not_by_router"
    try:
        return await wan.link_remove(ctx.link, hive_id)
    except AdminError as err:
        if err.code in ("MISSING_WAN_LISTEN", "NOT_FOUND"):
            return "no_link"
        raise


async def add_hive(ctx: Context, target: str, p: s.AddHiveParams, call: Call) -> dict[str, Any]:
    if not HIVE_ID_RE.match(p.hive_id):
        raise AdminError("INVALID_HIVE_ID", f"hive_id {p.hive_id!r} must match {HIVE_ID_RE.pattern}")
    host, port = wan.parse_address(p.address)
    if p.hive_id == ctx.backend.hive_id or p.hive_id in await ctx.backend.remote_hives():
        raise AdminError("HIVE_EXISTS", f"hive {p.hive_id!r} already exists")
    address = wan.dial_address(host, port) if _links_by_router(ctx) else p.address

    async def work() -> dict[str, Any]:
        linked: dict[str, Any] = {"wan_connected": False, "link": None}
        if _links_by_router(ctx):  # the link first: a hive that cannot be linked is not registered
            linked = await wan.link_add(ctx.link, p.hive_id, address)
        record = {"hive_id": p.hive_id, "address": address, "created_at": str(int(time.time() * 1000)),
                  "status": "registered", "role": "worker", "is_local": False}
        try:
            done = await ctx.backend.add_remote_hive(record)
        except Exception:  # not registered: take the link back
            if _links_by_router(ctx):
                await wan.link_remove(ctx.link, p.hive_id)
            raise
        restrict = p.harden_ssh if p.restrict_ssh is None else p.restrict_ssh
        if _links_by_router(ctx):
            mode = "router_link"
            message = ("linked" if linked["wan_connected"] else
                       f"the router dials {address} and keeps trying until the worker's gateway answers")
        else:
            mode, message = done.get("bootstrap_mode", "registered_only"), done.get("message", "registered")
        return {"status": "ok", "hive_id": p.hive_id, "address": address, "harden_ssh": p.harden_ssh,
                "harden_ssh_applied": False, "restrict_ssh": restrict, "require_dist_sync": p.require_dist_sync,
                "dist_sync_probe_timeout_secs": p.dist_sync_probe_timeout_secs,
                "wan_connected": linked["wan_connected"], "link": linked["link"],
                "orchestrator_connected": linked["wan_connected"], "dist_sync_ready": False,
                "bootstrap_mode": mode, "message": message}

    return await record_change(ctx, call, "hive", "add_hive", time.time(), work(),
                               {"hive_id": p.hive_id, "address": address})


async def remove_hive(ctx: Context, target: str, p: s.HiveIdParams, call: Call) -> dict[str, Any]:
    if p.hive_id == ctx.backend.hive_id:
        raise AdminError("INVALID_REQUEST", "the local hive cannot be removed")
    record = (await ctx.backend.remote_hives()).get(p.hive_id)
    if record is None and not HIVE_ID_RE.match(p.hive_id):  # a record kept from a looser rule can still go
        raise AdminError("INVALID_HIVE_ID", f"hive_id {p.hive_id!r} must match {HIVE_ID_RE.pattern}")
    view = await wan.wan_view(ctx.link)
    if record is None and view.link_to(p.hive_id) is None:
        raise AdminError("NOT_FOUND", f"hive {p.hive_id!r} is neither registered nor linked")

    async def work() -> dict[str, Any]:
        unlinked = await _unlink(ctx, p.hive_id)
        if record is not None:
            await ctx.backend.remove_remote_hive(p.hive_id)
        return {"status": "ok", "hive_id": p.hive_id, "address": (record or {}).get("address"),
                "link": unlinked, "remote_cleanup": "local_only", "remote_cleanup_via": "local_only"}

    return await record_change(ctx, call, "hive", "remove_hive", time.time(), work(), {"hive_id": p.hive_id})


async def relay_to(ctx: Context, hive: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run a hive-scoped action on another hive over the links (its envelope's payload or error)."""
    try:
        return await remote.relay(ctx.link, hive, action, params)
    except AdminError as err:
        if err.code == "HIVE_NOT_CONNECTED" and hive not in await ctx.backend.remote_hives():
            raise AdminError("NOT_FOUND", f"hive {hive!r} is not known: not registered here and not reached "
                                          f"by the links ({err.detail})") from err
        raise


async def authorise_remote(ctx: Context, sender: str, action: str, target: str | None) -> None:
    """FORBIDDEN unless ``sender`` (another hive's node, as the router stamped it) may run ``action`` here."""
    mother = (await ctx.backend.hive_info()).get("mother_hive")
    remote.authorise(sender, action=action, target=target, local_hive=ctx.backend.hive_id,
                     mother_hive=mother if isinstance(mother, str) and mother else None,
                     known_hives=(await wan.wan_view(ctx.link)).reachable)
