"""The admin actions: one handler each, shared by HTTP and the ``ADMIN_COMMAND`` socket twin.

:data:`ACTIONS` is the registry (served by ``GET /admin/actions``) and :data:`ROUTES` maps the
original's HTTP paths onto it; the OpenAPI document is generated from both.  Handlers validate
their ``params`` with the action's model, raise :class:`AdminError` with a specific code, and
return the payload of the envelope.  Reads take no lock; changes to the router config take one
lock per hive (they are read-modify-write of the route list).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from fluxbee import __version__
from fluxbee.admin import schemas as s
from fluxbee.admin.backend import LIST_CHANGED, Backend, NodeObservation, RouteConfig, RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.admin.history import DEPLOYMENTS, History, HistoryUnavailable, Journal
from fluxbee.admin.link import RouterRoutes
from fluxbee.admin.node_identity import SpawnIdentity
from fluxbee.dataplane import wire
from fluxbee.dataplane.names import HIVE_ID_RE, IDENTITY_NODE, NODE_TYPES, is_reserved
from fluxbee.models import validate_node_name

log = logging.getLogger(__name__)

REGISTRY_VERSION = "6"
NODE_STATUS_TIMEOUT = 2.0


@dataclass(slots=True)
class Context:
    backend: Backend
    link: RouterLink
    history: History
    routes: RouteConfig | None = None
    """Where routes/VPNs live; default: the router's live config through ``link``."""
    started_at: float = field(default_factory=time.time)
    route_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def route_lock(self, hive: str) -> asyncio.Lock:
        return self.route_locks.setdefault(hive, asyncio.Lock())

    def route_config(self) -> RouteConfig:
        return self.routes if self.routes is not None else RouterRoutes(self.link)


@dataclass(frozen=True, slots=True)
class Call:
    """Who asks: ``trigger`` is ``admin_api`` (HTTP) or ``admin_command`` (socket)."""

    trigger: str
    actor: str


