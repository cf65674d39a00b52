"""The node actions: list, spawn, kill, status, config, state, messages and node-control requests.

A node's config is checked against the frame budget before anything is written (the node must be able
to receive it and to answer ``CONFIG_GET`` with it); status merges what the backend declares with what
the router sees and what the node reports.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import (
    Call,
    Context,
    check_hive,
    find_node,
    full_node_name,
    now_iso,
    observe,
    record_change,
    router_visible,
)
from fluxbee.admin.backend import NodeObservation
from fluxbee.admin.errors import AdminError
from fluxbee.admin.node_identity import SpawnIdentity
from fluxbee.dataplane import wire
from fluxbee.dataplane.names import NODE_TYPES, is_reserved

NODE_STATUS_TIMEOUT = 2.0


def _row(o: NodeObservation) -> dict[str, Any]:
    kind = o.node_name.split(".", 1)[0]
    return {"name": o.node_name, "node_name": o.node_name, "hive": o.hive,
            "kind": kind if kind in NODE_TYPES else "UNKNOWN", "managed": o.managed,
            "status": o.lifecycle_state.lower(), "lifecycle_state": o.lifecycle_state,
            "visible_in_router": o.visible_in_router,
            "runtime": {"name": o.runtime.get("name"), "version": o.runtime.get("resolved_version")}}


async def list_nodes(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    rows, source = await node_rows(ctx)
    return {"status": "ok", "target": target, "hive": target, "inventory_source": source,
            "node_count": len(rows), "nodes": rows}


async def node_rows(ctx: Context) -> tuple[list[dict[str, Any]], str]:
    """This hive's nodes as list rows, sorted by name, and where they come from: ``router`` (the backend's
    declared and stopped nodes merged with every connection the router has) or
    ``managed_instances_fallback`` (the router is out of reach: the backend's nodes only)."""
    target = ctx.backend.hive_id
    visible, status = await router_visible(ctx)
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
    return rows, "router" if status is not None else "managed_instances_fallback"


async def run_node(ctx: Context, target: str, p: s.SpawnNodeParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
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

    return await record_change(ctx, call, "node", "run_node", time.time(), work(),
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
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)

    async def work() -> dict[str, Any]:
        result = await ctx.backend.kill_node(name, p)
        # The original's contract: killing a node that does not run says `not_found` in the payload (the
        # envelope stays 200 "ok"); a purge asked for is still done (its instance is gone afterwards).
        return {"status": "ok" if result.get("was_running") else "not_found", "hive": target, "target": target,
                "node_name": name, "signal": "SIGKILL" if p.force else p.signal, "force": p.force,
                "purge_instance": p.purge_instance, **result}

    return await record_change(ctx, call, "node", "kill_node", time.time(), work(), {"node_name": name})


async def get_node_status(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
    visible, observed = await observe(ctx, name)
    o = find_node(observed, name)
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
        "schema_version": "1", "node_name": name, "hive_id": target, "observed_at": now_iso(),
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
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, raw)
    _, observed = await observe(ctx, name)
    o = find_node(observed, name)
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

    return await record_change(ctx, call, "node_config", "set_node_config", time.time(), work(),
                         {"node_name": o.node_name, "keys": sorted(p.config), "replace": p.replace})


async def get_node_state(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    """``state`` is null until the node writes one (as the original); a node that is neither declared, nor
    left on disk, nor connected is NODE_NOT_FOUND, as for its status."""
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
    visible, observed = await observe(ctx, name)
    o = find_node(observed, name)
    if o is not None:
        path, state = o.state_path, o.state
    elif name in visible:  # connected but not declared: SY.* services, nodes started by hand
        path, state = await ctx.backend.node_state(name)
    else:
        raise AdminError("NODE_NOT_FOUND", f"node {name} is neither declared nor connected")
    return {"status": "ok", "target": target, "hive": target, "node_name": name, "path": path, "state": state}


async def send_node_message(ctx: Context, target: str, p: s.SendMessageParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
    meta: dict[str, Any] = {k: v for k, v in {"src_ilk": p.src_ilk, "scope": p.scope, "target": p.meta_target,
                                              "action": p.meta_action, "priority": p.priority,
                                              "context": p.context}.items() if v is not None}
    trace = await ctx.link.send(name, p.payload, msg_type=p.msg_type, msg=p.msg, meta=meta, ttl=p.ttl)
    return {"status": "sent", "target": target, "node_name": name, "trace_id": trace, "msg_type": p.msg_type,
            "msg": p.msg, "src_ilk": p.src_ilk, "ttl": p.ttl}


async def _control(ctx: Context, target: str, p: s.NodeControlParams, msg: str) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
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

