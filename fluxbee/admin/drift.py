"""The drift monitor: compares what the hive should run with what runs, and records what differs.

Every :data:`INTERVAL` seconds: a declared node that restarted (its restart count went up), that is
FAILED, or that runs but has not shown up in the router for :data:`NOT_VISIBLE_AFTER` seconds; and a
node connected to the router that nothing declares.  A condition is recorded once when it appears
(restarts: once per restart) and again only after it cleared.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fluxbee.admin.actions import Context
from fluxbee.admin.errors import AdminError

log = logging.getLogger(__name__)
INTERVAL = 1.0
NOT_VISIBLE_AFTER = 10.0
IGNORED_PREFIXES = ("SY.", "RT.")


class DriftMonitor:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.restarts: dict[str, int] = {}
        self.active: set[tuple[str, str]] = set()
        self.starting_since: dict[str, float] = {}

    def check(self, visible: set[str]) -> None:
        history = self.ctx.history
        observed = self.ctx.backend.observe(visible)
        now_active: set[tuple[str, str]] = set()
        declared = set()
        for o in observed:
            name = o.node_name
            declared.add(name)
            count = int(o.process.get("restart_count") or 0)
            before = self.restarts.get(name)
            if before is not None and count > before:
                history.drift(category="node", kind="node_restarted", severity="warning",
                              message=f"{name} exited (code {o.process.get('exit_code')}) and was restarted "
                                      f"(restart #{count})",
                              detail={"node_name": name, "restart_count": count,
                                      "exit_code": o.process.get("exit_code")})
            self.restarts[name] = count
            if o.lifecycle_state == "FAILED":
                now_active.add((name, "node_failed"))
            if o.lifecycle_state == "STARTING":
                since = self.starting_since.setdefault(name, time.monotonic())
                if time.monotonic() - since > NOT_VISIBLE_AFTER:
                    now_active.add((name, "node_not_visible"))
            else:
                self.starting_since.pop(name, None)
        for name in visible - declared:
            if not name.startswith(IGNORED_PREFIXES):
                now_active.add((name, "unmanaged_node"))
        for name, kind in sorted(now_active - self.active):
            severity = "info" if kind == "unmanaged_node" else "critical" if kind == "node_failed" else "warning"
            message = {"node_failed": f"{name} is declared but its process keeps failing",
                       "node_not_visible": f"{name} runs but has not connected to the router",
                       "unmanaged_node": f"{name} is connected to the router but not declared"}[kind]
            history.drift(category="node", kind=kind, severity=severity, message=message, detail={"node_name": name})
        self.active = now_active

    async def run(self) -> None:
        while True:
            try:
                status = await self.ctx.link.router_status()
                self.check({n["name"] for n in status.get("nodes", [])})
            except AdminError as err:
                log.debug("drift check skipped: %s", err)
            except OSError as err:  # a node directory vanished mid-scan: the next pass sees the new state
                log.warning("drift check failed: %s; retrying in %.0f s", err, INTERVAL)
            await asyncio.sleep(INTERVAL)
