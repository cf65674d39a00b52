#!/usr/bin/env python3
"""Operator convergence benchmark: N FluxNodes applied at once → time until every Pod exists.

Three processes on loopback: kmock's Kubernetes emulator with the fluxbee fixes
(``tests/integration/operator/fluxbee_emulator.py``), the real kopf operator, and this driver,
which creates a Hive, a Runtime and then N FluxNodes (32 concurrent POSTs) and polls the Pod
list.  Not a timed test: it measures and reports.  ``--profile DIR`` writes a cProfile of the
emulator and of the operator process (``pstats``-readable) to find where the time goes.

    .venv/bin/python hack/bench-operator.py [--nodes 500] [--write BENCHMARKS.md] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "operator"))

NS = "bench"


@contextlib.contextmanager
def _profiled(path: str | None) -> Any:
    if not path:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(path)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_emulator() -> None:
    import kmock
    from fluxbee_emulator import FluxEmulator, declare_fluxbee_resources

    emulator = FluxEmulator()
    declare_fluxbee_resources(emulator)
    async with emulator, kmock.Server(emulator) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await _until_signal()


async def serve_operator(url: str) -> None:
    from fluxbee.operator.app import run
    from fluxbee.operator.kube import KubeClient, KubeConfig
    from fluxbee.operator.settings import OperatorSettings

    stop, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def announce() -> None:
        await ready.wait()
        print("ready", flush=True)

    announcer = asyncio.create_task(announce(), name="announce-ready")
    try:
        access = KubeConfig(server=url)
        async with KubeClient(access, limit=64) as kube:
            await run(OperatorSettings(image="fluxbee/fluxbee:bench"), kube, access,
                      stop_flag=stop, ready_flag=ready)
    finally:
        announcer.cancel()


@contextlib.asynccontextmanager
async def child(role: str, *args: str, profile: Path | None) -> AsyncIterator[tuple[Any, str]]:
    """Start this script in ``role``; yield it and its first stdout line."""
    cmd = [sys.executable, __file__, "--role", role, *args]
    if profile is not None:
        cmd += ["--profile-out", str(profile / f"{role}.prof")]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        if not line:
            raise RuntimeError(f"{role} process exited before it was ready")
        yield proc, line
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def bench(nodes: int, timeout: float, profile: Path | None) -> dict[str, Any]:
    from fluxbee.operator import labels as L
    from fluxbee.operator.kube import KubeClient, KubeConfig

    async with child("emulator", profile=profile) as (_, url), \
            child("operator", "--server", url, profile=profile), \
            KubeClient(KubeConfig(server=url), limit=64) as api:
        await api.create("hives", NS, {
            "apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive",
            "metadata": {"name": "bench", "namespace": NS}, "spec": {},
        })
        await api.create("runtimes", NS, {
            "apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime",
            "metadata": {"name": "fluxbee.echo", "namespace": NS},
            "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"]},
        })
        await asyncio.sleep(1.0)  # hive and runtime reconciled before the burst
        sem = asyncio.Semaphore(32)

        async def apply(i: int) -> None:
            async with sem:
                await api.create("fluxnodes", NS, {
                    "apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode",
                    "metadata": {"name": f"n{i:04d}", "namespace": NS},
                    "spec": {"hive": "bench", "nodeName": f"AI.bench.n{i:04d}",
                             "runtime": "fluxbee.echo", "replicas": 1},
                })

        # A watch on the operator's Pods (as `kubectl get pods -w` would), opened before the
        # burst: polling full Pod lists would cost the emulator more than the operator does.
        seen: set[str] = set()
        done = asyncio.Event()
        first: float | None = None
        watch_url = f"{url}/api/v1/namespaces/{NS}/pods?watch=true&labelSelector=" \
            f"{L.MANAGED_BY}%3D{L.OPERATOR}"

        async def count_pods(session: aiohttp.ClientSession) -> None:
            nonlocal first
            async with session.get(watch_url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ADDED":
                        seen.add(event["object"]["metadata"]["name"])
                        if first is None:
                            first = time.perf_counter() - t0
                        if len(seen) >= nodes:
                            done.set()
                            return

        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            watcher = asyncio.create_task(count_pods(session), name="count-pods")
            await asyncio.gather(*(apply(i) for i in range(nodes)))
            applied = time.perf_counter() - t0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            total = time.perf_counter() - t0
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        count = len(await api.list("pods", NS, {L.MANAGED_BY: L.OPERATOR}))
        await asyncio.sleep(1.0)  # let the last statuses land before they are counted
        ready = 0
        for item in await api.list("fluxnodes", NS):
            conditions = (item.get("status") or {}).get("conditions") or []
            ready += any(c.get("type") == "Reconciling" and c.get("reason") == "WaitingForPods"
                         for c in conditions)
    return {"nodes": nodes, "applied_s": applied, "first_pod_s": first or float("nan"),
            "all_pods_s": total, "pods": count, "status_written": ready}


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "## Operator convergence",
        "",
        "`.venv/bin/python hack/bench-operator.py --nodes N`: N FluxNodes (1 replica each) "
        "created at once (32 concurrent POSTs) after a Hive and a Runtime, against kmock's "
        "in-memory API emulator with the fluxbee fixes; emulator, real kopf operator and "
        "driver each in their own process on this machine. \"all Pods exist\" is the time from "
        "the first POST until the Pod list holds N operator-managed Pods (no kubelet: Pods are "
        "not started, so FluxNodes stay `Reconciling/WaitingForPods`). Machine: "
        f"{os.cpu_count()} CPUs ({platform.machine()}, shared), Python "
        f"{platform.python_version()}.",
        "",
        "| FluxNodes | all applied | first Pod | all Pods exist | Pods | FluxNodes with status |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        converged = r["pods"] >= r["nodes"]
        lines.append(
            f"| {r['nodes']} | {r['applied_s']:.1f} s | {r['first_pod_s']:.1f} s | "
            f"{r['all_pods_s']:.1f} s{'' if converged else ' (TIMED OUT)'} | {r['pods']} | "
            f"{r['status_written']} |"
        )
    lines += [
        "",
        "Where the time went (cProfile of each process, `--profile DIR`), and what was fixed:",
        "",
        "- **Test emulator, quadratic dispatch (fixed in `fluxbee_emulator.py`).** kmock's "
        "`RawHandler._handle` decides which reaction serves a request by testing "
        "`request in payload._source`, which re-filters the *whole request log*; every request "
        "cost O(requests so far). At 50 nodes that was 56 of the emulator's 63 CPU-seconds "
        "(`filtering._check`, 15 M calls) while the operator sat idle in `epoll` for 60 of its "
        "62 s: 50 nodes took 21.8 s in one process, 47 s with the emulator in its own process, "
        "and 500 never finished. The emulator now serves Kubernetes requests straight from its "
        "store when no test added its own reactions, lists scan a per-resource key index, and "
        "404s skip kmock's traceback formatting.",
        "- **Operator, kopf worker limit (fixed in `operator/app.py`, `settings.py`).** "
        "`queueing.worker_limit = 200` with kopf's 5 s worker idle timeout meant 500 new "
        "FluxNodes were handled 200 at a time, each batch waiting for idle workers to exit. "
        "Now `worker_limit` is 5000 (a memory bound; API pressure is bounded by the REST "
        "client's connection limit) and workers idle out after 1 s.",
        "- **Operator, redundant reads (fixed in `operator/children.py`).** A FluxNode reconcile "
        "read its ConfigMap and each Pod twice (once to compare, once in `ensure`); `ensure` now "
        "takes what the caller read: 9 API calls per single-replica FluxNode instead of 11, "
        "plus kopf's finalizer and annotation patches.",
        "- **Driver.** Pods are counted from a watch opened before the burst, not by polling "
        "full Pod lists (which cost the emulator more than the operator's own traffic).",
        "",
        "What remains is CPU on both sides of the loopback (kopf's per-event processing and "
        "deep copies in the operator, JSON and copies in the emulator), on 2 cores shared "
        "with other work; no sleeps or polls are on the path.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[500])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--write", type=Path, help="replace the section in this file")
    parser.add_argument("--profile", type=Path, help="write emulator/operator cProfiles here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    parser.add_argument("--role", choices=("driver", "emulator", "operator"), default="driver",
                        help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "driver":
        logging.basicConfig(level=logging.WARNING)
        with _profiled(args.profile_out):
            if args.role == "emulator":
                asyncio.run(serve_emulator())
            else:
                asyncio.run(serve_operator(args.server))
        return 0
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = [asyncio.run(bench(n, args.timeout, args.profile)) for n in args.nodes]
    if args.json:
        print(json.dumps(results))
        return 0 if all(r["pods"] >= r["nodes"] for r in results) else 1
    text = report(results)
    print(text)
    if args.write:
        old = args.write.read_text() if args.write.exists() else "# Benchmarks\n\n"
        start = old.find("## Operator convergence")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            old = old[:start] + (old[end + 1:] if end >= 0 else "")
        args.write.write_text(old.rstrip("\n") + "\n\n" + text)
    return 0 if all(r["pods"] >= r["nodes"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
