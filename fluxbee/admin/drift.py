"""The drift monitor: compares what the hive should run with what runs, and records what differs.

Every :data:`INTERVAL` seconds: a declared node that restarted (its restart count went up), whose
instance was replaced behind our back (a Pod deleted and recreated by the operator, with the same
config), that is FAILED, or that runs but has not shown up in the router for
:data:`NOT_VISIBLE_AFTER` seconds; and a node connected to the router that nothing declares.  A
condition is recorded once when it appears (restarts and replacements: once each) and again only
after it cleared.  Without a router in reach (a cluster admin process whose host runs no router
yet) the checks that need the router are skipped and the others still run.  Of a cluster's admin
replicas only the one holding the lease records drift (:class:`DriftMonitor` ``leader``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fluxbee.admin.actions import Context
from fluxbee.admin.errors import AdminError
from fluxbee.admin.history import HistoryUnavailable
from fluxbee.dataplane.names import RESERVED_PREFIXES

log = logging.getLogger(__name__)
INTERVAL = 1.0
NOT_VISIBLE_AFTER = 10.0
IGNORED_PREFIXES = RESERVED_PREFIXES


class DriftMonitor:
    """``leader``: asked before each pass whether this process is the one that records drift (the
    admin replicas of a cluster share one history: one of them watches, the others stand by).  A
    process that takes over starts from what it sees then, as after a restart."""

    def __init__(self, ctx: Context, *, interval: float = INTERVAL,
                 leader: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.ctx = ctx
        self.interval = interval
        self.leader = leader
        self._forget()

    def _forget(self) -> None:
        self.restarts: dict[str, int] = {}
        self.instances: dict[str, tuple[set[str], object]] = {}
        self.active: set[tuple[str, str]] = set()
        self.starting_since: dict[str, float] = {}

    async def _leading(self) -> bool:
        if self.leader is None:
            return True
        try:
            leading = await self.leader()
        except HistoryUnavailable as err:
            log.warning("cannot tell whether this admin process records drift: %s; asking again in %.0f s",
                        err, self.interval)
            leading = False
        if not leading:
            self._forget()
        return leading

    async def check(self, visible: set[str] | None) -> None:
        history = self.ctx.history
        observed = await self.ctx.backend.observe(visible)
        now_active: set[tuple[str, str]] = set()
        declared = set()
        for o in observed:
            name = o.node_name
            declared.add(name)
            count = int(o.process.get("restart_count") or 0)
            before = self.restarts.get(name)
            restarted = before is not None and count > before
            if restarted:
                await history.drift(category="node", kind="node_restarted", severity="warning",
                                    message=f"{name} exited (code {o.process.get('exit_code')}) and was restarted "
                                            f"(restart #{count})",
                                    detail={"node_name": name, "restart_count": count,
                                            "exit_code": o.process.get("exit_code")})
            self.restarts[name] = count
            now_instances = set(o.instances)
            config_hash = o.process.get("config_hash")
            seen = self.instances.get(name)
            if seen is not None and not restarted and seen[1] == config_hash:
                gone = sorted(seen[0] - now_instances)
                if gone and now_instances - seen[0]:
                    await history.drift(category="node", kind="node_replaced", severity="warning",
                                        message=f"{name}: instance {', '.join(gone)} disappeared and was replaced "
                                                "without a change to its spec",
                                        detail={"node_name": name, "gone": gone,
                                                "now": sorted(now_instances - seen[0])})
            if now_instances:
                self.instances[name] = (now_instances, config_hash)
            if o.lifecycle_state == "FAILED":
                now_active.add((name, "node_failed"))
            if o.lifecycle_state == "STARTING" and visible is not None:
                since = self.starting_since.setdefault(name, time.monotonic())
                if time.monotonic() - since > NOT_VISIBLE_AFTER:
                    now_active.add((name, "node_not_visible"))
            else:
                self.starting_since.pop(name, None)
        for name in (visible or set()) - declared:
            if not name.startswith(IGNORED_PREFIXES):
                now_active.add((name, "unmanaged_node"))
        for name, kind in sorted(now_active - self.active):
            severity = "info" if kind == "unmanaged_node" else "critical" if kind == "node_failed" else "warning"
            message = {"node_failed": f"{name} is declared but its process keeps failing",
                       "node_not_visible": f"{name} runs but has not connected to the router",
                       "unmanaged_node": f"{name} is connected to the router but not declared"}[kind]
            await history.drift(category="node", kind=kind, severity=severity, message=message,
                                      detail={"node_name": name})
        self.active = now_active

    async def run(self) -> None:
        while True:
            if not await self._leading():
                await asyncio.sleep(self.interval)
                continue
            try:
                try:
                    status = await self.ctx.link.router_status()
                    visible: set[str] | None = {n["name"] for n in status.get("nodes", [])}
                except AdminError as err:
                    if self.ctx.backend.kind == "local":
                        raise  # the local router is the hive: nothing to compare without it
                    log.debug("drift check without the router: %s", err)
                    visible = None
                await self.check(visible)
            except AdminError as err:
                log.debug("drift check skipped: %s", err)
            except HistoryUnavailable as err:
                log.warning("drift alert not recorded: %s; checking again in %.0f s", err, self.interval)
            except OSError as err:  # a node directory vanished mid-scan: the next pass sees the new state
                log.warning("drift check failed: %s; retrying in %.0f s", err, self.interval)
            await asyncio.sleep(self.interval)
