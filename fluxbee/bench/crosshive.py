"""The cross-hive section of ``fluxbee bench``: two hives over the mutual-TLS link against two NATS servers.

* **link** — two ``fluxbee router`` processes with their own hive ids (A and B), B dialling A's
  gateway over TLS 1.3 with certificates from a CA made for the run; the echo node and the sink
  run on B, the client on A, so every request crosses router A → link → router B → echo and back.
* **link_poll** — the same with both routers run with ``--busy-poll-us`` :data:`BUSY_POLL_US`
  (off by default: it trades CPU for latency, see :mod:`fluxbee.dataplane.router.busypoll`).
* **nats2** — two ``nats-server`` processes joined by a cluster route; the responder is connected
  to the second server, the client to the first, so every request crosses the route both ways.

One-way throughput is sent in windows of :data:`WINDOW` messages acknowledged by the sink, for both.

Both are measured by the same client, in alternating rested rounds (as the local section does).
Then the link's failure figures, from its timers: the time from freezing router B (SIGSTOP — the
TCP connection stays open, only the dead timer can notice) until router A reports the link down,
and the time from thawing it until a request to ``WF.echo@B`` is answered again.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from fluxbee.bench.report import Lines
from fluxbee.bench.results import Plan

HELLO_S = 0.2
DEAD_S = 1.0
"""Link timers of the bench's routers (the defaults, 10 s / 40 s, would make the failure figures minutes long)."""


BUSY_POLL_US = 100
"""The ``--busy-poll-us`` of the second link's routers (``link_poll``): the option's effect, same run."""

