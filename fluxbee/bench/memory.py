"""The router memory section: the router's resident memory idle, with many connected idle nodes, and with links.

A router loads the link machinery (the link manager, TLS sessions, the certificate code and the
``cryptography`` package) only when links are configured, and of the resource models only the
routes and VPN rules.  The third figure, an idle router with a TLS WAN listener measured in the same
run, shows what links cost and that a router without them does not pay it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from fluxbee.bench.harness import (
    Proc,
    fluxbee,
    free_port,
    processes,
    router_socket_appeared,
    rss_mb,
    wait_for,
    worker,
)
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
    return {"router_rss_mb_idle": round(idle, 1), "router_rss_mb_1000_nodes": round(loaded, 1),
            "router_rss_mb_links": round(linked_router_memory(tmp), 1)}


def linked_router_memory(tmp: Path) -> float:
    """The RSS of an idle router that listens for WAN links over TLS (a CA and a certificate made here)."""
    ca, cert, run_dir = tmp / "mem-ca", tmp / "mem-cert", tmp / "mem-links"
    for args in (("wan", "ca", str(ca)), ("wan", "issue", "--ca", str(ca), "--hive-id", "mem", "--out", str(cert))):
        done = subprocess.run(fluxbee(*args), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"fluxbee {' '.join(args[:2])} failed: {done.stderr.strip()}")
    port = free_port()
    with processes() as procs:
        router = Proc(fluxbee("router", "--hive-id", "mem", "--run-dir", str(run_dir),
                              "--wan-listen", f"127.0.0.1:{port}", "--wan-cert", str(cert / "tls.crt"),
                              "--wan-key", str(cert / "tls.key"), "--wan-ca-cert", str(ca / "ca.crt")),
                      wait_ready=False)
        procs.append(router)
        wait_for(router_socket_appeared(run_dir), 15, "the linked router's socket")
        wait_for(lambda: _listening(port), 15, "the linked router's WAN listener")
        time.sleep(0.2)
        return rss_mb(router.pid)


def _listening(port: int) -> bool:
    """Whether a socket listens on TCP ``port`` (read from ``/proc/net/tcp``: no connection is made to it)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(f[1].endswith(suffix) and f[3] == "0A" for f in (row.split() for row in rows) if len(f) > 3):
            return True
    return False


class RouterMemory:
    """The router's RSS, idle and with ``plan.idle_nodes`` connected nodes (the key says 1000 whatever the count),
    and idle with a TLS WAN listener."""

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        # Waits on the router in blocking calls: the bench runs one section at a time, nothing else is on the loop.
        return {**router_memory(plan, tmp), "idle_nodes": plan.idle_nodes}

    def lines(self, r: dict[str, Any]) -> Lines:
        links = f", {r['router_rss_mb_links']} MB idle with a TLS link listener" if "router_rss_mb_links" in r else ""
        return Lines(ratios=(f"router RSS: {r['router_rss_mb_idle']} MB idle, {r['router_rss_mb_1000_nodes']} MB with "
                             f"{r['idle_nodes']} nodes{links}   (target ≤ 100 MB)",))
