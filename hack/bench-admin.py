#!/usr/bin/env python3
"""Admin API benchmark: requests/s and latency of GET /hives/{hive}/nodes/{name}/status.

Starts ``fluxbee up`` (the default hive: its WF.echo node) with the admin API on a free port,
then runs CONCURRENCY aiohttp clients for DURATION seconds.  Usage:
    .venv/bin/python hack/bench-admin.py [--concurrency 50] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(base: str, concurrency: int, duration: float) -> tuple[int, int, list[float]]:
    url = f"{base}/hives/local/nodes/WF.echo/status"
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), errors, latencies


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="fbb", dir="/tmp"))
    port = free_port()
    log = open(run_dir / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "fluxbee", "up", "--run-dir", str(run_dir), "--admin-listen",
                           f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "is ready" not in (run_dir / "up.log").read_text():
            if time.monotonic() > deadline or up.poll() is not None:
                print((run_dir / "up.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        count, errors, lat = asyncio.run(bench(f"http://127.0.0.1:{port}", args.concurrency, args.duration))
        lat.sort()
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        print(f"GET /hives/local/nodes/WF.echo/status, {args.concurrency} concurrent clients, {args.duration:g} s: "
              f"{count / args.duration:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, {errors} non-200")
        return 0
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