Handler = Callable[[Context, str, Any, Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    handler: Handler
    params: type[s.Params]
    summary: str
    read_only: bool
    requires_target: bool
    confirmation_required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP method+path and how its parts become the action's target and params."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    action: str
    path_params: dict[str, str] = field(default_factory=dict)
    """URL variable → params field (``hive`` always becomes the target)."""
    query: dict[str, type] = field(default_factory=dict)
    """Query parameter → type (str, int, bool)."""
    body: Literal["none", "fields", "config"] = "none"
    """``fields``: the JSON object's keys are params; ``config``: the object is ``params.config``."""
    body_required: bool = False


# helpers ---------------------------------------------------------------------
def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _check_hive(ctx: Context, hive: str) -> None:
    if hive == ctx.backend.hive_id:
        return
    if hive in await ctx.backend.remote_hives():
        raise AdminError("HIVE_NOT_CONNECTED", f"hive {hive!r} is registered but not connected: "
                                               "this hive has no WAN gateway link to it")
    raise AdminError("NOT_FOUND", f"hive {hive!r} is not known (this hive is {ctx.backend.hive_id!r})")


def _node_name(ctx: Context, hive: str, raw: str) -> str:
    local, sep, suffix = raw.rpartition("@")
    if sep and suffix != hive:
        raise AdminError("INVALID_REQUEST", f"node {raw!r} names hive {suffix!r}, but the request targets {hive!r}")
    name = raw if sep else f"{raw}@{hive}"
    try:
        validate_node_name(name)
    except ValueError as err:
        raise AdminError("INVALID_REQUEST", str(err)) from err
    return name


async def _visible(ctx: Context) -> tuple[set[str], dict[str, Any] | None]:
    try:
        status = await ctx.link.router_status()
    except AdminError:
        return set(), None
    return {n["name"] for n in status.get("nodes", [])}, status


async def _observe(ctx: Context, only: str | None = None) -> tuple[set[str], list[NodeObservation]]:
    """The router-visible names and the backend's nodes (told when the router is out of reach)."""
    visible, status = await _visible(ctx)
    return visible, await ctx.backend.observe(visible if status is not None else None, only)


def _find(observations: list[NodeObservation], name: str) -> NodeObservation | None:
    return next((o for o in observations if o.node_name == name), None)


async def _record(ctx: Context, call: Call, category: str, action: str, started: float,
                  work: Awaitable[dict[str, Any]], detail: dict[str, Any]) -> dict[str, Any]:
    """Run a change and write its deployment entry, whatever the outcome.

    The history is reserved first: a change that could not be recorded is not made (it was
    made, then answered 500, when the history was written after it). A change that fails on a
    write of its own answers ``STATE_WRITE_FAILED``; the backends leave nothing half-applied."""
    try:
        journal = await ctx.history.open(DEPLOYMENTS)
    except HistoryUnavailable as err:
        if isinstance(work, Coroutine):
            work.close()  # never started
        raise AdminError("STATE_WRITE_FAILED", f"the change cannot be recorded in {err.where}: "
                                               f"{err.detail}; nothing was changed") from err
    try:
        try:
            result = await work
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise AdminError("STATE_WRITE_FAILED", f"the change could not be written{where}: {err.strerror or err}"
                             ) from err
    except AdminError as err:
        await _write_entry(ctx, journal, category=category, action=action, actor=call.actor, trigger=call.trigger,
                           started=started, result="error",
                           detail={**detail, "error_code": err.code, "error_detail": err.detail})
        raise
    else:
        await _write_entry(ctx, journal, category=category, action=action, actor=call.actor, trigger=call.trigger,
                           started=started, result="ok", detail=detail)
        return result
    finally:
        journal.close()


async def _write_entry(ctx: Context, journal: Journal, **entry: Any) -> None:
    """The change is decided (made or refused): its answer must say so even if the entry is lost."""
    try:
        await ctx.history.deployment(journal=journal, **entry)
    except HistoryUnavailable as err:
        log.error("the %s change is done (%s) but its history entry could not be written: %s", entry["action"],
                  entry["result"], err)


# hive / system -----------------------------------------------------------------
async def hive_status(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    visible, status = await _visible(ctx)
    router = status.get("router") if status else None
    return {"status": "ok", "hive_id": ctx.backend.hive_id, "pid": os.getpid(),
            "uptime_ms": int((time.time() - ctx.started_at) * 1000), "backend": ctx.backend.kind,
            "version": __version__, "router": router, "router_connected": status is not None,
            "node_count": len(visible)}


async def list_admin_actions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    return {"status": "ok", "registry_version": REGISTRY_VERSION, "actions": [_describe(a) for a in ACTIONS.values()]}


async def get_admin_action_help(ctx: Context, target: str, p: s.ActionHelpParams, call: Call) -> dict[str, Any]:
    action = ACTIONS.get(p.action_name)
    if action is None:
        raise AdminError("ACTION_NOT_FOUND", f"no action {p.action_name!r}")
    return {"status": "ok", "registry_version": REGISTRY_VERSION, "entry": _describe(action)}


def _describe(action: Action) -> dict[str, Any]:
    routes = [r for r in ROUTES if r.action == action.name]
    schema = action.params.model_json_schema()
    required = list(schema.get("required", []))
    optional = [k for k in schema.get("properties", {}) if k not in required]
    return {"action": action.name, "handler": action.handler.__name__, "canonical_action": action.name,
            "requires_target": action.requires_target, "read_only": action.read_only,
            "confirmation_required": action.confirmation_required, "summary": action.summary,
            "path_patterns": [f"{r.method} {r.path}" for r in routes],
            "request_contract": {"transport": ["http", "admin_command"] if routes else ["admin_command"],
                                 "body": {"kind": "object", "required_fields": required,
                                          "optional_fields": optional}}}


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

    return await _record(ctx, call, "hive", "add_hive", time.time(), work(), {"hive_id": p.hive_id})


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

    return await _record(ctx, call, "hive", "remove_hive", time.time(), work(), {"hive_id": p.hive_id})


# nodes -------------------------------------------------------------------------
def _row(o: NodeObservation) -> dict[str, Any]:
    kind = o.node_name.split(".", 1)[0]
    return {"name": o.node_name, "node_name": o.node_name, "hive": o.hive,
            "kind": kind if kind in NODE_TYPES else "UNKNOWN", "managed": o.managed,
            "status": o.lifecycle_state.lower(), "lifecycle_state": o.lifecycle_state,
            "visible_in_router": o.visible_in_router,
            "runtime": {"name": o.runtime.get("name"), "version": o.runtime.get("resolved_version")}}


async def list_nodes(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    visible, status = await _visible(ctx)
    observed = await ctx.backend.observe(visible if status is not None else None)
    rows = [_row(o) for o in observed]
    known = {o.node_name for o in observed}
    by_name: dict[str, dict[str, Any]] = {}
    for n in (status or {}).get("nodes", []):
        by_name.setdefault(n["name"], n)
    for name in sorted(visible - known):  # connected but not declared (clients, SY.* services, tests)
        n = by_name[name]
        kind = name.split(".", 1)[0]
        rows.append({"name": name, "node_name": name, "hive": target, "managed": False, "uuid": n.get("uuid"),
                     "kind": kind if kind in NODE_TYPES else "UNKNOWN",
                     "vpn_id": n.get("vpn_id"), "status": "running", "lifecycle_state": "RUNNING",
                     "visible_in_router": True, "runtime": None})
    for row in rows:
        n = by_name.get(row["name"])
        if n is not None:
            row.update(uuid=n.get("uuid"), vpn_id=n.get("vpn_id"), connected_at=n.get("connected_at_ms"))
    rows.sort(key=lambda r: str(r["name"]))
    return {"status": "ok", "target": target, "hive": target,
            "inventory_source": "router" if status is not None else "managed_instances_fallback",
            "node_count": len(rows), "nodes": rows}


async def run_node(ctx: Context, target: str, p: s.SpawnNodeParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)
    if is_reserved(name):
        raise AdminError("INVALID_REQUEST", "SY.* and RT.* nodes are the hive's own; they cannot be spawned")
    if "_system" in p.config:
        raise AdminError("INVALID_CONFIG", "config may not set `_system`: the hive fills it in")
    _check_deliverable(name, p.config, "the config")
    identity = SpawnIdentity(ctx.link, ctx.backend.hive_id, target, name, _spawn_tenant(p))

    async def work() -> dict[str, Any]:
        result = await ctx.backend.spawn_node(name, p, identity.register)
        return {"status": "ok", "state": "started", "target": target, "hive": target, "node_name": name, **result,
                "identity": identity.report}

    return await _record(ctx, call, "node", "run_node", time.time(), work(),
                         {"node_name": name, "runtime": p.runtime, "runtime_version": p.runtime_version})


def _spawn_tenant(p: s.SpawnNodeParams) -> str | None:
    """The node's tenant: ``tenant_id``, else ``config.tenant_id`` (the original's order); the node's config
    carries one tenant, so two different ones are refused rather than registering the ILK in the other."""
    in_config = p.config.get("tenant_id")
    if in_config is not None and not isinstance(in_config, str):
        raise AdminError("INVALID_REQUEST", "config.tenant_id must be a string `tnt:<uuid>`")
    if p.tenant_id is not None and in_config is not None and in_config != p.tenant_id:
        raise AdminError("INVALID_REQUEST", f"tenant_id {p.tenant_id!r} and config.tenant_id {in_config!r} differ; "
                                            "give one tenant")
    return p.tenant_id or in_config


async def kill_node(ctx: Context, target: str, p: s.KillNodeParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)

    async def work() -> dict[str, Any]:
        result = await ctx.backend.kill_node(name, p)
        return {"status": "ok", "hive": target, "target": target, "node_name": name,
                "signal": "SIGKILL" if p.force else p.signal, "force": p.force,
                "purge_instance": p.purge_instance, **result}

    return await _record(ctx, call, "node", "kill_node", time.time(), work(), {"node_name": name})


async def get_node_status(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)
    visible, observed = await _observe(ctx, name)
    o = _find(observed, name)
    if o is None:
        if name not in visible:
            raise AdminError("NODE_NOT_FOUND", f"node {name} is neither declared nor connected")
        o = NodeObservation(node_name=name, hive=target, managed=False, lifecycle_state="RUNNING",
                            visible_in_router=True, runtime={"name": None, "requested_version": None,
                                                             "resolved_version": None})
    health, source, last_error, extensions = "UNKNOWN", "UNKNOWN", None, None
    health_error: dict[str, str] | None = None
    if o.lifecycle_state == "RUNNING":
        try:
            reported = await ctx.link.node_status(name, NODE_STATUS_TIMEOUT)
        except AdminError as err:  # no router in reach: health is not known, and we say why
            reported, health_error = None, {"error_code": err.code, "error_detail": err.detail}
        if reported is not None:
            inner = reported.get("payload") if isinstance(reported.get("payload"), dict) else {}
            value = reported.get("health_state") or (inner or {}).get("health_state")
            if value in ("HEALTHY", "DEGRADED", "ERROR", "UNKNOWN"):
                health, source = str(value), "NODE_REPORTED"
                last_error = reported.get("last_error")
                extensions = reported.get("extensions")
        if source == "UNKNOWN" and health_error is None:
            source = "ORCHESTRATOR_INFERRED"
            if o.config_path is not None and not o.config_valid:
                health = "ERROR"
            elif isinstance(o.state, dict) and o.state.get("last_error"):
                health, last_error = "DEGRADED", str(o.state["last_error"])
            else:
                health = "HEALTHY"
    system = (o.config or {}).get("_system", {}) if isinstance(o.config, dict) else {}
    fingerprint = json.dumps([o.lifecycle_state, health, source, o.runtime, o.config_valid,
                              system.get("config_version"), o.state_exists, o.process.get("pid"),
                              o.process.get("exit_code"), o.process.get("restart_count"),
                              o.process.get("started_at"), system.get("ilk_id"), system.get("tenant_id"),
                              last_error], sort_keys=True, default=str)
    version = ctx.backend.bump_status_version(name, hashlib.sha256(fingerprint.encode()).hexdigest())
    node_status: dict[str, Any] = {
        "schema_version": "1", "node_name": name, "hive_id": target, "observed_at": _now_iso(),
        "lifecycle_state": o.lifecycle_state, "health_state": health, "health_source": source,
        "status_version": version, "runtime": o.runtime, "process": o.process, "managed": o.managed,
        "visible_in_router": o.visible_in_router,
        "config": {"path": o.config_path, "exists": o.config is not None, "valid": o.config_valid,
                   "config_version": system.get("config_version"), "updated_at_ms": system.get("updated_at_ms")},
        "state": {"path": o.state_path, "exists": o.state_exists},
        "identity": {"ilk_id": system.get("ilk_id"), "tenant_id": system.get("tenant_id")},
    }
    if last_error:
        node_status["last_error"] = last_error
    if extensions:
        node_status["extensions"] = extensions
    if health_error is not None:
        node_status["health_error"] = health_error
    return {"status": "ok", "target": target, "hive": target, "node_name": name, "node_status": node_status}


async def _observed(ctx: Context, target: str, raw: str) -> NodeObservation:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, raw)
    _, observed = await _observe(ctx, name)
    o = _find(observed, name)
    if o is None:
        raise AdminError("NODE_NOT_FOUND", f"node {name} is not declared in this hive")
    return o


async def get_node_config(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    o = await _observed(ctx, target, p.node_name)
    if o.config is None:
        raise AdminError("NODE_CONFIG_NOT_FOUND", f"node {o.node_name} has no config file at {o.config_path}")
    system = o.config.get("_system", {})
    return {"status": "ok", "target": target, "hive": target, "node_name": o.node_name, "path": o.config_path,
            "config_version": system.get("config_version") if isinstance(system, dict) else None,
            "config": o.config}


NODE_CONFIG_LIMIT = wire.PAYLOAD_BUDGET - 1024
"""Largest encoded node config the admin API writes: the node must be able to receive it (CONFIG_CHANGED)
and to answer CONFIG_GET with it and ~0.5 KiB of contract, each in one 128 KiB frame."""


def _check_deliverable(node: str, config: dict[str, Any], what: str) -> None:
    """Refuse, before anything is written, a config the node could never be sent or serve."""
    size = len(wire.encode(config))
    if size > NODE_CONFIG_LIMIT:
        raise AdminError("PAYLOAD_TOO_LARGE", f"{what} of {node} would be {size} bytes encoded; a node config must "
                                              f"fit in one frame: at most {NODE_CONFIG_LIMIT} bytes; nothing written")


async def set_node_config(ctx: Context, target: str, p: s.SetNodeConfigParams, call: Call) -> dict[str, Any]:
    o = await _observed(ctx, target, p.node_name)
    if "_system" in p.config:
        raise AdminError("INVALID_CONFIG", "the patch may not set `_system`: the hive maintains it")
    if not o.managed:
        raise AdminError("NODE_NOT_MANAGED", f"node {o.node_name} is declared in the hive file; change it there")
    current = o.config if isinstance(o.config, dict) else {}
    system = {"_system": current["_system"]} if "_system" in current else {}
    _check_deliverable(o.node_name, {**(current if not p.replace else system), **p.config}, "the new config")

    async def work() -> dict[str, Any]:
        result = await ctx.backend.set_node_config(o.node_name, p.config, p.replace)
        notify_status = "skipped"
        if p.notify:
            try:
                await ctx.link.send(o.node_name, {"subsystem": "node_config", "action": "set", "auto_apply": True,
                                                  "version": result["config_version"],
                                                  "config": {"node_name": o.node_name, "patch": p.config}},
                                    msg_type="system", msg="CONFIG_CHANGED", meta={}, ttl=16)
                notify_status = "sent"
            except AdminError as err:
                notify_status = f"dispatch_failed: {err.detail}"
        return {"status": "ok", "target": target, "hive": target, "node_name": o.node_name,
                "notify_status": notify_status, **result}

    return await _record(ctx, call, "node_config", "set_node_config", time.time(), work(),
                         {"node_name": o.node_name, "keys": sorted(p.config), "replace": p.replace})


async def get_node_state(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    """``state`` is null until the node writes one (as the original); a node that is neither declared, nor
    left on disk, nor connected is NODE_NOT_FOUND, as for its status."""
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)
    visible, observed = await _observe(ctx, name)
    o = _find(observed, name)
    if o is not None:
        path, state = o.state_path, o.state
    elif name in visible:  # connected but not declared: SY.* services, nodes started by hand
        path, state = await ctx.backend.node_state(name)
    else:
        raise AdminError("NODE_NOT_FOUND", f"node {name} is neither declared nor connected")
    return {"status": "ok", "target": target, "hive": target, "node_name": name, "path": path, "state": state}


async def send_node_message(ctx: Context, target: str, p: s.SendMessageParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)
    meta: dict[str, Any] = {k: v for k, v in {"src_ilk": p.src_ilk, "scope": p.scope, "target": p.meta_target,
                                              "action": p.meta_action, "priority": p.priority,
                                              "context": p.context}.items() if v is not None}
    trace = await ctx.link.send(name, p.payload, msg_type=p.msg_type, msg=p.msg, meta=meta, ttl=p.ttl)
    return {"status": "sent", "target": target, "node_name": name, "trace_id": trace, "msg_type": p.msg_type,
            "msg": p.msg, "src_ilk": p.src_ilk, "ttl": p.ttl}


async def _control(ctx: Context, target: str, p: s.NodeControlParams, msg: str) -> dict[str, Any]:
    await _check_hive(ctx, target)
    name = _node_name(ctx, target, p.node_name)
    meta = {k: v for k, v in {"src_ilk": p.src_ilk, "scope": p.scope, "context": p.context}.items()
            if v is not None}
    body = dict(p.model_extra or {})
    body.setdefault("node_name", name)
    reply_msg, reply = await ctx.link.request(name, body, msg_type="system", msg=msg, meta=meta, ttl=p.ttl,
                                              timeout=p.timeout_ms / 1000)
    node_ok = isinstance(reply, dict) and (reply.get("ok") is True or str(reply.get("status", "")).lower() == "ok")
    node_error = None
    if not node_ok and isinstance(reply, dict):
        node_error = reply.get("error") or reply.get("error_detail") or reply.get("error_code")
    return {"status": "ok", "target": target, "node_name": name, "request_msg": msg, "response_msg": reply_msg,
            "node_ok": node_ok, "node_error": node_error, "response": reply}


async def node_control_config_get(ctx: Context, target: str, p: s.NodeControlParams, call: Call) -> dict[str, Any]:
    return await _control(ctx, target, p, "CONFIG_GET")


async def node_control_config_set(ctx: Context, target: str, p: s.NodeControlParams, call: Call) -> dict[str, Any]:
    return await _control(ctx, target, p, "CONFIG_SET")


# routes and VPNs ---------------------------------------------------------------------
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
    await _check_hive(ctx, target)
    lists = await _router_lists(ctx)
    return {"status": "ok", "hive": target, "config_version": lists["config_version"], "routes": lists["routes"]}


async def list_vpns(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
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

    return await _record(ctx, call, section.name, action, time.time(), work(), {section.key: value})


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

    return await _record(ctx, call, section.name, action, time.time(), work(), {section.key: value})


async def add_route(ctx: Context, target: str, p: s.RouteBody, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    if p.next_hop_hive is not None and not HIVE_ID_RE.match(p.next_hop_hive):
        raise AdminError("INVALID_REQUEST", f"next_hop_hive {p.next_hop_hive!r} is not a hive id")
    return await _add_entry(ctx, target, call, _ROUTES, "add_route", _route_dict(p), "route")


async def delete_route(ctx: Context, target: str, p: s.DeleteRouteParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    return await _delete_entry(ctx, target, call, _ROUTES, "delete_route", p.prefix)


async def add_vpn(ctx: Context, target: str, p: s.VpnBody, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    return await _add_entry(ctx, target, call, _VPNS, "add_vpn", p.model_dump(mode="json"), "vpn")


async def delete_vpn(ctx: Context, target: str, p: s.DeleteVpnParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    return await _delete_entry(ctx, target, call, _VPNS, "delete_vpn", p.pattern)


async def set_config_routes(ctx: Context, target: str, p: s.ConfigRoutesParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)

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

    return await _record(ctx, call, "routes", "set_config_routes", time.time(), work(),
                         {"routes": None if p.routes is None else len(p.routes),
                          "vpns": None if p.vpns is None else len(p.vpns), "version": p.version})


async def set_config_vpns(ctx: Context, target: str, p: s.ConfigVpnsParams, call: Call) -> dict[str, Any]:
    return await set_config_routes(ctx, target, s.ConfigRoutesParams(vpns=p.vpns, version=p.version), call)


# versions, runtimes, history -------------------------------------------------------
async def _hive_versions(ctx: Context) -> dict[str, Any]:
    return {"hive_id": ctx.backend.hive_id,
            "core": {"status": "ok", "schema_version": 1, "version": __version__, "manifest_hash": None,
                     "components": {"fluxbee": __version__}},
            "runtimes": await ctx.backend.runtimes(),
            "vendor": {"status": "missing", "components": {}, "syncthing_present": False}}


async def get_versions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    return {"status": "ok", "hive": await _hive_versions(ctx)}


async def list_versions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [await _hive_versions(ctx)]
    for hive_id in sorted(await ctx.backend.remote_hives()):
        rows.append({"hive_id": hive_id, "status": "error", "error_code": "HIVE_NOT_CONNECTED",
                     "message": "no WAN link to this hive"})
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
    await _check_hive(ctx, target)
    info, rows = await _runtime_rows(ctx)
    return {"status": "ok", "hive_id": target, "manifest_version": info.get("manifest_version"),
            "manifest_hash": info.get("manifest_hash"), "runtimes": rows}


async def get_runtime(ctx: Context, target: str, p: s.RuntimeParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    info, rows = await _runtime_rows(ctx)
    row = next((r for r in rows if r["runtime"] == p.runtime), None)
    if row is None:
        raise AdminError("RUNTIME_NOT_FOUND", f"runtime {p.runtime!r} is not in the store")
    _, observed = await _observe(ctx)
    running = [{"node_name": o.node_name, "hive": o.hive, "runtime": o.runtime.get("name"),
                "runtime_version": o.runtime.get("resolved_version"), "lifecycle": o.lifecycle_state}
               for o in observed if o.runtime.get("name") == p.runtime]
    return {"status": "ok", "hive_id": target, "manifest_version": info.get("manifest_version"),
            "manifest_hash": info.get("manifest_hash"), "runtime": p.runtime, **row,
            "usage": {"scope": "hive_local_visible", "in_use": bool(running),
                      "running_count": sum(1 for r in running if r["lifecycle"] == "RUNNING"),
                      "running_nodes": running}}


async def _history(ctx: Context, target: str | None, name: str, p: s.HistoryParams) -> dict[str, Any]:
    if target is not None:
        await _check_hive(ctx, target)
    filters: dict[str, str | None] = {"category": p.category}
    if name == "drift-alerts.jsonl":
        filters.update(severity=p.severity, kind=p.kind)
    try:
        entries, dropped = await ctx.history.read(name, limit=p.limit, filters=filters)
    except HistoryUnavailable as err:
        raise AdminError("KUBERNETES_API_ERROR", str(err)) from err
    out: dict[str, Any] = {"status": "ok", "view": "history", "entries": entries, "dropped_entries": dropped}
    if target is not None:
        out["hive_id"] = target
    return out


async def list_deployments(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, None, "deployments.jsonl", p)


async def get_deployments(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, target, "deployments.jsonl", p)


async def list_drift_alerts(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, None, "drift-alerts.jsonl", p)


async def get_drift_alerts(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, target, "drift-alerts.jsonl", p)


# identity and modules (SY.identity over the router) ----------------------------------------
IDENTITY_TIMEOUT = 5.0
_IDENTITY_CODES = frozenset({"NOT_FOUND", "ILK_NOT_FOUND", "INVALID_REQUEST", "MODULE_EXISTS", "DB_NOT_READY",
                             "UNAUTHORIZED_REGISTRAR", "DB_WRITE_FAILED", "RESPONSE_TOO_LARGE"})


async def _identity(ctx: Context, hive: str, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One request to the hive's SY.identity as SY.admin; its error codes kept where the table knows them."""
    try:
        _, reply = await ctx.link.request(f"{IDENTITY_NODE}@{hive}", payload, msg_type="system", msg=msg, meta={},
                                          ttl=16, timeout=IDENTITY_TIMEOUT)
    except AdminError as err:
        if err.code in ("NODE_NOT_FOUND", "UNREACHABLE"):
            raise AdminError("IDENTITY_UNAVAILABLE", f"{IDENTITY_NODE}@{hive} is not connected to the router "
                                                     f"({err.detail})") from err
        raise
    if not isinstance(reply, dict):
        raise AdminError("SERVICE_FAILED", f"{msg}_RESPONSE payload is not an object")
    if reply.get("status") != "ok":
        code = str(reply.get("error_code") or "SERVICE_FAILED")
        detail = str(reply.get("message") or reply.get("error_detail") or code)
        if code in _IDENTITY_CODES:
            raise AdminError(code, detail)
        raise AdminError("SERVICE_FAILED", f"{IDENTITY_NODE}: {code}: {detail}")
    return {k: v for k, v in reply.items() if k != "status"}


async def list_ilks(ctx: Context, target: str, p: s.IlkListParams, call: Call) -> dict[str, Any]:
    """One page (``limit``/``cursor`` given) or every ILK, fetched page by page.

    SY.identity answers in frame-sized pages; HTTP has no frame limit, so a plain GET follows
    ``next_cursor`` and answers the whole list, as it did before paging.
    """
    await _check_hive(ctx, target)
    request: dict[str, Any] = {k: v for k, v in (("limit", p.limit), ("cursor", p.cursor)) if v is not None}
    single = bool(request)
    ilks: list[Any] = []
    while True:
        reply = await _identity(ctx, target, "ILK_LIST", request)
        ilks += reply.get("ilks") or []
        cursor = reply.get("next_cursor")
        if single or not isinstance(cursor, str) or cursor == request.get("cursor"):
            break
        request["cursor"] = cursor
    return {"status": "ok", "hive": target, "count": len(ilks), "ilks": ilks,
            "next_cursor": reply.get("next_cursor") if single else None}


async def get_ilk(ctx: Context, target: str, p: s.IlkParams, call: Call) -> dict[str, Any]:
    await _check_hive(ctx, target)
    return {"status": "ok", "hive": target, **await _identity(ctx, target, "ILK_GET", {"ilk_id": p.ilk_id})}


async def list_modules(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_LIST", {})
    items = reply.get("modules", [])
    return {"status": "ok", "modules": sorted({str(m["name"]) for m in items}), "items": items}


async def get_module(ctx: Context, target: str, p: s.ModuleParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_GET", {"name": p.name})
    items = reply.get("versions", [])
    return {"status": "ok", "name": p.name, "versions": [str(m["version"]) for m in items], "items": items}


async def get_module_version(ctx: Context, target: str, p: s.ModuleVersionParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_GET", {"name": p.name, "version": p.version})
    return {"status": "ok", "name": p.name, "version": p.version, "module": reply.get("module")}


async def publish_module(ctx: Context, target: str, p: s.ModulePutParams, call: Call) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_PUT", p.model_dump())
        return {"status": "ok", **reply}

    return await _record(ctx, call, "modules", "publish_module", time.time(), work(),
                         {"name": p.name, "version": p.version})


# registry ---------------------------------------------------------------------------
def _a(handler: Handler, params: type[s.Params], summary: str, *, read_only: bool, target: bool,
       confirm: bool = False) -> Action:
    name = handler.__name__
    return Action(name, handler, params, summary, read_only, target, confirm)


ACTIONS: dict[str, Action] = {a.name: a for a in (
    _a(hive_status, s.NoParams, "The local hive: id, pid, uptime, router", read_only=True, target=False),
    _a(list_admin_actions, s.NoParams, "This catalogue", read_only=True, target=False),
    _a(get_admin_action_help, s.ActionHelpParams, "One catalogue entry", read_only=True, target=False),
    _a(list_hives, s.NoParams, "The local hive and the registered ones", read_only=True, target=False),
    _a(get_hive, s.HiveIdParams, "One hive's record", read_only=True, target=False),
    _a(add_hive, s.AddHiveParams, "Register a worker hive", read_only=False, target=False),
    _a(remove_hive, s.HiveIdParams, "Forget a worker hive", read_only=False, target=False, confirm=True),
    _a(list_nodes, s.NoParams, "Declared and connected nodes", read_only=True, target=True),
    _a(run_node, s.SpawnNodeParams, "Spawn a node from a runtime and register its ILK", read_only=False,
       target=True),
    _a(kill_node, s.KillNodeParams, "Stop and forget a spawned node", read_only=False, target=True, confirm=True),
    _a(get_node_status, s.NodeParams, "Lifecycle, health and runtime of a node", read_only=True, target=True),
    _a(get_node_config, s.NodeParams, "A node's effective config", read_only=True, target=True),
    _a(set_node_config, s.SetNodeConfigParams, "Patch a spawned node's config", read_only=False, target=True),
    _a(get_node_state, s.NodeParams, "A node's state file (null if none)", read_only=True, target=True),
    _a(send_node_message, s.SendMessageParams, "Send one message to a node; returns its trace id",
       read_only=False, target=True),
    _a(node_control_config_get, s.NodeControlParams, "CONFIG_GET to a node", read_only=True, target=True),
    _a(node_control_config_set, s.NodeControlParams, "CONFIG_SET to a node", read_only=False, target=True),
    _a(list_routes, s.NoParams, "The router's static routes", read_only=True, target=True),
    _a(add_route, s.RouteBody, "Add a static route", read_only=False, target=True),
    _a(delete_route, s.DeleteRouteParams, "Delete a static route", read_only=False, target=True),
    _a(list_vpns, s.NoParams, "The router's VPN rules", read_only=True, target=True),
    _a(add_vpn, s.VpnBody, "Add a VPN rule", read_only=False, target=True),
    _a(delete_vpn, s.DeleteVpnParams, "Delete a VPN rule", read_only=False, target=True),
    _a(set_config_routes, s.ConfigRoutesParams, "Replace routes (and VPNs)", read_only=False, target=False),
    _a(set_config_vpns, s.ConfigVpnsParams, "Replace VPN rules", read_only=False, target=False),
    _a(list_versions, s.NoParams, "Versions of every hive", read_only=True, target=False),
    _a(get_versions, s.NoParams, "Core and runtime versions of a hive, with readiness", read_only=True, target=True),
    _a(list_runtimes, s.NoParams, "Runtimes in a hive's store", read_only=True, target=True),
    _a(get_runtime, s.RuntimeParams, "One runtime, its versions and usage", read_only=True, target=True),
    _a(list_deployments, s.HistoryParams, "Changes made through the admin API", read_only=True, target=False),
    _a(get_deployments, s.HistoryParams, "Changes made to one hive", read_only=True, target=True),
    _a(list_drift_alerts, s.HistoryParams, "Observed drift", read_only=True, target=False),
    _a(get_drift_alerts, s.HistoryParams, "Observed drift on one hive", read_only=True, target=True),
    _a(list_ilks, s.IlkListParams, "ILKs of a hive (compact rows), from SY.identity; paged with limit/cursor",
       read_only=True, target=True),
    _a(get_ilk, s.IlkParams, "One ILK with tenant and alias detail, from SY.identity", read_only=True, target=True),
    _a(list_modules, s.NoParams, "Prompt modules (names and every version)", read_only=True, target=False),
    _a(get_module, s.ModuleParams, "Versions of one prompt module", read_only=True, target=False),
    _a(get_module_version, s.ModuleVersionParams, "One module version with its text and sha256", read_only=True,
       target=False),
    _a(publish_module, s.ModulePutParams, "Publish a module version (immutable; same text again is a no-op)",
       read_only=False, target=False),
)}

_HIST = {"limit": int, "category": str, "severity": str, "kind": str}
_N = "/hives/{hive}/nodes/{name}"
_NAME = {"name": "node_name"}
ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/actions", "list_admin_actions"),
    Route("GET", "/admin/actions/{action}", "get_admin_action_help", {"action": "action_name"}),
    Route("GET", "/hive/status", "hive_status"),
    Route("GET", "/hives", "list_hives"),
    Route("POST", "/hives", "add_hive", body="fields", body_required=True),
    Route("GET", "/hives/{hive}", "get_hive", {"hive": "hive_id"}),
    Route("DELETE", "/hives/{hive}", "remove_hive", {"hive": "hive_id"}),
    Route("GET", "/hives/{hive}/nodes", "list_nodes"),
    Route("POST", "/hives/{hive}/nodes", "run_node", body="fields", body_required=True),
    Route("DELETE", _N, "kill_node", _NAME, body="fields"),
    Route("GET", _N + "/status", "get_node_status", _NAME),
    Route("GET", _N + "/config", "get_node_config", _NAME),
    Route("PUT", _N + "/config", "set_node_config", _NAME, {"replace": bool, "notify": bool}, body="config",
          body_required=True),
    Route("GET", _N + "/state", "get_node_state", _NAME),
    Route("POST", _N + "/messages", "send_node_message", _NAME, body="fields"),
    Route("POST", _N + "/control/config-get", "node_control_config_get", _NAME, body="fields"),
    Route("POST", _N + "/control/config-set", "node_control_config_set", _NAME, body="fields"),
    Route("GET", "/routes", "list_routes", query={"hive": str}),
    Route("POST", "/routes", "add_route", query={"hive": str}, body="fields", body_required=True),
    Route("DELETE", "/routes", "delete_route", query={"hive": str, "prefix": str}),
    Route("GET", "/vpns", "list_vpns", query={"hive": str}),
    Route("POST", "/vpns", "add_vpn", query={"hive": str}, body="fields", body_required=True),
    Route("DELETE", "/vpns", "delete_vpn", query={"hive": str, "pattern": str}),
    Route("GET", "/hives/{hive}/routes", "list_routes"),
    Route("POST", "/hives/{hive}/routes", "add_route", body="fields", body_required=True),
    Route("DELETE", "/hives/{hive}/routes/{prefix}", "delete_route", {"prefix": "prefix"}),
    Route("GET", "/hives/{hive}/vpns", "list_vpns"),
    Route("POST", "/hives/{hive}/vpns", "add_vpn", body="fields", body_required=True),
    Route("DELETE", "/hives/{hive}/vpns/{pattern}", "delete_vpn", {"pattern": "pattern"}),
    Route("PUT", "/config/routes", "set_config_routes", body="fields"),
    Route("PUT", "/config/vpns", "set_config_vpns", body="fields"),
    Route("GET", "/versions", "list_versions", query={"hive": str}),
    Route("GET", "/hives/{hive}/versions", "get_versions"),
    Route("GET", "/hives/{hive}/runtimes", "list_runtimes"),
    Route("GET", "/hives/{hive}/runtimes/{runtime}", "get_runtime", {"runtime": "runtime"}),
    Route("GET", "/deployments", "list_deployments", query={"hive": str, **_HIST}),
    Route("GET", "/hives/{hive}/deployments", "get_deployments", query=_HIST),
    Route("GET", "/drift-alerts", "list_drift_alerts", query={"hive": str, **_HIST}),
    Route("GET", "/hives/{hive}/drift-alerts", "get_drift_alerts", query=_HIST),
    Route("GET", "/hives/{hive}/identity/ilks", "list_ilks", query={"limit": int, "cursor": str}),
    Route("GET", "/hives/{hive}/identity/ilks/{ilk_id}", "get_ilk", {"ilk_id": "ilk_id"}),
    Route("GET", "/modules", "list_modules"),
    Route("GET", "/modules/{name}", "get_module", {"name": "name"}),
    Route("GET", "/modules/{name}/{version}", "get_module_version", {"name": "name", "version": "version"}),
    Route("POST", "/modules/{name}/{version}", "publish_module", {"name": "name", "version": "version"},
          body="fields", body_required=True),
)
HIVE_QUERY_SWITCH = {"list_versions": "get_versions", "list_deployments": "get_deployments",
                     "list_drift_alerts": "get_drift_alerts"}
"""Global history/versions routes become the hive-scoped action when ``?hive=`` is given (as upstream)."""


async def dispatch(ctx: Context, action_name: str, target: str | None, params: dict[str, Any],
                   call: Call) -> dict[str, Any]:
    """Run one action: validate params, resolve the target hive, call the handler."""
    action = ACTIONS.get(action_name)
    if action is None:
        raise AdminError("UNKNOWN_ACTION", f"unknown action {action_name!r}")
    if action.requires_target and not target:
        raise AdminError("INVALID_REQUEST", "missing target (payload.target required for this action)")
    try:
        parsed = action.params.model_validate(params)
    except ValidationError as err:
        raise AdminError("INVALID_REQUEST", describe_validation(err)) from err
    return await action.handler(ctx, target or ctx.backend.hive_id, parsed, call)


def describe_validation(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(x) for x in item["loc"]) or "body"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
