"""Links across real network boundaries: every host a network namespace, every wire a veth pair.

Topology (hosts in lower case, hives in upper case)::

    c (hive C) ── b (hive B) ── a (hive A) ── d1 (hive D, router 1) ── d2 (hive D, router 2)

A, B and C are `fluxbee up` processes started inside their namespaces (``ip netns exec``); C dials B
and B dials A, so A reaches C only through B (transit).  Hive D is two `fluxbee router` processes on
two hosts meshed over their wire; router 1 dials A's gateway; ``WF.deep`` runs on router 2 only, so
``WF.deep@D`` from A crosses a WAN hop and a mesh hop.  Faults: a wire's interfaces set down and up,
delay and loss on a wire (netem, or netfilter where the kernel has no netem), B's router killed
with SIGKILL, hive C stopped and started again, a peer presenting another hive's certificate.
Every request a test sends is accounted for: answered,
or answered UNREACHABLE with a reason — none may vanish.

Where namespaces cannot be made the same tests run on loopback (see ``topology``); the variant is
printed at the start of the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import topology as topo
from hive_harness import stop_process, wait_until
from hosts import (
    DEAD_S,
    HELLO_S,
    HIVE_FILE,
    REQUEST_TIMEOUT,
    TIMERS,
    Host,
    Outcome,
    Traffic,
    already,
    answers,
    fluxbee,
    links_up,
    negate,
    read_text,
    refused_with,
    status,
    tally,
    until,
)

from fluxbee.dataplane.sdk import NodeConfig, NodeSender, UnreachableError, connect

pytestmark = pytest.mark.integration

LinkCheck = Callable[[], Awaitable[bool]]
"""A check that a link is down, for :func:`until`."""


@dataclass
class World:
    net: topo.Topology
    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, host: str) -> Path:
        return self.hosts[host].run_dir


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    net, why = topo.make(["a", "b", "c", "d1", "d2"], [("a", "b"), ("b", "c"), ("a", "d1"), ("d1", "d2")])
    print(f"\nlink fault tests: {net.kind} variant" + (f" (namespaces unavailable: {why})" if why else ""))
    root = Path(tempfile.mkdtemp(prefix="fbn", dir="/tmp"))
    root.chmod(0o755)
    w = World(net, root)
    try:
        assert fluxbee("wan", "ca", str(root / "ca")).returncode == 0
        done = fluxbee("wan", "issue", "--ca", str(root / "ca"), "--hive-id", "D", "--out", str(root / "cert-D"))
        assert done.returncode == 0, done.stderr
        up = [sys.executable, "-m", "fluxbee", "up", "--admin-listen", "off", "--wan-ca", str(root / "ca"), *TIMERS]
        spec = {"a": ("A", ["--wan-listen", net.listen("a", net.port("a"))]),
                "b": ("B", ["--wan-listen", net.listen("b", net.port("b")),
                            "--uplink", net.address("a", "b", net.port("a"))]),
                "c": ("C", ["--uplink", net.address("b", "c", net.port("b"))])}
        for host, (hive, args) in spec.items():
            (root / f"{hive}.yaml").write_text(HIVE_FILE.format(hive=hive))
            w.hosts[host] = Host(host, [*up, "-f", str(root / f"{hive}.yaml"), "--hive-id", hive, "--run-dir",
                                        str(root / hive), *args], root / hive, root / f"{hive}.log")
            w.hosts[host].start(net, f"WF.echo@{hive}")
        cert = ("--wan-cert", str(root / "cert-D" / "tls.crt"), "--wan-key", str(root / "cert-D" / "tls.key"),
                "--wan-ca-cert", str(root / "ca" / "ca.crt"))
        mesh = {h: net.mesh_port(h) for h in ("d1", "d2")}
        for host, other, extra in (("d1", "d2", ("--uplink", net.address("a", "d1", net.port("a")))),
                                   ("d2", "d1", ())):
            argv = [sys.executable, "-m", "fluxbee", "router", "--hive-id", "D", "--run-dir", str(root / host), *cert,
                    "--mesh-listen", net.listen(host, mesh[host]), "--mesh-peer",
                    net.address(other, host, mesh[other]), *TIMERS, *extra]
            (root / host).mkdir()
            w.hosts[host] = Host(host, argv, root / host, root / f"{host}.log")
            w.hosts[host].start(net)
        deep = subprocess.Popen([sys.executable, "-m", "fluxbee", "node", "echo", "--name", "WF.deep", "--run-dir",
                                 str(root / "d2")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w.others.append(deep)
        wait_until(lambda: links_up(w.run("a"), "B") and links_up(w.run("b"), "C") and links_up(w.run("a"), "D"),
                   timeout=60, what="the A-B, B-C and A-D links", step=0.3)
        yield w
    finally:  # processes first (a namespace outlives its deletion while a process is in it), then the wires
        if isinstance(net, topo.Loopback):
            net.thaw()
        for proc in w.others:
            stop_process(proc, "a node", strict=False)
        for host in reversed(list(w.hosts.values())):
            host.stop()
        net.teardown()
        shutil.rmtree(root, ignore_errors=True)


async def client(world: World, host: str = "a") -> NodeSender:
    sender, _ = await connect(NodeConfig(name=f"WF.probe{os.getpid()}x{time.monotonic_ns() % 10**6}",
                                         run_dir=world.run(host)))
    return sender


async def link_state(sender: NodeSender, hive: str, role: str = "wan") -> bool:
    links = (await sender.router_status())[role]["links"]
    return any(x["hive_id"] == hive and x["state"] == "up" for x in links)


async def test_routing_across_hosts_and_hives_with_transit(world: World) -> None:
    done = fluxbee("send", "WF.echo@C", "--run-dir", str(world.run("a")), "--payload", '"over two wires"', "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["from"] == "WF.echo@C"
    route = next(r for r in status(world.run("a"))["wan"]["routes"] if r["hive"] == "C")
    assert route["path"] == ["B", "C"] and route["next_hop"] == "B"  # transit, no route written anywhere
    sender = await client(world, "c")
    try:
        assert await answers(sender, "WF.echo@A")
        assert await answers(sender, "WF.deep@D")  # C → B → A → D router 1 → mesh → D router 2
    finally:
        await sender.close()
    # the two routers of hive D: a node on router 1 reaches the node on router 2 across their wire
    assert links_up(world.run("d1"), "D", "mesh")
    sender = await client(world, "d1")
    try:
        assert await answers(sender, "WF.deep@D")
        assert await answers(sender, "WF.echo@C")
    finally:
        await sender.close()


@dataclass
class Cut:
    """One wire cut and healed under steady traffic: when each step happened, and every request's outcome."""

    at: float
    """When the wire was cut (monotonic)."""
    detect: float
    """Seconds from the cut until the router saw the link down."""
    healed: float
    """When the wire was healed (monotonic)."""
    reconverge: float
    """Seconds from the heal until a request was answered again."""
    outcomes: list[Outcome]

    def before(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.sent < self.at]

    def while_down(self) -> list[Outcome]:
        """Sent once the link was known down (half a second of margin) and before the heal."""
        return [o for o in self.outcomes if self.at + self.detect + 0.5 <= o.sent < self.healed]


