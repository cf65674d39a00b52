"""The inventory: which nodes run where, for this hive and every hive the links reach.

Nothing here is guessed.  This hive's rows are :func:`~fluxbee.admin.actions.nodes.node_rows` (the
backend's declared and stopped nodes merged with the router's connections).  Another hive is asked
for its own rows over the links (``ADMIN_COMMAND inventory`` with scope ``hive``, answered by its
admin API the same way), in parallel and within :data:`REMOTE_TIMEOUT`; a hive that cannot be asked
is listed with its error code and detail and ``node_count: null`` — never with rows made up from what
was known before — as ``stale`` when it was not reached (no link, no admin, too slow; the original's
word for a hive whose adverts stopped) or ``error`` when it answered with a refusal or a failure.  A
hive that answered is ``alive`` (``link_status`` keeps the link's own state).  The link-state
adverts carry only node counts, not the rows, which is why the hives are asked.

As in the original, ``nodes`` are the nodes that run (the router sees them or the hive runs them): a
node killed without ``purge_instance`` leaves ``nodes`` and is listed under ``stopped_nodes`` instead,
whose instance ``start`` runs again and ``DELETE …/instance`` removes.  The global scope also lists
every hive's rows at the top level (``nodes``, each naming its ``hive``), which is where the original's
clients look for them.

Scopes (the original's ``inventory`` params): ``global`` lists every hive with its nodes, ``hive``
one hive (its rows also at the top level, as ``GET /hives/{h}/nodes`` shows them), ``summary``
counts per hive, node kind and status without the rows.  ``filter_type`` keeps the nodes of one
kind (upper-cased: ``?type=wf`` is ``WF``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Final

from fluxbee.admin import remote
from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, now_iso
from fluxbee.admin.actions.hives import hive_list
from fluxbee.admin.actions.nodes import node_rows
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane.names import HIVE_ID_RE, NODE_TYPES

REMOTE_TIMEOUT: Final = 10.0
"""Seconds another hive has to answer (the original's inventory timeout)."""
KINDS: Final = frozenset((*NODE_TYPES, "UNKNOWN"))
UNREACHED: Final = frozenset(("HIVE_NOT_CONNECTED", "WAN_TIMEOUT", "TIMEOUT", "TRANSPORT_ERROR", "ROUTER_UNREACHABLE",
                              "REMOTE_ADMIN_UNAVAILABLE"))
"""Relay errors that mean the hive was not reached (its entry is ``stale``), not that it refused."""


def _kind_filter(raw: str | None) -> str | None:
    if raw is None:
        return None
    kind = raw.upper()
    if kind not in KINDS:
        raise AdminError("INVALID_REQUEST", f"type {raw!r}: expected one of {', '.join(sorted(KINDS))}")
    return kind


async def _local(ctx: Context, kind: str | None) -> dict[str, Any]:
    rows, source = await node_rows(ctx)
    if kind is not None:
        rows = [r for r in rows if r["kind"] == kind]
    stopped = [r for r in rows if r.get("lifecycle_state") == "STOPPED"]
    rows = [r for r in rows if r.get("lifecycle_state") != "STOPPED"]
    return {"hive_id": ctx.backend.hive_id, "is_local": True, "status": "alive", "inventory_source": source,
            "node_count": len(rows), "nodes": rows, "stopped_nodes": stopped}


async def _remote(ctx: Context, hive: str, kind: str | None, row: dict[str, Any] | None) -> dict[str, Any]:
    """Another hive's own entry, asked over the links; an error entry when it cannot be asked."""
    link_status = (row or {}).get("status")
    try:
        payload = await remote.relay(ctx.link, hive, "inventory",
                                     {"scope": "hive", "filter_hive": hive, "filter_type": kind},
                                     timeout=REMOTE_TIMEOUT)
        entry = next((h for h in payload.get("hives") or () if isinstance(h, dict) and h.get("hive_id") == hive),
                     None)
        nodes = entry.get("nodes") if entry is not None else None
        if entry is None or not isinstance(nodes, list):
            raise AdminError("SERVICE_FAILED", f"hive {hive!r} answered inventory without its own entry")
    except AdminError as err:
        status = "stale" if err.code in UNREACHED else "error"
        return {"hive_id": hive, "is_local": False, "status": status, "link_status": link_status,
                "inventory_source": "admin_command", "node_count": None, "nodes": [], "stopped_nodes": [],
                "error_code": err.code, "error_detail": err.detail}
    out = {**entry, "is_local": False, "status": "alive", "link_status": link_status,
           "inventory_source": "admin_command",
           "remote_inventory_source": entry.get("inventory_source"), "node_count": len(nodes), "nodes": nodes,
           "stopped_nodes": entry.get("stopped_nodes") if isinstance(entry.get("stopped_nodes"), list) else []}
    if row is not None and row.get("via"):
        out["via"] = row["via"]
    return out


async def _hives(ctx: Context, only: str | None, kind: str | None) -> list[dict[str, Any]]:
    local = ctx.backend.hive_id
    rows = {str(r["hive_id"]): r for r in await hive_list(ctx)}
    if only is not None:
        if only == local:
            return [await _local(ctx, kind)]
        if only not in rows:
            raise AdminError("NOT_FOUND", f"hive {only!r} is not known: not registered here and not reached by "
                                          "the links")
        entry = await _remote(ctx, only, kind, rows[only])
        if entry["status"] == "error":  # refused or failed; a hive out of reach is answered as stale
            raise AdminError(entry["error_code"], entry["error_detail"])
        return [entry]
    others = sorted(h for h in rows if h != local)
    found = await asyncio.gather(_local(ctx, kind), *(_remote(ctx, h, kind, rows[h]) for h in others))
    return list(found)


def _counts(nodes: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    return (dict(sorted(Counter(str(n.get("kind")) for n in nodes).items())),
            dict(sorted(Counter(str(n.get("status")) for n in nodes).items())))


async def inventory(ctx: Context, target: str, p: s.InventoryParams, call: Call) -> dict[str, Any]:
    kind = _kind_filter(p.filter_type)
    only = p.filter_hive
    if only is not None and not HIVE_ID_RE.match(only):
        raise AdminError("INVALID_HIVE_ID", f"hive {only!r} must match {HIVE_ID_RE.pattern}")
    scope = "hive" if only is not None and p.scope == "global" else p.scope
    if scope == "hive" and only is None:
        only = ctx.backend.hive_id
    if remote.is_remote(call.actor, ctx.backend.hive_id) and (scope != "hive" or only != ctx.backend.hive_id):
        # a command from another hive is never relayed further (remote.authorise, rule 4): it gets this hive only
        raise AdminError("FORBIDDEN", f"{call.actor} asked hive {ctx.backend.hive_id!r} for the inventory of other "
                                      "hives: commands from another hive are not relayed further; ask for scope "
                                      f"hive of {ctx.backend.hive_id!r}")
    hives = await _hives(ctx, only if scope == "hive" else None, kind)
    known = [h for h in hives if h["node_count"] is not None]
    head: dict[str, Any] = {"status": "ok", "scope": scope, "hive_id": ctx.backend.hive_id, "filter_type": kind,
                            "filter_hive": only if scope == "hive" else None, "observed_at": now_iso(),
                            "total_hives": len(hives), "unreachable_hives": len(hives) - len(known),
                            "total_nodes": sum(h["node_count"] for h in known)}
    if scope == "summary":
        every = [n for h in known for n in h["nodes"]]
        by_kind, by_status = _counts(every)
        summary = []
        for h in hives:
            kinds, states = _counts(h["nodes"])
            summary.append({k: v for k, v in h.items() if k not in ("nodes", "stopped_nodes")}
                           | {"by_kind": kinds if h["node_count"] is not None else None,
                              "by_status": states if h["node_count"] is not None else None})
        return {**head, "by_kind": by_kind, "by_status": by_status, "hives": summary}
    if scope == "hive":
        one = hives[0]
        return {**head, "hive": one["hive_id"], "hive_status": one["status"],
                "inventory_source": one["inventory_source"], "node_count": one["node_count"],
                "nodes": one["nodes"], "stopped_nodes": one.get("stopped_nodes", []), "hives": hives}
    # the original's global answer also lists every node at the top level, each row naming its `hive`
    return {**head, "nodes": [n for h in known for n in h["nodes"]], "hives": hives}
