"""The router-config actions: static routes and VPN rules, entry by entry or replaced whole.

Edits are read-modify-write of a list on the router: one lock per hive in this process, and a retry
with a fresh read when another admin replica changed the list in between, so no edit is lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fluxbee.admin import global_config
from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import HIVE_ID_RE, Call, Context, check_hive, record_change
from fluxbee.admin.backend import LIST_CHANGED
from fluxbee.admin.errors import AdminError


async def _router_lists(ctx: Context) -> dict[str, Any]:
    return await ctx.route_config().lists()


async def _apply(ctx: Context, subsystem: str, items: list[dict[str, Any]], version: int = 0) -> dict[str, Any]:
    return _applied(await ctx.route_config().apply(subsystem, items, version))


def _applied(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("status") != "ok":
        code = str(reply.get("error_code") or "CONFIG_FAILED")
        code = {"STALE_VERSION": "VERSION_MISMATCH", "INVALID_CONFIG": "INVALID_CONFIG",
                "INVALID_PAYLOAD": "INVALID_REQUEST", "FORBIDDEN": "FORBIDDEN",
                LIST_CHANGED: "BUSY"}.get(code, "CONFIG_FAILED")
        raise AdminError(code, str(reply.get("error_detail") or "the router refused the config"))
    return reply


EDIT_RETRIES = 30
"""Attempts of one route/VPN edit while other admin replicas keep changing the list: each lost
attempt means another edit was made, so only a long queue of them on the other side exhausts this."""


async def _edit(ctx: Context, section: _Section,
                change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> dict[str, Any]:
    """Apply ``change`` to the current list of ``section``; read again and redo it when another
    writer (an admin replica) changed the list in between, so no one's edit is lost."""
    for attempt in range(EDIT_RETRIES):
        items = (await _router_lists(ctx))[section.name]
        reply = await ctx.route_config().apply(section.subsystem, change(items), 0, base=items)
        if reply.get("error_code") != LIST_CHANGED:
            return _applied(reply)
        await asyncio.sleep(random.uniform(0.0, 0.02 * min(attempt + 1, 10)))  # out of step with the winner
    raise AdminError("BUSY", f"the {section.name} kept changing under {EDIT_RETRIES} attempts; try again")


async def list_routes(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    lists = await _router_lists(ctx)
    return {"status": "ok", "hive": target, "config_version": lists["config_version"], "routes": lists["routes"]}


async def list_vpns(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    lists = await _router_lists(ctx)
    return {"status": "ok", "hive": target, "config_version": lists["config_version"], "vpns": lists["vpns"]}


def _route_dict(r: s.RouteBody) -> dict[str, Any]:
    return r.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class _Section:
    """One list of the router config the admin API edits entry by entry: routes or VPN rules."""

    name: str  # key in the router's lists and in history: "routes" | "vpns"
    subsystem: str  # CONFIG_CHANGED subsystem
    key: str  # the field that identifies an entry
    duplicate: str  # error code when the key exists
    what: str  # for messages


_ROUTES = _Section("routes", "routes", "prefix", "DUPLICATE_PREFIX", "route")
_VPNS = _Section("vpns", "vpn", "pattern", "DUPLICATE_PATTERN", "VPN rule")


async def _add_entry(ctx: Context, target: str, call: Call, section: _Section, action: str,
                     entry: dict[str, Any], answer_key: str) -> dict[str, Any]:
    """Append ``entry`` to a section unless its key is taken, and apply the result on the router."""
    value = entry[section.key]

    def change(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(i[section.key] == value for i in items):
            raise AdminError(section.duplicate, f"a {section.what} for {value!r} exists; delete it first")
        return [*items, entry]

    async def work() -> dict[str, Any]:
        async with ctx.route_lock(target):
            reply = await _edit(ctx, section, change)
        return {"status": "ok", "hive": target, "config_version": reply.get("config_version"), answer_key: entry}

    return await record_change(ctx, call, section.name, action, time.time(), work(), {section.key: value})


async def _delete_entry(ctx: Context, target: str, call: Call, section: _Section, action: str,
                        value: str) -> dict[str, Any]:
    """Remove the entry whose key is ``value`` from a section and apply the result on the router."""

    def change(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [i for i in items if i[section.key] != value]
        if len(kept) == len(items):
            raise AdminError("NOT_FOUND", f"no {section.what} for {value!r}")
        return kept

    async def work() -> dict[str, Any]:
        async with ctx.route_lock(target):
            reply = await _edit(ctx, section, change)
        return {"status": "ok", "hive": target, "config_version": reply.get("config_version"), section.key: value}

    return await record_change(ctx, call, section.name, action, time.time(), work(), {section.key: value})


async def add_route(ctx: Context, target: str, p: s.RouteBody, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    if p.next_hop_hive is not None and not HIVE_ID_RE.match(p.next_hop_hive):
        raise AdminError("INVALID_REQUEST", f"next_hop_hive {p.next_hop_hive!r} is not a hive id")
    return await _add_entry(ctx, target, call, _ROUTES, "add_route", _route_dict(p), "route")


async def delete_route(ctx: Context, target: str, p: s.DeleteRouteParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    return await _delete_entry(ctx, target, call, _ROUTES, "delete_route", p.prefix)


async def add_vpn(ctx: Context, target: str, p: s.VpnBody, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    return await _add_entry(ctx, target, call, _VPNS, "add_vpn", p.model_dump(mode="json"), "vpn")


async def delete_vpn(ctx: Context, target: str, p: s.DeleteVpnParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    return await _delete_entry(ctx, target, call, _VPNS, "delete_vpn", p.pattern)


async def set_config_routes(ctx: Context, target: str, p: s.ConfigRoutesParams, call: Call) -> dict[str, Any]:
    """On a hive without a mother the change is global: applied here, then on every other hive
    (:mod:`fluxbee.admin.global_config`); on a worker it changes the worker only, until its mother's
    next global version."""
    await check_hive(ctx, target)
    gc = ctx.global_config
    if gc is None or (await ctx.backend.hive_info()).get("mother_hive"):
        return await _set_config_here(ctx, target, p, call)
    return await global_config.put_global(
        ctx, gc, p.version, None if p.routes is None else [_route_dict(r) for r in p.routes],
        None if p.vpns is None else [v.model_dump(mode="json") for v in p.vpns],
        lambda: _set_config_here(ctx, target, p, call))


async def _set_config_here(ctx: Context, target: str, p: s.ConfigRoutesParams, call: Call) -> dict[str, Any]:

    async def work() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "hive": target}
        async with ctx.route_lock(target):
            if p.routes is not None:
                reply = await _apply(ctx, "routes", [_route_dict(r) for r in p.routes], p.version or 0)
                out.update(routes_version=reply.get("version"), config_version=reply.get("config_version"))
            if p.vpns is not None:
                reply = await _apply(ctx, "vpn", [v.model_dump(mode="json") for v in p.vpns], p.version or 0)
                out.update(vpns_version=reply.get("version"), config_version=reply.get("config_version"))
        return out

    return await record_change(ctx, call, "routes", "set_config_routes", time.time(), work(),
                         {"routes": None if p.routes is None else len(p.routes),
                          "vpns": None if p.vpns is None else len(p.vpns), "version": p.version})


async def set_config_vpns(ctx: Context, target: str, p: s.ConfigVpnsParams, call: Call) -> dict[str, Any]:
    return await set_config_routes(ctx, target, s.ConfigRoutesParams(vpns=p.vpns, version=p.version), call)