async def cut_and_heal(world: World, sender: NodeSender, dst: str, wire: tuple[str, str], link_down: LinkCheck,
                       what: str, *, lead: float, settle: float,
                       while_cut: Callable[[], Awaitable[None]] | None = None) -> Cut:
    """Requests to ``dst`` every 50 ms; ``lead`` s later the wire is cut until ``link_down`` holds (within the
    dead timer plus 10 s) and a second more (``while_cut`` runs then), healed, and the traffic goes on until a
    request is answered again and ``settle`` s more.  The wire is healed and the traffic stopped whatever
    fails.  Closes ``sender``."""
    traffic = Traffic(sender, dst)
    try:
        traffic.start()
        await asyncio.sleep(lead)
        world.net.cut(*wire)
        at = time.monotonic()
        try:
            detect = await until(link_down, DEAD_S + 10, what)
            await asyncio.sleep(1.0)
            if while_cut is not None:
                await while_cut()
        finally:
            world.net.heal(*wire)
        healed = time.monotonic()
        reconverge = await until(lambda: already(traffic.answered_since(healed)), 60, f"{dst} after the heal")
        await asyncio.sleep(settle)
    finally:
        outcomes = await traffic.stop()
        await sender.close()
    return Cut(at, detect, healed, reconverge, outcomes)