WINDOW = 1_000
"""One-way messages between the sink's acknowledgements, for both transports.  The link itself needs
no window (a full sink makes router B stop reading the link and router A hold the producer: see
``tests/integration/link/test_link_flood.py``), but NATS core has no flow control from a subscriber
back to a publisher — a subscriber that falls behind loses messages — so the windows stay, the same
for both, to compare like with like."""


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class LinkPeer:
    """Router A (client side) and router B (echo, sink) joined by one WAN link."""

    name = "link"

    def __init__(self, sender: Any, receiver: Any, router_b: int, name: str = "link") -> None:
        self.name = name
        self.sender = sender
        self.receiver = receiver
        self.router_b = router_b
        self.payload = "x" * 200

    @classmethod
    async def start(cls, tmp: Path, procs: list[Any], *, busy_poll_us: int = 0) -> LinkPeer:
        """Both routers with ``--busy-poll-us busy_poll_us`` (0: the default, off); in ``tmp``."""
        from fluxbee.bench.harness import Proc as _Proc
        from fluxbee.bench.harness import fluxbee as _fluxbee
        from fluxbee.bench.harness import free_port as _free_port
        from fluxbee.bench.harness import wait_for as _wait_for
        from fluxbee.bench.harness import worker as _worker
        from fluxbee.dataplane.link.certs import issue_hive_cert, make_ca, write_pem_pair
        from fluxbee.dataplane.sdk import NodeConfig, connect

        tmp.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = make_ca("bench")
        (tmp / "ca.crt").write_bytes(ca_cert)
        for hive in ("A", "B"):
            cert, key = issue_hive_cert(ca_cert, ca_key, hive)
            write_pem_pair(tmp / f"{hive}.crt", cert, tmp / f"{hive}.key", key)
        port = _free_port()
        timers = ("--link-hello-interval", str(HELLO_S), "--link-dead-interval", str(DEAD_S),
                  "--busy-poll-us", str(busy_poll_us))

        def router(hive: str, *link: str) -> Any:
            run_dir = tmp / f"x{hive}"
            proc = _Proc(_fluxbee("router", "--hive-id", hive, "--run-dir", str(run_dir), *link, *timers,
                                  "--wan-cert", str(tmp / f"{hive}.crt"), "--wan-key", str(tmp / f"{hive}.key"),
                                  "--wan-ca-cert", str(tmp / "ca.crt")), wait_ready=False)
            procs.append(proc)
            _wait_for(lambda: any((run_dir / "routers").glob("*.sock")) if (run_dir / "routers").exists()
                      else False, 15, f"router {hive}'s socket")
            return proc

        router("A", "--wan-listen", f"127.0.0.1:{port}")
        _wait_for(lambda: _port_open(port), 15, "router A's gateway")
        b = router("B", "--uplink", f"127.0.0.1:{port}")
        echo = _Proc(_fluxbee("node", "echo", "--name", "WF.echo", "--run-dir", str(tmp / "xB")), wait_ready=False)
        procs.append(echo)
        procs.append(_Proc(_worker("sink-node", str(tmp / "xB"), "WF.sink")))
        sender, receiver = await connect(NodeConfig(name="WF.bench.far", run_dir=tmp / "xA"))
        peer = cls(sender, receiver, b.pid, "link_poll" if busy_poll_us else "link")
        await _until(peer.answers, 30, "WF.echo@B across the link")
        return peer

    async def answers(self) -> bool:
        from fluxbee.dataplane.sdk import UnreachableError

        try:
            await self.sender.request("WF.echo@B", "ping", timeout=1)
        except (UnreachableError, TimeoutError):
            return False
        return True

    async def rtt(self, count: int) -> list[float]:
        from fluxbee.bench.peers import timed_requests

        return await timed_requests(self.sender.request, "WF.echo@B", self.payload, count)

    async def one_way(self, count: int) -> float:
        send, payload = self.sender.send, self.payload
        t1 = time.perf_counter()
        for window in _windows(count):
            await self.sender.request("WF.sink@B", {"expect": window})
            for _ in range(window):
                await send("WF.sink@B", payload)
            done = await self.receiver.recv(timeout=120)
            if not isinstance(done.payload, dict) or done.payload.get("done") != window:
                raise RuntimeError(f"sink reported {done.payload!r}")
        return count / (time.perf_counter() - t1)

    async def link_up(self) -> bool:
        links = (await self.sender.router_status()).get("wan", {}).get("links", [])
        return any(x.get("hive_id") == "B" and x.get("state") == "up" for x in links)

    async def failure(self) -> dict[str, float]:
        """Freeze router B until A closes the link, thaw it, time both."""
        os.kill(self.router_b, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            await _until(lambda: self._not(self.link_up), 30, "router A to close the silent link")
            detect = time.monotonic() - frozen
        finally:
            os.kill(self.router_b, signal.SIGCONT)
        thawed = time.monotonic()
        await _until(self.answers, 60, "WF.echo@B after the link healed")
        return {"detect_s": round(detect, 2), "reconverge_s": round(time.monotonic() - thawed, 2)}

    @staticmethod
    async def _not(check: Any) -> bool:
        return not await check()

    async def close(self) -> None:
        await self.sender.close()


class NatsPairPeer:
    """Two nats-server processes joined by a cluster route; responder on the second, client on the first."""

    name = "nats2"

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.payload = b"x" * 200

    @classmethod
    async def start(cls, tmp: Path, procs: list[Any]) -> NatsPairPeer:
        import nats

        from fluxbee.bench.harness import Proc as _Proc
        from fluxbee.bench.harness import free_port as _free_port
        from fluxbee.bench.harness import nats_server_binary
        from fluxbee.bench.harness import wait_for as _wait_for
        from fluxbee.bench.harness import worker as _worker

        ports = [_free_port() for _ in range(4)]
        for client, cluster, other in ((ports[0], ports[1], ports[3]), (ports[2], ports[3], ports[1])):
            procs.append(_Proc([nats_server_binary(), "-a", "127.0.0.1", "-p", str(client), "--cluster_name", "bench",
                                "--cluster", f"nats://127.0.0.1:{cluster}", "--routes", f"nats://127.0.0.1:{other}"],
                               wait_ready=False))
            _wait_for(functools.partial(_port_open, client), 15, "nats-server")
        procs.append(_Proc(_worker("nats-responder", f"nats://127.0.0.1:{ports[2]}")))
        peer = cls(await nats.connect(f"nats://127.0.0.1:{ports[0]}"))
        await _until(peer.answers, 30, "the responder through the route")
        return peer

    async def answers(self) -> bool:
        import nats.errors

        try:
            await self.nc.request("bench.echo", b"ping", timeout=1)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        return True

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
        done: asyncio.Queue[None] = asyncio.Queue()

        async def on_done(_msg: Any) -> None:
            done.put_nowait(None)

        sub = await nc.subscribe("bench.done", cb=on_done)
        await nc.flush()
        t1 = time.perf_counter()
        for window in _windows(count):
            await nc.request("bench.sink", str(window).encode(), timeout=5)
            for _ in range(window):
                await nc.publish("bench.sink", self.payload)
            await nc.flush(timeout=60)
            await asyncio.wait_for(done.get(), 120)
        rate = count / (time.perf_counter() - t1)
        await sub.unsubscribe()
        return rate

    async def close(self) -> None:
        await self.nc.close()


def _windows(count: int) -> list[int]:
    """One-way bursts go in windows of :data:`WINDOW` messages, each acknowledged by the sink before the next."""
    return [WINDOW] * (count // WINDOW) + ([count % WINDOW] if count % WINDOW else [])


def _pct(ordered: list[float], p: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


async def measure(round_trips: int, messages: int, tmp: Path, rest_s: float = 1.0) -> dict[str, Any]:
    """Both transports in alternating rested rounds, then the link's failure figures."""
    from fluxbee.bench.harness import processes as _procs

    tmp.mkdir(parents=True, exist_ok=True)
    with _procs() as procs:
        peers: list[Any] = []
        try:
            peers.append(await LinkPeer.start(tmp / "link", procs))
            peers.append(await LinkPeer.start(tmp / "poll", procs, busy_poll_us=BUSY_POLL_US))
            peers.append(await NatsPairPeer.start(tmp, procs))
            for peer in peers:
                await peer.rtt(min(500, round_trips))
            samples: dict[str, list[float]] = {p.name: [] for p in peers}
            rates: dict[str, list[float]] = {p.name: [] for p in peers}
            rounds = max(1, round_trips // 2_000)
            for _ in range(rounds):
                for peer in peers:
                    await asyncio.sleep(rest_s)
                    samples[peer.name] += await peer.rtt(round_trips // rounds)
            for _ in range(3):
                for peer in peers:
                    await asyncio.sleep(rest_s)
                    rates[peer.name].append(await peer.one_way(max(1, messages // 3)))
            failure = await peers[0].failure()
        finally:
            for peer in peers:
                await peer.close()
    out: dict[str, Any] = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = {"rtt_us": {"p50": _pct(ordered, 50), "p99": _pct(ordered, 99)},
                     "msgs_per_s": int(statistics.median(rates[name]))}
    out["ratios"] = {
        "link_p50_over_nats2_p50": round(out["link"]["rtt_us"]["p50"] / out["nats2"]["rtt_us"]["p50"], 2),
        "link_msgs_over_nats2_msgs": round(out["link"]["msgs_per_s"] / out["nats2"]["msgs_per_s"], 2),
        "link_poll_p50_over_nats2_p50": round(out["link_poll"]["rtt_us"]["p50"] / out["nats2"]["rtt_us"]["p50"], 2),
        "link_poll_msgs_over_nats2_msgs": round(out["link_poll"]["msgs_per_s"] / out["nats2"]["msgs_per_s"], 2),
    }
    out["busy_poll_us"] = BUSY_POLL_US
    out["link_failure"] = {**failure, "hello_s": HELLO_S, "dead_s": DEAD_S}
    out["round_trips"] = round_trips
    out["messages"] = messages
    return out


def format_section(r: dict[str, Any]) -> str:
    rows = ["", "cross-hive (hive A → WF.echo@B over the mTLS link; NATS: two servers joined by a route)",
            f"{'transport':10} {'p50 µs':>9} {'p99 µs':>9} {'msgs/s':>11}"]
    for key in ("link", "link_poll", "nats2"):
        v = r[key]
        rows.append(f"{key:10} {v['rtt_us']['p50']:>9.1f} {v['rtt_us']['p99']:>9.1f} {v['msgs_per_s']:>11,}")
    ratios, failure = r["ratios"], r["link_failure"]
    rows += [
        f"link p50 / NATS-pair p50 = {ratios['link_p50_over_nats2_p50']:.2f}   (target ≤ 0.5)",
        f"link msgs/s / NATS-pair  = {ratios['link_msgs_over_nats2_msgs']:.2f}   (target ≥ 1)",
        f"link_poll (routers with --busy-poll-us {r['busy_poll_us']}): p50 / NATS-pair p50 = "
        f"{ratios['link_poll_p50_over_nats2_p50']:.2f}, "
        f"msgs/s / NATS-pair = {ratios['link_poll_msgs_over_nats2_msgs']:.2f}",
        f"dead link detected in {failure['detect_s']} s, answered again {failure['reconverge_s']} s after healing "
        f"(hello {failure['hello_s']} s, dead {failure['dead_s']} s; a frozen peer router, loopback)",
    ]
    return "\n".join(rows)


class CrossHive:
    """The cross-hive section: hive A to ``WF.echo@B`` over the mTLS link against two NATS servers
    joined by a route, plus how fast a dead link is noticed and a healed one used again."""

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        return {"cross_hive": await measure(plan.round_trips, plan.messages, tmp / "cross")}

    def lines(self, r: dict[str, Any]) -> Lines:
        return Lines(notes=tuple(format_section(r["cross_hive"]).splitlines()))
