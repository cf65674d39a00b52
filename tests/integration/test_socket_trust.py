"""Who may say what on the hive socket (README: Trust model), tried the way an attacker or an unlucky
operator reaches the router: raw sockets and SDK nodes against ``fluxbee router``, and a hive started
with ``fluxbee up`` as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hive_harness import (
    HEADER,
    RawPeer,
    RouterProc,
    eventually,
    fluxbee_argv,
    free_port,
    grant,
    stop_process,
    wait_until,
)

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, ReplacedError, connect


def hello(path: Path, name: str, *, node: str | None = None, credential: str | None = None,
          peers: list[RawPeer] | None = None) -> tuple[RawPeer, dict[str, Any]]:
    """A raw HELLO; the peer and the router's first answer (ANNOUNCE or PROTOCOL_ERROR)."""
    peer = RawPeer(path)
    if node is not None:
        peer.uuid = node
    if peers is not None:
        peers.append(peer)
    peer.send_raw(wire.system_frame(peer.uuid, None, wire.HELLO,
                                    wire.hello_payload(peer.uuid, name, credential=credential),
                                    trace_id=str(uuid.uuid4()), ttl=1))
    return peer, peer.recv()


def refusal(reply: dict[str, Any]) -> str:
    assert reply["meta"]["msg"] == wire.PROTOCOL_ERROR, reply
    assert reply["payload"]["reason"] == wire.INVALID_HELLO, reply
    return str(reply["payload"]["detail"])


def token(router: RouterProc) -> str:
    return router.credential_file.read_text().strip()


# --- 1. socket modes and peer credentials ----------------------------------------------------------
def test_the_socket_dir_and_socket_are_owner_and_group_only(router_factory: Callable[..., RouterProc]) -> None:
    router = router_factory(extra=("--socket-group", "4242"))
    sock, directory = os.stat(router.socket_path), os.stat(router.socket_path.parent)
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o660 and stat.S_IMODE(directory.st_mode) == 0o750
    assert sock.st_gid == 4242 and directory.st_gid == 4242


def test_each_node_s_peer_credentials_are_in_the_status(router: RouterProc, raw_peers: list[RawPeer],
                                                        run_dir: Path) -> None:
    peer, reply = hello(router.socket_path, "WF.seen", peers=raw_peers)
    assert reply["meta"]["msg"] == wire.ANNOUNCE
    node = next(n for n in router.status()["nodes"] if n["uuid"] == peer.uuid)
    assert node["peer"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}
    assert node["claimed"] is False
    done = subprocess.run(fluxbee_argv("status", "--run-dir", str(run_dir), "--json"), capture_output=True,
                          text=True, timeout=30, check=True)
    shown = next(n for n in json.loads(done.stdout)["nodes"] if n["uuid"] == peer.uuid)
    assert shown["peer"]["pid"] == os.getpid()
    table = subprocess.run(fluxbee_argv("status", "--run-dir", str(run_dir)), capture_output=True, text=True,
                           timeout=30, check=True).stdout
    assert any(line.startswith("WF.seen@t") and f" {os.getpid()} " in line for line in table.splitlines()), table


# --- 2. claimed names ---------------------------------------------------------------------------
def test_claimed_names_need_proof_and_refusals_are_counted(router: RouterProc, raw_peers: list[RawPeer],
                                                           run_dir: Path) -> None:
    path = router.socket_path
    grant(run_dir, "WF.declared", token_name="declared")
    time.sleep(1.5)  # the router polls the claims dir every second
    for name in ("SY.identity", "SY.admin", "SY.evil", "SY.identity.impostor", "WF.declared"):
        _, reply = hello(path, name, peers=raw_peers)
        assert refusal(reply).startswith("NAME_CLAIMED"), (name, reply)
    _, reply = hello(path, "SY.identity", credential="f" * 64, peers=raw_peers)
    assert "does not match" in refusal(reply)
    assert router.counter("hello_refused", "NAME_CLAIMED") == 6
    _, reply = hello(path, "SY.identity", credential=token(router), peers=raw_peers)
    assert reply["meta"]["msg"] == wire.ANNOUNCE
    declared = (run_dir / "credentials" / "declared").read_text().strip()
    _, reply = hello(path, "WF.declared", credential=declared, peers=raw_peers)
    assert reply["meta"]["msg"] == wire.ANNOUNCE
    _, reply = hello(path, "WF.anything.else", peers=raw_peers)  # undeclared names stay open
    assert reply["meta"]["msg"] == wire.ANNOUNCE