def check_cut(world: World, cut: Cut, label: str, *, detect_within: float, refused_as: str,
              allowed: set[str]) -> dict[str, int]:
    """What every cut must show: detected in time, all answered before it, every request sent while the
    link was known down refused as ``refused_as``, and no outcome outside ``allowed`` (none lost).  The tally."""
    counts = tally(cut.outcomes)
    print(f"\n[{world.net.kind}] {label}: detected in {cut.detect:.2f} s (dead timer {DEAD_S} s), answered again "
          f"{cut.reconverge:.2f} s after the heal; requests: {counts}")
    assert cut.detect <= detect_within
    assert all(o.result == "answered" for o in cut.before())
    down = cut.while_down()
    assert down and all(o.result == refused_as for o in down), tally(down)
    assert set(counts) <= allowed, counts
    return counts


async def test_a_cut_wire_is_detected_within_the_dead_timer_and_healed(world: World) -> None:
    sender = await client(world)

    async def refused_at_once() -> None:
        with pytest.raises(UnreachableError) as refused:
            await sender.request("WF.echo@C", "ping", timeout=5)
        assert refused.value.reason == "WAN_UNAVAILABLE" and "no link reaches" in refused.value.detail

    cut = await cut_and_heal(world, sender, "WF.echo@C", ("a", "b"), lambda: negate(link_state(sender, "B")),
                             "A closing the dead link", lead=1.0, settle=0.5, while_cut=refused_at_once)
    check_cut(world, cut, "cut A-B", detect_within=DEAD_S + HELLO_S + 3,  # the dead timer, plus asking the router
              refused_as="UNREACHABLE:WAN_UNAVAILABLE",
              allowed={"answered", "UNREACHABLE:WAN_UNAVAILABLE"})  # none lost, none other
    assert cut.before()
    assert all(o.done - o.sent < 1.0 for o in cut.while_down())  # refused at once, not after a timeout
    assert any(o.result == "answered" for o in cut.outcomes if o.sent >= cut.healed)
    # what was written to the dying link: refused when the dead timer fired, not left to the sender's timeout
    in_doubt = [o for o in cut.outcomes if cut.at <= o.sent < cut.at + cut.detect and o.result != "answered"]
    assert in_doubt and all(o.done - cut.at <= cut.detect + 1.0 for o in in_doubt)


async def test_a_cut_mesh_wire_between_the_two_routers_of_a_hive(world: World) -> None:
    """Hive D's routers lose each other: WF.deep (on router 2) is withdrawn from hive D, and A's requests to it
    are refused by D with a reason until the wire is back."""
    sender = await client(world)
    try:
        await until(lambda: answers(sender, "WF.deep@D"), 30, "A reaching WF.deep@D")
    except BaseException:
        await sender.close()
        raise
    cut = await cut_and_heal(world, sender, "WF.deep@D", ("d1", "d2"),
                             lambda: negate(asyncio.to_thread(links_up, world.run("d1"), "D", "mesh")),
                             "router 1 closing the dead mesh link", lead=0.5, settle=0.3)
    check_cut(world, cut, "mesh wire D1-D2 cut", detect_within=DEAD_S + HELLO_S + 5,
              refused_as="UNREACHABLE:NODE_NOT_FOUND",  # said by D
              allowed={"answered", "UNREACHABLE:NODE_NOT_FOUND", "UNREACHABLE:PEER_UNAVAILABLE"})
    # what was written to the dying mesh link: refused PEER_UNAVAILABLE when the dead timer fired
    in_doubt = [o for o in cut.outcomes if o.result == "UNREACHABLE:PEER_UNAVAILABLE"]
    assert in_doubt and all(cut.at <= o.sent <= cut.at + cut.detect and o.done - cut.at <= cut.detect + 1.0
                            for o in in_doubt)


