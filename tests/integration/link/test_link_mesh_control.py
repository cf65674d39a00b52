"""Two `fluxbee router` processes of one hive meshed over mutual TLS, and LINK_ADD / LINK_REMOVE sent by
an authenticated system node (and refused to anyone else)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import NodeProc, RouterProc, eventually, free_port, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as lp
from fluxbee.dataplane.sdk import NodeConfig, UnreachableError, connect

pytestmark = pytest.mark.integration


def fluxbee(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbm", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def certificate(root: Path, hive: str) -> tuple[str, ...]:
    if not (root / "ca" / "ca.key").exists():
        assert fluxbee("wan", "ca", str(root / "ca")).returncode == 0
    out = root / f"cert-{hive}"
    done = fluxbee("wan", "issue", "--ca", str(root / "ca"), "--hive-id", hive, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return ("--wan-cert", str(out / "tls.crt"), "--wan-key", str(out / "tls.key"),
            "--wan-ca-cert", str(root / "ca" / "ca.crt"))


@pytest.fixture
def started() -> Iterator[list[Any]]:
    procs: list[Any] = []
    yield procs
    for proc in reversed(procs):
        proc.stop()


def run_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    return path


async def test_two_routers_of_one_hive_mesh_balance_and_keep_vpns(root: Path, started: list[Any]) -> None:
    p1, p2 = free_port(), free_port()
    certs = certificate(root, "M")
    config = {"vpns": [{"pattern": "WF.red", "match_kind": "PREFIX", "vpn_id": 10}]}
    r1 = RouterProc(run_dir(root, "r1"), hive_id="M", config=config,
                    extra=("--mesh-listen", f"127.0.0.1:{p1}", "--mesh-peer", f"127.0.0.1:{p2}", *certs,
                           "--link-hello-interval", "0.3", "--link-dead-interval", "1.5"))
    started.append(r1)
    r2 = RouterProc(run_dir(root, "r2"), hive_id="M", config=config,
                    extra=("--mesh-listen", f"127.0.0.1:{p2}", "--mesh-peer", f"127.0.0.1:{p1}", *certs,
                           "--link-hello-interval", "0.3", "--link-dead-interval", "1.5"))
    started.append(r2)
    wait_until(lambda: [x for x in r1.status()["mesh"]["links"] if x["state"] == "up"], timeout=20,
               what="the mesh link")
    # both routers dialled: exactly one link survives, the same on both sides
    wait_until(lambda: len([x for x in r2.status()["mesh"]["links"] if x["state"] == "up"]) == 1
               and len([x for x in r1.status()["mesh"]["links"] if x["state"] == "up"]) == 1, timeout=20,
               what="one mesh link between the two routers")
    far = NodeProc("echo", "WF.echo", r2.run_dir)
    started.append(far)
    sender, _ = await connect(NodeConfig(name="WF.asker", run_dir=r1.run_dir))
    try:
        reply = await answered(sender, "WF.echo", what="a reply across the mesh")
        assert reply.routing.src_l2_name == "WF.echo@M"
        near = NodeProc("echo", "WF.echo", r1.run_dir)
        started.append(near)
        await eventually(lambda: len(r1.status()["nodes"]) >= 2, what="the local echo node")
        sources = set()
        for _ in range(6):
            answer = await sender.request("WF.echo", {"n": 1}, timeout=5)
            sources.add(answer.routing.src)
        assert len(sources) == 2  # round robin over the local and the remote instance
        # VPNs hold across hosts: a node of VPN 10 on r2 reaches neither echo (VPN 0), by name or by
        # the UUID of the one on r1
        near_uuid = next(n["uuid"] for n in r1.status()["nodes"] if n["name"] == "WF.echo@M")
        red, _ = await connect(NodeConfig(name="WF.red.one", run_dir=r2.run_dir))
        try:
            for dst in (near_uuid, "WF.echo", near_uuid):
                with pytest.raises(UnreachableError) as err:
                    await red.request(dst, {"n": 2}, timeout=5)
                assert err.value.reason == wire.VPN_BLOCKED, (dst, str(err.value))
        finally:
            await red.close()
    finally:
        await sender.close()
    assert r1.counter("forwarded", "mesh") >= 1


async def _ask(sender: Any, dst: str) -> Any:
    try:
        return await sender.request(dst, {"n": 0}, timeout=2)
    except (UnreachableError, TimeoutError):
        return None


async def answered(sender: Any, dst: str, timeout: float = 20, what: str = "a reply") -> Any:
    """Ask ``dst`` until it answers (links take a moment to come up and advertise)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        reply = await _ask(sender, dst)
        if reply is not None:
            return reply
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.2)


