"""A node's lifecycle beyond spawn and kill: start a stopped instance, restart a running one, remove the
instance of a stopped one (the original's ``start_node``, ``restart_node``, ``remove_node_instance``).

What "stopped" is depends on the backend (:class:`~fluxbee.admin.backend.Backend`): locally, a node
whose processes were killed but whose instance (its config and state files, and the document ``kill``
kept) remains; in a cluster, a FluxNode at ``replicas: 0``.  Start and restart answer once the node is
connected to the router again or :data:`CONNECT_WAIT` has passed (``visible_in_router`` says which):
the change is made either way, and a node that is slow to connect is still starting, not failed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, check_hive, find_node, full_node_name, observe, record_change
from fluxbee.admin.errors import AdminError

CONNECT_WAIT: Final = 15.0
"""Seconds start and restart wait for the node to connect to the router before they answer."""
POLL: Final = 0.2


async def _connected_since(ctx: Context, name: str, since_ms: int, wait: float) -> bool:
    """Whether ``name`` has a router connection made at or after ``since_ms`` (waiting up to ``wait`` s);
    False at once when the router is out of reach."""
    deadline = time.monotonic() + wait
    while True:
        try:
            status = await ctx.link.router_status()
        except AdminError:
            return False
        if any(n.get("name") == name and int(n.get("connected_at_ms") or 0) >= since_ms
               for n in status.get("nodes", [])):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL)


async def _after(ctx: Context, target: str, name: str, result: dict[str, Any], since_ms: int) -> dict[str, Any]:
    """The answer of a start or restart: the backend's summary, whether the node is connected, its pids."""
    if result.get("state") == "already_running":
        visible, _ = await observe(ctx, name)
        connected = name in visible
    else:
        connected = await _connected_since(ctx, name, since_ms, CONNECT_WAIT)
    _, observed = await observe(ctx, name)
    o = find_node(observed, name)
    out = {"status": "ok", "target": target, "hive": target, "node_name": name, **result,
           "visible_in_router": connected}
    if o is not None:
        out["lifecycle_state"] = o.lifecycle_state
        out["pid"] = o.process.get("pid")
        if ctx.backend.kind == "local":
            out["pids"] = [int(i) for i in o.instances]
    return out


async def _start_or_restart(ctx: Context, target: str, p: s.NodeParams, call: Call, action: str) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)
    since_ms = int(time.time() * 1000)
    run = ctx.backend.start_node if action == "start_node" else ctx.backend.restart_node

    async def work() -> dict[str, Any]:
        return await _after(ctx, target, name, await run(name), since_ms)

    return await record_change(ctx, call, "node", action, time.time(), work(), {"node_name": name})


async def start_node(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    return await _start_or_restart(ctx, target, p, call, "start_node")


async def restart_node(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    return await _start_or_restart(ctx, target, p, call, "restart_node")


async def remove_node_instance(ctx: Context, target: str, p: s.NodeParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    name = full_node_name(ctx, target, p.node_name)

    async def work() -> dict[str, Any]:
        result = await ctx.backend.remove_node_instance(name)
        return {"target": target, "hive": target, "node_name": name, **result}

    return await record_change(ctx, call, "node", "remove_node_instance", time.time(), work(), {"node_name": name})
