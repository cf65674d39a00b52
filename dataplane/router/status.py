"""The router's status snapshot and metrics: HTTP ``/status`` and ``/metrics``, ROUTER_STATUS_GET pages."""

from __future__ import annotations

import bisect
import os
import time
from typing import TYPE_CHECKING, Any

from fluxbee.dataplane import alloc, fastpath, wire
from fluxbee.dataplane.router import scheduling
from fluxbee.dataplane.router.connection import Conn

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router


def snapshot(router: Router) -> dict[str, Any]:
    """The whole snapshot, every node included (HTTP ``/status``, which has no frame limit)."""
    return status_head(router, [node_entry(c) for c in router.registry.nodes()])

def status_page(router: Router, limit: int | None, cursor: str | None) -> dict[str, Any]:
    """The snapshot as a frame-sized page of nodes, for ROUTER_STATUS_GET / NODE_STATUS_GET.

    Nodes come in UUID order after ``cursor`` (the last UUID of the previous page), at most
    ``limit`` of them and no more than fit in :data:`wire.PAYLOAD_BUDGET` once encoded — a count
    alone cannot bound the size, names are up to 256 bytes.  ``next_cursor`` is None on the last
    page; ``node_count`` is the total.  UUID order keeps paging stable while nodes come and go:
    a node connected throughout is listed exactly once.  Every page repeats the rest of the
    snapshot (router, config, counters), so an asker that stops after one page still has it.
    """
    head = status_head(router, [])
    registry = router.registry
    head["node_count"] = len(registry)
    head["next_cursor"] = None
    used = len(wire.encode(head)) + 40  # + the cursor, a quoted UUID, if there is a next page
    budget = wire.PAYLOAD_BUDGET
    order = registry.uuids()
    start = bisect.bisect_right(order, cursor) if cursor is not None else 0
    page: list[dict[str, Any]] = []
    for node_uuid in order[start:]:
        if limit is not None and len(page) >= limit:
            break
        node = registry.get(node_uuid)
        if node is None:
            raise RuntimeError(f"bug: {node_uuid} left the registry while a status page was built")
        entry = node_entry(node)
        size = len(wire.encode(entry)) + 1
        if page and used + size > budget:
            break
        used += size
        page.append(entry)
    if page and start + len(page) < len(order):
        head["next_cursor"] = page[-1]["uuid"]
    head["nodes"] = page
    return head

def node_entry(c: Conn) -> dict[str, Any]:
    return {"uuid": c.uuid, "name": c.name, "vpn_id": c.vpn_id, "connected_at_ms": c.connected_at_ms,
            "congested": c.congested_since is not None,
            "peer": None if c.cred is None else {"pid": c.cred.pid, "uid": c.cred.uid, "gid": c.cred.gid},
            "claimed": c.claimed, "replacements": c.replacements, "takeovers_refused": c.takeovers_refused,
            "flapping": c.holds_uuid}

def status_head(router: Router, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    router.policy.flush_lane()  # the fast lane's decisions into the counters read below (l3 and policy)
    return {
        "router": {"uuid": router.uuid, "name": router.name, "hive_id": router.hive_id,
                   "socket": str(router.socket_path), "pid": os.getpid(),
                   "uptime_s": round(time.time() - router.started_at, 3),
                   "fast_path": fastpath.IMPLEMENTATION, "scheduling": scheduling.current(),
                   "allocator": alloc.state(),
                   "busy_poll": None if router.busy_poll is None else router.busy_poll.status()},
        "config_version": router.config_version,
        "nodes": nodes,
        "trust": {"claims_dir": None if router.settings.claims_dir is None else str(router.settings.claims_dir),
                  "claimed_names": len(router.claims.by_name),  # a count: the head repeats on every status page
                  "limits": {"max_nodes": router.settings.max_nodes,
                             "claimed_reserve": router.settings.claimed_reserve,
                             "max_unclaimed_per_uid": router.settings.max_unclaimed_per_uid,
                             "max_unclaimed_per_pid": router.settings.max_unclaimed_per_pid,
                             "max_pending_per_uid": router.settings.max_pending_per_uid,
                             "takeover_window_s": router.settings.takeover_window_s,
                             "takeover_limit": router.settings.takeover_limit}},
        "routes": [r.model_dump(mode="json") for r in router.registry.table.route_specs],
        "vpns": [v.model_dump(mode="json") for v in router.registry.table.vpn_specs],
        "counters": {**router.counters.snapshot(), "producer_pauses": router.paused_producers},
        "l3": router.l3.snapshot(),
        "policy": router.policy.describe(),
        **links_status(router),
    }


def links_status(router: Router) -> dict[str, Any]:
    """The ``wan`` and ``mesh`` sections (README: Links); empty ones for a router without links."""
    if router.links is not None:
        return router.links.manager.status()
    return {role: {"hive_id": router.hive_id, "listen": None, "links": [], "drops": {}} for role in ("wan", "mesh")}

def prometheus(router: Router) -> str:
    router.policy.flush_lane()
    return router.counters.prometheus({
        "nodes": len(router.registry),
        "config_version": router.config_version,
        "congested_nodes": sum(1 for c in router.registry.nodes() if c.congested_since is not None),
        "producer_pauses": router.paused_producers,
        "rss_bytes": _rss_bytes(),
    }) + router.l3.prometheus() + router.policy.prometheus()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
