"""The router memory section: the router's resident memory idle and with many connected idle nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fluxbee.bench.harness import Proc, fluxbee, processes, router_socket_appeared, rss_mb, wait_for, worker
from fluxbee.bench.report import Lines
from fluxbee.bench.results import Plan


def router_memory(plan: Plan, tmp: Path) -> dict[str, float]:
    run_dir = tmp / "mem"
    with processes() as procs:
        # The idle nodes come from one process, all connecting at once: lift the per-peer limits to fit them.
        limit = str(plan.idle_nodes + 16)
        router = Proc(fluxbee("router", "--hive-id", "mem", "--run-dir", str(run_dir), "--max-nodes",
                              str(max(4096, plan.idle_nodes + 512)), "--max-unclaimed-per-pid", limit,
                              "--max-unclaimed-per-uid", limit, "--max-pending-per-uid", limit), wait_ready=False)
        procs.append(router)
        wait_for(router_socket_appeared(run_dir), 15, "the router socket")
        time.sleep(0.2)
        idle = rss_mb(router.pid)
        nodes = Proc(worker("idle-nodes", str(run_dir), str(plan.idle_nodes)), stdin=True)
        procs.append(nodes)
        time.sleep(0.5)
        loaded = rss_mb(router.pid)
        return {"router_rss_mb_idle": round(idle, 1), "router_rss_mb_1000_nodes": round(loaded, 1)}


class RouterMemory:
    """The router's RSS, idle and with ``plan.idle_nodes`` connected nodes (the key says 1000 whatever the count)."""

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        # Waits on the router in blocking calls: the bench runs one section at a time, nothing else is on the loop.
        return {**router_memory(plan, tmp), "idle_nodes": plan.idle_nodes}

    def lines(self, r: dict[str, Any]) -> Lines:
        return Lines(ratios=(f"router RSS: {r['router_rss_mb_idle']} MB idle, {r['router_rss_mb_1000_nodes']} MB with "
                             f"{r['idle_nodes']} nodes   (target ≤ 100 MB)",))