def test_a_name_claimed_later_evicts_its_squatter_and_a_bad_claims_file_changes_nothing(
        router: RouterProc, raw_peers: list[RawPeer], run_dir: Path) -> None:
    squatter, reply = hello(router.socket_path, "WF.later", peers=raw_peers)
    assert reply["meta"]["msg"] == wire.ANNOUNCE
    grant(run_dir, "WF.later", token_name="later")
    frames = squatter.closed_by_peer(10)
    assert frames and refusal(frames[-1]).startswith("NAME_CLAIMED")
    (run_dir / "claims" / "WF.broken").write_text('{"credential_sha256": ["not hex"]}')
    wait_until(lambda: router.counter("config_errors", "claims") >= 1, 10, "the bad claims file to be refused")
    assert router.status()["trust"]["claimed_names"] == 7  # the previous claims stay: the test's SY.* and WF.later
    _, reply = hello(router.socket_path, "WF.later", peers=raw_peers)
    assert refusal(reply).startswith("NAME_CLAIMED")
    assert "credential_sha256 entries must be" in router.log_path.read_text()


# --- 3. privileged messages ------------------------------------------------------------------------
async def test_config_changed_and_admin_command_need_an_authenticated_system_node_or_a_grant(
        router: RouterProc, run_dir: Path) -> None:
    echo, _ = await connect(NodeConfig(name="WF.target", run_dir=run_dir, on_message=lambda m: None))
    app, _ = await connect(NodeConfig(name="WF.untrusted.app", run_dir=run_dir, credential_file=None))
    try:
        drop = {"subsystem": "routes", "config": [{"prefix": "WF.target", "match_kind": "EXACT", "action": "DROP"}]}
        reply = await app.request(router.uuid, drop, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
        assert reply.meta.msg == wire.CONFIG_RESPONSE
        assert reply.payload["status"] == "error" and reply.payload["error_code"] == "FORBIDDEN"
        admin = await app.request("SY.admin", {"action": "kill_node", "target": "t", "params": {}},
                                  msg_type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND)
        assert admin.meta.msg == wire.ADMIN_COMMAND_RESPONSE and admin.payload["error_code"] == "FORBIDDEN"
        assert admin.routing.src == router.uuid  # answered by the router: SY.admin never saw it
        assert admin.routing.src_l2_name is None and reply.routing.src_l2_name is None  # router-made: none
        assert router.status()["routes"] == []
        assert router.counter("forbidden", wire.CONFIG_CHANGED) == 1
        assert router.counter("forbidden", wire.ADMIN_COMMAND) == 1
        # A granted name may: its claim proves it and lists the message.
        ops_token = grant(run_dir, "WF.ops", token_name="ops")
        doc = json.loads((run_dir / "claims" / "WF.ops").read_text())
        (run_dir / "claims" / "WF.ops").write_text(json.dumps({**doc, "grants": ["CONFIG_CHANGED"]}))
        await asyncio.sleep(1.5)
        ops, _ = await connect(NodeConfig(name="WF.ops", run_dir=run_dir, credential_file=ops_token))
        try:
            reply = await ops.request(router.uuid, drop, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
            assert reply.payload["status"] == "ok", reply.payload
        finally:
            await ops.close()
    finally:
        await app.close()
        await echo.close()


# --- 4. UUID takeover and flapping -----------------------------------------------------------------
async def test_a_claimed_node_s_uuid_cannot_be_taken_without_its_proof(router: RouterProc, run_dir: Path,
                                                                      raw_peers: list[RawPeer]) -> None:
    admin, _ = await connect(NodeConfig(name="SY.admin", run_dir=run_dir))
    try:
        for name in ("WF.thief", "SY.admin"):
            _, reply = await asyncio.to_thread(hello, router.socket_path, name, node=admin.uuid, peers=raw_peers)
            assert refusal(reply).split(":")[0] in ("UUID_IN_USE", "NAME_CLAIMED"), reply
        nodes = {n["uuid"]: n for n in router.status()["nodes"]}
        assert nodes[admin.uuid]["name"] == "SY.admin@t" and nodes[admin.uuid]["peer"]["pid"] == os.getpid()
        assert router.counter("takeovers", "refused") == 1
        assert (await admin.router_status())["router"]["uuid"] == router.uuid  # the incumbent still works
    finally:
        await admin.close()


FLAPPER = textwrap.dedent("""
    # A node as the original Go SDK behaves: say HELLO, and 100 ms after any close say it again.
    import socket, struct, sys, time, uuid
    from fluxbee.dataplane import wire
    path, node, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
    while time.monotonic() < until:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(wire.system_frame(node, None, wire.HELLO, wire.HelloPayload(uuid=node, name="WF.twin"),
                                    trace_id=str(uuid.uuid4()), ttl=1))
        s.settimeout(max(0.01, until - time.monotonic()))
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()
        time.sleep(0.1)
""")


def test_two_processes_with_one_uuid_stop_flapping_and_the_incumbent_keeps_it(
        router_factory: Callable[..., RouterProc]) -> None:
    router = router_factory(extra=("--takeover-limit", "3", "--takeover-window", "30"))
    node = str(uuid.uuid4())
    twins = [subprocess.Popen([sys.executable, "-c", FLAPPER, str(router.socket_path), node, "4"])
             for _ in range(2)]
    try:
        wait_until(lambda: router.counter("takeovers", "refused") >= 5, 10, "takeovers to be refused")
        holder = next(n for n in router.status()["nodes"] if n["uuid"] == node)
        time.sleep(1.0)
        still = next(n for n in router.status()["nodes"] if n["uuid"] == node)
        assert still["peer"]["pid"] == holder["peer"]["pid"]  # no more evictions
        assert still["flapping"] is True and still["replacements"] == 3
        assert router.counter("takeovers", "replaced") == 3
        log = router.log_path.read_text()
        line = next(x for x in log.splitlines() if "two live processes use one UUID" in x)
        assert all(f"pid {t.pid}" in line for t in twins), line
    finally:
        for t in twins:
            t.wait(15)


async def test_the_sdk_stops_after_replaced_and_raises_a_clear_error(router: RouterProc, run_dir: Path,
                                                                     raw_peers: list[RawPeer]) -> None:
    sender, receiver = await connect(NodeConfig(name="WF.copy", run_dir=run_dir, backoff_initial=0.01))
    _, reply = await asyncio.to_thread(hello, router.socket_path, "WF.copy", node=sender.uuid, peers=raw_peers)
    assert reply["meta"]["msg"] == wire.ANNOUNCE  # an unclaimed name: the newcomer takes over once
    with pytest.raises(ReplacedError, match="another process uses this UUID"):
        await asyncio.wait_for(receiver.recv(), 5)
    with pytest.raises(ReplacedError):
        await sender.send("WF.copy", "x")
    with pytest.raises(ReplacedError):
        await sender.wait_connected(1)
    await asyncio.sleep(0.5)
    assert sender.connections == 1  # never reconnected to evict the other process
    assert router.counter("takeovers", "replaced") == 1
    await sender.close()


async def test_a_node_whose_connections_keep_dying_ends_connected_or_with_an_error(tmp_path: Path) -> None:
    """A router that answers ANNOUNCE and closes at once, again and again (the race of ``on_lost``
    with a reconnection still in progress): the node never sits idle without a socket."""
    path = tmp_path / "r.sock"
    connections: list[asyncio.StreamWriter] = []
    drop_next = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal drop_next
        size = HEADER.unpack(await reader.readexactly(4))[0]
        hello_msg = json.loads(await reader.readexactly(size))
        node = hello_msg["payload"]["uuid"]
        writer.write(wire.system_frame(
            str(uuid.UUID(int=1)), node, wire.ANNOUNCE,
            wire.AnnouncePayload(uuid=node, name="WF.n@t", status="registered", vpn_id=0, router_name="RT.x@t"),
            trace_id=hello_msg["routing"]["trace_id"], ttl=1))
        if drop_next > 0:
            drop_next -= 1
            writer.close()  # ANNOUNCE and EOF in one read on the node's side
            return
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_unix_server(serve, str(path))
    sender, _ = await connect(NodeConfig(name="WF.n", router_socket=path, backoff_initial=0.01, backoff_max=0.05,
                                         credential_file=None))
    try:
        for round_ in range(20):
            drop_next = round_ % 4
            before = len(connections)
            connections[-1].close()
            await eventually(lambda b=before: len(connections) > b, 10, f"round {round_}: a new connection")
            await eventually(lambda: sender.connected, 10, f"round {round_}: the node to be up")
            assert not connections[-1].is_closing()
            await sender.send(None, "alive")  # writes to the live socket, not into the void
    finally:
        await sender.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


# --- 5. limits ---------------------------------------------------------------------------------
async def test_a_flood_of_undeclared_hellos_leaves_room_for_claimed_names(
        router_factory: Callable[..., RouterProc], run_dir: Path) -> None:
    router = router_factory()  # default limits: 4,096 nodes, the last 256 for claimed names
    path = str(router.socket_path)

    def flood(count: int) -> dict[str, int]:
        socks: list[socket.socket] = []
        outcome = {"announced": 0, "refused": 0}
        try:
            for i in range(count):
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                node = str(uuid.uuid4())
                s.sendall(wire.system_frame(node, None, wire.HELLO,
                                            wire.HelloPayload(uuid=node, name=f"WF.flood.n{i}"),
                                            trace_id=str(uuid.uuid4()), ttl=1))
                socks.append(s)
            for s in socks:
                s.settimeout(10)
                try:
                    head = s.recv(4, socket.MSG_WAITALL)
                    body = s.recv(HEADER.unpack(head)[0], socket.MSG_WAITALL) if len(head) == 4 else b"{}"
                    kind = json.loads(body).get("meta", {}).get("msg")
                except (OSError, ValueError):
                    kind = None
                outcome["announced" if kind == wire.ANNOUNCE else "refused"] += 1
            return outcome
        finally:
            stop.wait()
            for s in socks:
                s.close()

    stop = threading.Event()
    task = asyncio.create_task(asyncio.to_thread(flood, 4091))
    try:
        await eventually(lambda: router.counter("hello_refused", "PEER_LIMIT") > 0, 60, "the flood to be limited")
        await eventually(lambda: len(router.status()["nodes"]) >= 1024, 60, "the flood to register")
        # A restarted system node and a declared node still get in.
        identity, _ = await connect(NodeConfig(name="SY.identity", run_dir=run_dir, connect_timeout=5))
        declared_token = grant(run_dir, "WF.echo", token_name="echo")
        await asyncio.sleep(1.5)
        echo, _ = await connect(NodeConfig(name="WF.echo", run_dir=run_dir, connect_timeout=5,
                                           credential_file=declared_token))
        names = {n["name"] for n in router.status()["nodes"]}
        assert {"SY.identity@t", "WF.echo@t"} <= names
        flooded = sum(1 for n in names if n.startswith("WF.flood."))
        assert flooded <= 1024  # one process: --max-unclaimed-per-pid
        await identity.close()
        await echo.close()
    finally:
        stop.set()
        outcome = await task
    assert outcome["announced"] <= 1024 and outcome["refused"] >= 4091 - 1024, outcome


def test_the_claimed_reserve_is_kept_from_undeclared_names(router_factory: Callable[..., RouterProc],
                                                           raw_peers: list[RawPeer]) -> None:
    router = router_factory(extra=("--max-nodes", "40", "--claimed-reserve", "8"))
    replies = [hello(router.socket_path, f"WF.n{i}", peers=raw_peers)[1] for i in range(35)]
    assert [r["meta"]["msg"] for r in replies].count(wire.ANNOUNCE) == 32
    assert all("reserved for the hive's claimed names" in refusal(r) for r in replies[32:])
    assert router.counter("hello_refused", "PEER_LIMIT") == 3
    for name in ("SY.admin", "SY.identity"):  # the reserve is the claimed names'
        _, reply = hello(router.socket_path, name, credential=token(router), peers=raw_peers)
        assert reply["meta"]["msg"] == wire.ANNOUNCE


# --- through `fluxbee up` ------------------------------------------------------------------------
@dataclass
class UpHive:
    run_dir: Path
    base: str
    proc: subprocess.Popen[str]

    def http(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def fluxbee(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "FLUXBEE_NODE_CREDENTIAL_FILE"}  # a user's shell
        return subprocess.run(fluxbee_argv(*args, "--run-dir", str(self.run_dir)), capture_output=True, text=True,
                              timeout=60, env=env)

    @property
    def socket_path(self) -> Path:
        return next((self.run_dir / "routers").glob("*.sock"))

    def status(self) -> dict[str, Any]:
        done = self.fluxbee("status", "--json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def echo_answers(self) -> bool:
        done = self.fluxbee("send", "WF.echo", "--payload", '{"a":1}', "--wait")
        return done.returncode == 0 and json.loads(done.stdout)["payload"] == {"a": 1}


@pytest.fixture(scope="module")
def up() -> Iterator[UpHive]:
    run_dir = Path(tempfile.mkdtemp(prefix="fbu", dir="/tmp"))
    run_dir.chmod(0o755)  # embedded PostgreSQL drops to 'postgres' when run as root: it must enter the run dir
    port = free_port()
    log = open(run_dir / "up.log", "w")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if k != "FLUXBEE_NODE_CREDENTIAL_FILE"}
    proc = subprocess.Popen([sys.executable, "-m", "fluxbee", "up", "--run-dir", str(run_dir), "--admin-listen",
                             f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    h = UpHive(run_dir, f"http://127.0.0.1:{port}", proc)
    try:
        wait_until(lambda: "is ready" in (run_dir / "up.log").read_text() or proc.poll() is not None, 60,
                   "the hive to be ready")
        assert proc.poll() is None, (run_dir / "up.log").read_text()
        wait_until(lambda: h.http("/hives/local/identity/ilks")[0] == 200, 60, "SY.identity to be ready")
        yield h
    finally:
        stop_process(proc, "fluxbee up", strict=False, sig=signal.SIGINT, timeout=30)
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_fluxbee_up_hands_each_claimed_name_a_credential_and_the_hive_works_end_to_end(up: UpHive) -> None:
    creds, claims = up.run_dir / "credentials", up.run_dir / "claims"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert sorted(p.name for p in claims.iterdir() if not p.name.startswith(".")) == [
        "SY.admin", "SY.identity", "SY.policy", "WF.echo"]
    for name in ("SY.admin", "SY.identity", "SY.policy", "WF.echo"):
        assert stat.S_IMODE((creds / name).stat().st_mode) == 0o600
        assert len((creds / name).read_text().strip()) == 64
    assert stat.S_IMODE(up.socket_path.stat().st_mode) == 0o660
    assert up.echo_answers()
    metrics = up.fluxbee("identity", "call", "IDENTITY_METRICS")
    assert metrics.returncode == 0 and json.loads(metrics.stdout)["status"] == "ok", metrics
    code, doc = up.http("/hives/local/identity/ilks")  # admin API -> SY.admin -> SY.identity
    assert code == 200 and doc["status"] == "ok", doc
    nodes = {n["name"]: n for n in up.status()["nodes"]}
    assert all(nodes[n]["claimed"] for n in ("SY.admin@local", "SY.identity@local", "SY.policy@local",
                                             "WF.echo@local"))
    assert nodes["SY.admin@local"]["peer"]["pid"] == up.proc.pid  # SY.admin runs inside fluxbee up


def test_impostors_of_system_and_declared_nodes_are_refused_and_get_none_of_their_traffic(up: UpHive) -> None:
    peers: list[RawPeer] = []
    try:
        for name in ("SY.identity", "SY.admin", "WF.echo"):
            _, reply = hello(up.socket_path, name, peers=peers)
            assert refusal(reply).startswith("NAME_CLAIMED"), reply
        _, reply = hello(up.socket_path, "SY.identity", credential="0" * 64, peers=peers)
        assert refusal(reply).startswith("NAME_CLAIMED")
        answers = [up.fluxbee("send", "WF.echo", "--payload", json.dumps({"i": i}), "--wait") for i in range(6)]
        assert [json.loads(a.stdout)["payload"] for a in answers] == [{"i": i} for i in range(6)]
        for _ in range(3):
            done = up.fluxbee("identity", "call", "IDENTITY_METRICS")
            assert json.loads(done.stdout)["status"] == "ok", done
        assert up.status()["counters"]["hello_refused"]["NAME_CLAIMED"] >= 4
    finally:
        for p in peers:
            p.close()


async def test_an_undeclared_app_can_neither_reroute_nor_command_the_hive(up: UpHive) -> None:
    sender, _ = await connect(NodeConfig(name="WF.untrusted.app", run_dir=up.run_dir, credential_file=None))
    try:
        router = sender.router_uuid
        drop = {"subsystem": "routes", "config": [{"prefix": "WF.echo", "match_kind": "EXACT", "action": "DROP"}]}
        reply = await sender.request(router, drop, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
        assert reply.payload["error_code"] == "FORBIDDEN"
        for action in ("kill_node", "run_node", "add_route"):
            reply = await sender.request("SY.admin", {"action": action, "target": "local", "params": {}},
                                         msg_type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND)
            assert reply.payload["error_code"] == "FORBIDDEN", reply.payload
    finally:
        await sender.close()
    peers: list[RawPeer] = []
    try:
        _, reply = hello(up.socket_path, "SY.evil", peers=peers)
        assert refusal(reply).startswith("NAME_CLAIMED")
    finally:
        for p in peers:
            p.close()
    assert up.echo_answers()
    assert up.status()["routes"] == []


def test_a_declared_node_s_uuid_cannot_be_taken_over(up: UpHive) -> None:
    before = {n["name"]: n for n in up.status()["nodes"]}["WF.echo@local"]
    peers: list[RawPeer] = []
    try:
        for name in ("WF.echo", "WF.other"):
            _, reply = hello(up.socket_path, name, node=before["uuid"], peers=peers)
            assert refusal(reply).split(":")[0] in ("NAME_CLAIMED", "UUID_IN_USE"), reply
    finally:
        for p in peers:
            p.close()
    after = {n["name"]: n for n in up.status()["nodes"]}["WF.echo@local"]
    assert after["uuid"] == before["uuid"] and after["peer"] == before["peer"]
    assert up.echo_answers()