async def test_link_add_and_remove_from_an_authenticated_system_node(root: Path, started: list[Any]) -> None:
    pb = free_port()
    a = RouterProc(run_dir(root, "a"), hive_id="A", extra=("--wan-listen", f"127.0.0.1:{free_port()}",
                                                           *certificate(root, "A")))
    started.append(a)
    b = RouterProc(run_dir(root, "b"), hive_id="B", extra=("--wan-listen", f"127.0.0.1:{pb}", *certificate(root, "B")))
    started.append(b)
    echo = NodeProc("echo", "WF.echo", b.run_dir)
    started.append(echo)
    nobody, _ = await connect(NodeConfig(name="WF.nobody", run_dir=a.run_dir))
    admin, _ = await connect(NodeConfig(name="SY.admin", run_dir=a.run_dir, credential_file=a.credential_file))
    try:
        refused = await nobody.request(a.uuid, {"address": f"127.0.0.1:{pb}"}, msg_type=wire.TYPE_SYSTEM,
                                       msg=lp.LINK_ADD, timeout=5)
        assert refused.meta.msg == lp.LINK_ADD_RESPONSE and refused.payload["error_code"] == "FORBIDDEN"
        bad = await admin.request(a.uuid, {"address": "no port"}, msg_type=wire.TYPE_SYSTEM, msg=lp.LINK_ADD)
        assert bad.payload["status"] == "error" and bad.payload["error_code"] == "INVALID_ADDRESS"
        ok = await admin.request(a.uuid, {"address": f"127.0.0.1:{pb}"}, msg_type=wire.TYPE_SYSTEM, msg=lp.LINK_ADD)
        assert ok.payload["status"] == "ok", ok.payload
        await answered(nobody, "WF.echo@B", what="WF.echo@B through the added link")
        stored = (a.run_dir / "state" / "RT.gateway@A.links.json").read_text()
        assert f"127.0.0.1:{pb}" in stored
        status = a.status()["wan"]["links"]
        assert [x["direction"] for x in status if x["hive_id"] == "B" and x["state"] == "up"] == ["out"]
        # a restarted router dials the stored link again
        a.stop()
        a.start()
        await nobody.close()
        nobody, _ = await connect(NodeConfig(name="WF.nobody", run_dir=a.run_dir))
        await answered(nobody, "WF.echo@B", timeout=30, what="the stored link after a restart")
        admin2, _ = await connect(NodeConfig(name="SY.admin", run_dir=a.run_dir, credential_file=a.credential_file))
        try:
            missing = await admin2.request(a.uuid, {"hive_id": "Z"}, msg_type=wire.TYPE_SYSTEM, msg=lp.LINK_REMOVE)
            assert missing.payload["error_code"] == "LINK_NOT_FOUND"
            removed = await admin2.request(a.uuid, {"hive_id": "B"}, msg_type=wire.TYPE_SYSTEM, msg=lp.LINK_REMOVE)
            assert removed.payload["status"] == "ok" and removed.payload["closed"] == 1, removed.payload
            assert removed.payload["forgotten"] == [f"127.0.0.1:{pb}"]
        finally:
            await admin2.close()
        with pytest.raises(UnreachableError) as err:
            await nobody.request("WF.echo@B", None, timeout=5)
        assert err.value.reason == wire.WAN_UNAVAILABLE
        assert f"127.0.0.1:{pb}" not in (a.run_dir / "state" / "RT.gateway@A.links.json").read_text()
    finally:
        await nobody.close()
        await admin.close()


async def test_a_router_without_wan_links_reaches_other_hives_through_a_meshed_gateway(
        root: Path, started: list[Any]) -> None:
    pm, pw = free_port(), free_port()
    b = RouterProc(run_dir(root, "b"), hive_id="B", extra=("--wan-listen", f"127.0.0.1:{pw}", *certificate(root, "B")))
    started.append(b)
    started.append(NodeProc("echo", "WF.echo", b.run_dir))
    certs = certificate(root, "M")
    gateway = RouterProc(run_dir(root, "gw"), hive_id="M",
                         extra=("--mesh-listen", f"127.0.0.1:{pm}", "--uplink", f"127.0.0.1:{pw}", *certs))
    started.append(gateway)
    host = RouterProc(run_dir(root, "host"), hive_id="M", extra=("--mesh-peer", f"127.0.0.1:{pm}", *certs))
    started.append(host)
    started.append(NodeProc("echo", "WF.local", host.run_dir))
    asker, _ = await connect(NodeConfig(name="WF.asker", run_dir=host.run_dir))
    other, _ = await connect(NodeConfig(name="WF.other", run_dir=b.run_dir))
    try:
        reply = await answered(asker, "WF.echo@B", timeout=30, what="WF.echo@B from a router with no WAN link")
        assert reply.routing.src_l2_name == "WF.echo@B"
        routes = host.status()["wan"]["routes"]
        assert routes == [{"hive": "B", "next_hop": "mesh:B", "path": ["B"], "via": "mesh"}]
        # and back: hive B reaches a node on the host router through M's gateway
        back = await answered(other, "WF.local@M", timeout=30, what="WF.local@M from hive B")
        assert back.routing.src_l2_name == "WF.local@M"
        assert gateway.counter("forwarded", "mesh") >= 1 and gateway.counter("forwarded", "wan") >= 1
    finally:
        await asker.close()
        await other.close()