async def test_delay_and_loss_on_a_wire(world: World) -> None:
    if isinstance(world.net, topo.Loopback):
        pytest.skip("delay and loss need network namespaces (loopback variant)")
    sender = await client(world)
    try:
        assert await answers(sender, "WF.echo@B")
        try:
            how = world.net.impair("a", "b", delay_ms=40)  # on both ends: 80 ms more per round trip
        except topo.TopologyError as err:
            pytest.skip(f"this machine can neither netem nor emulate it: {err}")
        try:
            rtts = []
            for n in range(15):
                t0 = time.monotonic()
                reply = await sender.request("WF.echo@B", {"n": n}, timeout=REQUEST_TIMEOUT)
                rtts.append(time.monotonic() - t0)
                assert reply.payload == {"n": n}
            assert min(rtts) >= 0.080  # the frames did cross the delayed wire, both ways
            print(f"\n[{world.net.kind}] delay 40 ms each way by {how}: round trip min {min(rtts) * 1000:.0f} ms, "
                  f"median {sorted(rtts)[len(rtts) // 2] * 1000:.0f} ms")
            # loss: TCP retransmits under the link; every request is answered, or refused with a reason
            how = world.net.impair("a", "b", loss_percent=5)
            traffic = Traffic(sender, "WF.echo@B", interval=0.02)
            traffic.start()
            await asyncio.sleep(4.0)
            outcomes = await traffic.stop()
            dropped = world.net.dropped("a", "b")
        finally:
            world.net.clear_impairment("a", "b")
        counts = tally(outcomes)
        print(f"[{world.net.kind}] 5% loss each way by {how}: {dropped} packets dropped; requests: {counts}")
        assert dropped > 0  # the wire really lost packets under the link
        assert counts.get("answered", 0) >= len(outcomes) * 0.9, counts
        assert set(counts) <= {"answered", "UNREACHABLE:WAN_UNAVAILABLE"}, counts  # none vanished
        await until(lambda: answers(sender, "WF.echo@C"), 30, "A reaching C after the impairment")
    finally:
        await sender.close()


async def test_a_slow_wire_still_answers_everything(world: World) -> None:
    """A token bucket (tbf, in every kernel that has tc) throttles the A-B wire to 128 kbit/s each way:
    a burst of requests queues behind it; every one is answered or refused with a reason."""
    if isinstance(world.net, topo.Loopback):
        pytest.skip("traffic shaping needs network namespaces (loopback variant)")
    sender = await client(world)
    try:
        assert await answers(sender, "WF.echo@C")
        world.net.qdisc("a", "b", "tbf", "rate", "128kbit", "burst", "4kb", "latency", "2s")
        try:
            traffic = Traffic(sender, "WF.echo@C", interval=0.005)  # a burst of ~100 requests: ~40 KB each way
            traffic.start()
            await asyncio.sleep(0.5)
            outcomes = await traffic.stop()
            await until(lambda: answers(sender, "WF.echo@C"), 30, "A reaching C on the slow wire")
            assert isinstance(world.net, topo.Namespaces)
            shaped = world.net.qdisc_stats("a", "b")
        finally:
            world.net.clear_impairment("a", "b")
        counts = tally(outcomes)
        waits = sorted(o.done - o.sent for o in outcomes if o.result == "answered")
        overlimits = int(shaped.split("overlimits")[1].split()[0]) if "overlimits" in shaped else 0
        assert "tbf" in shaped and overlimits > 0, shaped  # the wire really was the bottleneck
        print(f"\n[{world.net.kind}] A-B throttled to 128 kbit/s ({overlimits} packets held back): {counts}; "
              f"round trip median "
              f"{waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms")
        assert counts.get("answered", 0) >= len(outcomes) * 0.9, counts
        assert set(counts) <= {"answered", "UNREACHABLE:WAN_UNAVAILABLE", "UNREACHABLE:DST_CONGESTED"}, counts
    finally:
        await sender.close()


