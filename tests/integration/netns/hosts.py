"""Processes on the hosts of a topology, and request accounting: shared by the link fault tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import topology as topo
from hive_harness import stop_process, wait_until

from fluxbee.dataplane.sdk import NodeSender, UnreachableError

HELLO_S = 0.3
DEAD_S = 2.0
TIMERS = ("--link-hello-interval", str(HELLO_S), "--link-dead-interval", str(DEAD_S))
REQUEST_TIMEOUT = DEAD_S + 4.0
"""Longer than the dead timer plus the time to answer: a request outliving it was lost, not slow."""
HIVE_FILE = """\
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {{name: {hive}}}
spec: {{}}
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {{name: echo}}
spec: {{hive: {hive}, nodeName: WF.echo, runtime: fluxbee.echo}}
"""


def fluxbee(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=timeout)


def status(run_dir: Path) -> dict[str, Any]:
    done = fluxbee("status", "--run-dir", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def links_up(run_dir: Path, hive: str, role: str = "wan") -> bool:
    try:
        return any(x["hive_id"] == hive and x["state"] == "up" for x in status(run_dir)[role]["links"])
    except AssertionError:
        return False


@dataclass
class Host:
    """One process group started on a host: `fluxbee up` for a hive, or one `fluxbee router`."""

    name: str
    argv: list[str]
    run_dir: Path
    log: Path
    identity: bool = False
    """False: ``FLUXBEE_UP_IDENTITY=0`` (no SY.identity, no PostgreSQL; links do not need them)."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, net: topo.Topology, ready: str | None = None) -> None:
        """Start on its host; ready when the node ``ready`` is registered (or, None, when the router answers)."""
        with self.log.open("ab") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **({} if self.identity else {"FLUXBEE_UP_IDENTITY": "0"})}
            self.proc = subprocess.Popen(net.argv(self.name, self.argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self._ready(ready), timeout=150,
                   what=f"{ready or 'the router'} on host {self.name}", step=0.3)
        assert proc.poll() is None, self.log.read_text()[-3000:]
        if isinstance(net, topo.Loopback):
            net.pids[self.name] = [self.router_pid()]

    def _ready(self, ready: str | None) -> bool:
        if not (self.run_dir / "routers").is_dir() or not any((self.run_dir / "routers").glob("*.sock")):
            return False
        try:
            nodes = status(self.run_dir)["nodes"]
        except (AssertionError, ValueError, KeyError):
            return False
        return ready is None or any(n["name"] == ready for n in nodes)

    def router_pid(self) -> int:
        return int(status(self.run_dir)["router"]["pid"])

    def stop(self) -> None:
        stop_process(self.proc, f"processes of host {self.name}", sig=signal.SIGINT, timeout=30, strict=False)


@dataclass
class Outcome:
    sent: float
    done: float = 0.0
    result: str = "pending"
    """``answered``, ``UNREACHABLE:<reason>``, or ``lost`` (no answer within REQUEST_TIMEOUT)."""


class Traffic:
    """Requests to ``dst`` every ``interval`` s from an SDK node on hive A's router, each accounted for."""

    def __init__(self, sender: NodeSender, dst: str, interval: float = 0.05) -> None:
        self.sender, self.dst, self.interval = sender, dst, interval
        self.outcomes: list[Outcome] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def _one(self, outcome: Outcome) -> None:
        try:
            reply = await self.sender.request(self.dst, {"n": len(self.outcomes)}, timeout=REQUEST_TIMEOUT)
            by = reply.routing.src_l2_name
            outcome.result = "answered" if by == self.dst else f"from {by}"
        except UnreachableError as err:
            outcome.result = f"UNREACHABLE:{err.reason}"
        except TimeoutError:
            outcome.result = "lost"
        outcome.done = time.monotonic()

    async def _run(self) -> None:
        while not self._stop.is_set():
            outcome = Outcome(time.monotonic())
            self.outcomes.append(outcome)
            self._tasks.append(asyncio.create_task(self._one(outcome)))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        if self._loop is not None:
            await self._loop
        await asyncio.gather(*self._tasks)
        return self.outcomes

    def answered_since(self, t: float) -> bool:
        return any(o.result == "answered" and o.sent >= t for o in self.outcomes)


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    return counts


async def answers(sender: NodeSender, dst: str, timeout: float = 3.0) -> bool:
    try:
        reply = await sender.request(dst, "ping", timeout=timeout)
    except (UnreachableError, TimeoutError):
        return False
    return reply.routing.src_l2_name == dst


async def until(check: Any, timeout: float, what: str) -> float:
    """Await ``check()`` until true; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def negate(check: Any) -> bool:
    return not await check


async def already(value: bool) -> bool:
    return value


async def refused_with(sender: NodeSender, dst: str, reason: str) -> bool:
    try:
        await sender.request(dst, "ping", timeout=3)
    except UnreachableError as err:
        return err.reason == reason
    except TimeoutError:
        return False
    return False


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
