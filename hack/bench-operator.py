#!/usr/bin/env python3
"""Operator convergence benchmark: N FluxNodes applied at once → time until every Pod exists.

The real kopf operator (own thread and loop, as in its own process) against kmock's
emulator with the fluxbee fixes, on loopback.  Not a timed test: it measures and reports.

    .venv/bin/python hack/bench-operator.py [--nodes 500] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "operator"))

import kmock  # noqa: E402
import kopf  # noqa: E402
from fluxbee_emulator import FluxEmulator, declare_fluxbee_resources  # noqa: E402

from fluxbee.operator import labels as L  # noqa: E402
from fluxbee.operator.app import run  # noqa: E402
from fluxbee.operator.kube import KubeClient, KubeConfig  # noqa: E402
from fluxbee.operator.settings import OperatorSettings  # noqa: E402

NS = "bench"


def operator_thread(url: str, stop: threading.Event, ready: threading.Event) -> threading.Thread:
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    async def main() -> None:
        async with KubeClient(KubeConfig(server=url), limit=64) as kube:
            await run(OperatorSettings(image="fluxbee/fluxbee:bench"), kube, login=login,
                      stop_flag=stop, ready_flag=ready)

    def target() -> None:
        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=target, name="operator", daemon=True)
    thread.start()
    return thread


async def bench(nodes: int, timeout: float) -> dict[str, float]:
    emulator = FluxEmulator()
    declare_fluxbee_resources(emulator)
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        stop, ready = threading.Event(), threading.Event()
        thread = operator_thread(url, stop, ready)
        await asyncio.to_thread(ready.wait, 30)
        async with KubeClient(KubeConfig(server=url), limit=64) as api:
            await api.create("hives", NS, {
                "apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive",
                "metadata": {"name": "bench", "namespace": NS}, "spec": {},
            })
            await api.create("runtimes", NS, {
                "apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime",
                "metadata": {"name": "fluxbee.echo", "namespace": NS},
                "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"]},
            })
            sem = asyncio.Semaphore(32)

            async def apply(i: int) -> None:
                async with sem:
                    await api.create("fluxnodes", NS, {
                        "apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode",
                        "metadata": {"name": f"n{i:04d}", "namespace": NS},
                        "spec": {"hive": "bench", "nodeName": f"AI.bench.n{i:04d}",
                                 "runtime": "fluxbee.echo", "replicas": 1},
                    })

            t0 = time.perf_counter()
            await asyncio.gather(*(apply(i) for i in range(nodes)))
            applied = time.perf_counter() - t0
            first = None
            count = 0
            while time.perf_counter() - t0 < timeout:
                count = len(await api.list("pods", NS, {L.MANAGED_BY: L.OPERATOR}))
                if count and first is None:
                    first = time.perf_counter() - t0
                if count >= nodes:
                    break
                await asyncio.sleep(0.25)
            total = time.perf_counter() - t0
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    return {"nodes": nodes, "applied_s": applied, "first_pod_s": first or float("nan"),
            "all_pods_s": total, "pods": count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--write", type=Path, help="append/replace the section in this file")
    args = parser.parse_args()
    r = asyncio.run(bench(args.nodes, args.timeout))
    converged = r["pods"] >= args.nodes
    lines = [
        "## Operator convergence",
        "",
        f"`hack/bench-operator.py --nodes {args.nodes}`: {args.nodes} FluxNodes (1 replica each) "
        "created at once (32 concurrent POSTs) against kmock's in-memory API emulator; the "
        "real kopf operator in its own thread/loop on the same machine. Time until every Pod "
        "object exists (no kubelet: Pods are not started). Machine: "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}.",
        "",
        "| FluxNodes | all applied | first Pod | all Pods exist | Pods |",
        "|---:|---:|---:|---:|---:|",
        f"| {args.nodes} | {r['applied_s']:.1f} s | {r['first_pod_s']:.1f} s | "
        f"{r['all_pods_s']:.1f} s{'' if converged else ' (TIMED OUT)'} | {r['pods']} |",
        "",
        "The emulator (single-threaded aiohttp, full object history, every watch event fanned "
        "out in Python) shares the 2 cores with the operator, so this is an upper bound on the "
        "operator's own cost, not a prediction for a real API server.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        old = args.write.read_text() if args.write.exists() else "# Benchmarks\n\n"
        start = old.find("## Operator convergence")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            old = old[:start] + (old[end + 1:] if end >= 0 else "")
        args.write.write_text(old.rstrip("\n") + "\n\n" + text)
    return 0 if converged else 1


if __name__ == "__main__":
    sys.exit(main())