async def test_a_gateway_killed_with_sigkill_relinks_and_resyncs(world: World) -> None:
    sender = await client(world)
    traffic = Traffic(sender, "WF.echo@C")
    try:
        await until(lambda: answers(sender, "WF.echo@C"), 30, "A reaching C")
        traffic.start()
        await asyncio.sleep(0.5)
        os.kill(world.hosts["b"].router_pid(), signal.SIGKILL)
        killed = time.monotonic()
        # `fluxbee up` of hive B restarts its router; B dials A again and C dials B again; full resync
        back = await until(lambda: already(traffic.answered_since(killed + 0.5)), 90, "A reaching C after B's restart")
        await asyncio.sleep(0.5)
    finally:
        outcomes = await traffic.stop()
    try:
        counts = tally(outcomes)
        refused = [o for o in outcomes if o.result.startswith("UNREACHABLE")]
        print(f"\n[{world.net.kind}] B's router SIGKILLed: first refusal at A "
              f"{(min(o.done for o in refused) - killed) if refused else float('nan'):.2f} s after the kill, "
              f"C answering again {back:.2f} s after it (restart + relink + resync); requests: {counts}")
        assert all(o.result == "answered" for o in outcomes if o.sent < killed)
        # the kernel of host b reset the connections: A refused at once, with the reason (no dead timer needed)
        assert refused and min(o.done for o in refused) - killed <= DEAD_S + 1
        assert set(counts) <= {"answered", "UNREACHABLE:WAN_UNAVAILABLE"}, counts  # none lost
        route = next(r for r in (await sender.router_status())["wan"]["routes"] if r["hive"] == "C")
        assert route["path"] == ["B", "C"]
        assert await answers(sender, "WF.deep@D")  # the other side of A was never disturbed
    finally:
        await sender.close()
        if isinstance(world.net, topo.Loopback):
            world.net.pids["b"] = [world.hosts["b"].router_pid()]


async def test_a_hive_restarted_is_linked_and_reachable_again(world: World) -> None:
    sender = await client(world)
    try:
        await until(lambda: answers(sender, "WF.echo@C"), 30, "A reaching C")
        stopping = time.monotonic()
        world.hosts["c"].stop()
        stopped = time.monotonic()
        await until(lambda: refused_with(sender, "WF.echo@C", "WAN_UNAVAILABLE"), DEAD_S + 10,
                    "C withdrawn after its hive stopped")
        world.hosts["c"].start(world.net, "WF.echo@C")  # `fluxbee up` again, same run dir, same namespace
        back = await until(lambda: answers(sender, "WF.echo@C"), 60, "A reaching C after its restart")
        print(f"\n[{world.net.kind}] hive C stopped in {stopped - stopping:.2f} s (withdrawn at A by then); "
              f"started again and answering A {time.monotonic() - stopped:.2f} s later "
              f"({back:.2f} s after its echo node was up)")
    finally:
        await sender.close()


async def test_a_peer_presenting_another_hives_certificate_is_refused(world: World) -> None:
    root = world.root
    done = fluxbee("wan", "issue", "--ca", str(root / "ca"), "--hive-id", "A", "--out", str(root / "cert-A"))
    assert done.returncode == 0, done.stderr
    rogue_dir = root / "rogue"
    rogue_dir.mkdir()
    # on host c, a router claiming to be hive E with hive A's (valid, same CA) certificate dials B's gateway
    argv = [sys.executable, "-m", "fluxbee", "router", "--hive-id", "E", "--run-dir", str(rogue_dir),
            "--wan-cert", str(root / "cert-A" / "tls.crt"), "--wan-key", str(root / "cert-A" / "tls.key"),
            "--wan-ca-cert", str(root / "ca" / "ca.crt"), "--uplink", world.net.address("b", "c", world.net.port("b")),
            *TIMERS]
    with (root / "rogue.log").open("ab") as out:
        rogue = subprocess.Popen(world.net.argv("c", argv), stdout=out, stderr=subprocess.STDOUT)
    world.others.append(rogue)
    b_log = world.run("b") / "logs" / "router.log"
    wait_until(lambda: "CERT_HIVE_MISMATCH" in read_text(b_log), timeout=30, what="B refusing the rogue", step=0.2)
    assert "E" not in {x["hive_id"] for x in status(world.run("b"))["wan"]["links"] if x["state"] == "up"}

    def rogue_reason() -> str | None:
        if not any((rogue_dir / "routers").glob("*.sock")) if (rogue_dir / "routers").is_dir() else True:
            return None
        return next((x["reason"] for x in status(rogue_dir)["wan"]["links"] if x["reason"]), None)

    reason = wait_until(rogue_reason, timeout=30, what="the refusal in the rogue's status", step=0.3)
    assert "CERT_HIVE_MISMATCH" in reason
    stop_process(rogue, "rogue router", strict=False)
    sender = await client(world)
    try:
        assert await answers(sender, "WF.echo@C")  # the real hives were not disturbed
    finally:
        await sender.close()
