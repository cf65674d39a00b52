"""What rides on the links, end to end: three hives on loopback, each a `fluxbee up` process.

A is the mother (identity primary with its PostgreSQL), B and C are workers whose hive files name
``motherHive: A``.  A links B with ``POST /hives`` (no uplink flag on B); C dials B
(``--uplink``), so A reaches C only through B (transit).  Everything is driven as a user drives it:
the admin HTTP API of each hive, and SDK nodes on a hive's router where a node is what a user would
run (an IO node provisioning an identity, a node asking SY.identity for its metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, free_port, linked_hive_file, read_identity_region, stop_process, wait_until

from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.identity import client as idc

TENANT = "tnt:7e1f0000-0000-4000-8000-000000000001"
START_TIMEOUT = 90.0
"""Three hives, one embedded PostgreSQL, on a shared 2-core machine: generous on purpose."""
LINK_TIMEOUT = 60.0


@dataclass
class Hive:
    hive_id: str
    root: Path
    ca: Path
    mother: str | None = None
    uplinks: tuple[str, ...] = ()
    admin: bool = True
    """False: ``--admin-listen off`` (no SY.admin at all)."""
    identity: bool = True
    policy: bool = True
    """False: ``FLUXBEE_UP_POLICY=0`` (no SY.policy: a test may write the hive's policy region itself)."""
    admin_port: int = field(default_factory=free_port)
    wan_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def wan(self) -> str:
        return f"127.0.0.1:{self.wan_port}"

    @property
    def log(self) -> Path:
        return self.root / "up.log"

    def start(self) -> None:
        file = self.root / "hive.yaml"
        file.write_text(linked_hive_file(self.hive_id, self.mother))
        argv = fluxbee_argv("up", "-f", str(file), "--hive-id", self.hive_id, "--run-dir", str(self.run_dir),
                            "--admin-listen", f"127.0.0.1:{self.admin_port}" if self.admin else "off",
                            "--wan-listen", self.wan, "--wan-ca", str(self.ca))
        for up in self.uplinks:
            argv += ["--uplink", up]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "a") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if not self.identity:
                env["FLUXBEE_UP_IDENTITY"] = "0"
            if not self.policy:
                env["FLUXBEE_UP_POLICY"] = "0"
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        proc = self.proc
        wait_until(lambda: "is ready" in self.log.read_text()[offset:] or proc.poll() is not None, START_TIMEOUT,
                   f"hive {self.hive_id} to be ready")
        assert proc.poll() is None, self.log.read_text()[offset:]
        if self.admin:
            wait_until(lambda: self.call("GET", "/hive/status")[0] == 200, 30, f"hive {self.hive_id}'s admin API")

    def stop(self) -> None:
        stop_process(self.proc, f"fluxbee up of hive {self.hive_id}", sig=signal.SIGINT, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=90) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except (urllib.error.URLError, ConnectionError):
            return 0, None

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        code, doc = self.call(method, path, body)
        assert code in (200, 202) and doc["status"] in ("ok", "sync_pending"), (method, path, code, doc)
        return dict(doc["payload"])

    def hive_row(self, hive: str) -> dict[str, Any] | None:
        code, doc = self.call("GET", "/hives")
        if code != 200:
            return None
        return next((r for r in doc["payload"]["hives"] if r["hive_id"] == hive), None)

    def connected(self, hive: str) -> bool:
        row = self.hive_row(hive)
        return bool(row and row.get("wan_connected"))


@dataclass
class Hives:
    a: Hive
    b: Hive
    c: Hive


def _node_names(hive: Hive, target: str) -> set[str]:
    code, doc = hive.call("GET", f"/hives/{target}/nodes")
    return {n["node_name"] for n in doc["payload"]["nodes"]} if code == 200 else set()


@pytest.fixture(scope="module")
def hives() -> Iterator[Hives]:
    root = Path(tempfile.mkdtemp(prefix="fbl", dir="/tmp"))
    root.chmod(0o755)  # embedded PostgreSQL may drop to 'postgres' when run as root: it must enter the dirs
    ca = root / "ca"
    subprocess.run(fluxbee_argv("wan", "ca", str(ca)), check=True, capture_output=True, text=True)
    dirs = {h: root / h for h in "ABC"}
    for d in dirs.values():
        d.mkdir()
        d.chmod(0o755)
    a = Hive("A", dirs["A"], ca, policy=False)  # the dst:null test writes A's policy region itself
    b = Hive("B", dirs["B"], ca, mother="A")
    c = Hive("C", dirs["C"], ca, mother="A", uplinks=(b.wan,))
    started: list[Hive] = []
    try:
        for h in (a, b, c):
            h.start()
            started.append(h)
        # SY.identity answers DB_NOT_READY until the embedded PostgreSQL is up
        wait_until(lambda: a.call("GET", "/hives/A/identity/ilks")[0] == 200, START_TIMEOUT, "SY.identity on A")
        payload = a.ok("POST", "/hives", {"hive_id": "B", "address": b.wan})
        assert payload["bootstrap_mode"] == "router_link" and payload["address"] == b.wan
        wait_until(lambda: a.connected("B") and a.connected("C"), LINK_TIMEOUT, "A linked to B, and C through B")
        yield Hives(a, b, c)
    finally:
        for h in reversed(started):
            with contextlib.suppress(AssertionError):
                h.stop()
        if os.environ.get("FLUXBEE_KEEP_TEST_DIRS"):  # for a look at <root>/<hive>/up.log after a failure
            print(f"hive dirs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def test_the_mother_administers_its_workers_over_the_links(hives: Hives) -> None:
    a, b = hives.a, hives.b
    listed = a.ok("GET", "/hives/B/nodes")
    assert listed["hive"] == "B" and "WF.echo@B" in {n["node_name"] for n in listed["nodes"]}
    assert "WF.echo@C" in _node_names(a, "C")  # C is reached through B

    # a spawn on B from A: B's SY.admin spawns it, its ILK is registered with the primary on A
    spawned = a.ok("POST", "/hives/B/nodes", {"node_name": "WF.ride.spawned", "runtime": "fluxbee.echo",
                                              "tenant_id": TENANT})
    assert spawned["hive"] == "B" and spawned["node_name"] == "WF.ride.spawned@B"
    register = spawned["identity"]["register"]
    assert register["status"] == "ok", register
    wait_until(lambda: a.ok("GET", "/hives/B/nodes/WF.ride.spawned/status")["node_status"]["lifecycle_state"]
               == "RUNNING", 30, "the spawned node running on B")
    assert "WF.ride.spawned@B" in _node_names(b, "B")  # B's own API shows what A did there
    ilks = a.ok("GET", "/hives/B/identity/ilks")  # B's replica sends the full records' read to the primary
    assert register["ilk_id"] in {i["ilk_id"] for i in ilks["ilks"]}
    config = a.ok("GET", "/hives/B/nodes/WF.ride.spawned/config")
    assert config["config"]["_system"]["hive_id"] == "B"

    killed = a.ok("DELETE", "/hives/B/nodes/WF.ride.spawned", {"purge_instance": True})
    assert killed["hive"] == "B" and killed["purge_instance"] is True
    wait_until(lambda: "WF.ride.spawned@B" not in _node_names(b, "B"), 30, "the killed node gone from B")

    # the remote hive's errors come back as its own; bad bodies are refused here, before any hop
    code, doc = a.call("GET", "/hives/B/nodes/WF.nope/status")
    assert (code, doc["error_code"], doc["action"]) == (404, "NODE_NOT_FOUND", "get_node_status"), doc
    code, doc = a.call("POST", "/hives/B/nodes", {"node_name": 5, "runtime": "fluxbee.echo"})
    assert (code, doc["error_code"]) == (400, "INVALID_REQUEST"), doc
    code, doc = a.call("GET", "/hives/Z/nodes")
    assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc

    # only the mother administers a worker, and nobody administers the mother from elsewhere
    code, doc = b.call("GET", "/hives/A/nodes")
    assert (code, doc["error_code"]) == (403, "FORBIDDEN") and "no mother" in doc["error_detail"], doc
    code, doc = hives.c.call("GET", "/hives/B/nodes")
    assert (code, doc["error_code"]) == (403, "FORBIDDEN") and "only its mother" in doc["error_detail"], doc

    versions = a.ok("GET", "/versions")["hives"]
    assert {r["hive_id"] for r in versions} == {"A", "B", "C"}
    assert all(r.get("status") != "error" for r in versions), versions


def test_hives_show_their_links_and_are_linked_and_unlinked_by_address(hives: Hives) -> None:
    a, c = hives.a, hives.c
    row = a.hive_row("B")
    assert row is not None and row["link"]["state"] == "up" and row["link"]["direction"] == "out"
    assert row["link"]["address"] == hives.b.wan and row["link"]["last_lsa_seq"] is not None
    assert row["link"]["rtt_ms"] is None or row["link"]["rtt_ms"] >= 0
    transit = a.hive_row("C")
    assert transit is not None and transit["via"] == "transit" and transit["wan_connected"]
    shown = subprocess.run(fluxbee_argv("ctl", "--url", f"http://127.0.0.1:{a.admin_port}", "hives"),
                           capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert shown[0].split()[:6] == ["HIVE_ID", "ROLE", "STATUS", "ADDRESS", "VIA", "LINK_STATE"], shown
    rows = {line.split()[0]: line.split() for line in shown[1:]}
    assert set(rows) == {"A", "B", "C"} and "up" in rows["B"] and "transit" in rows["C"], shown

    for body, code, error in (({"hive_id": "C"}, 400, "INVALID_REQUEST"),
                              ({"hive_id": "C", "address": "127.0.0.1:0"}, 400, "INVALID_ADDRESS"),
                              ({"hive_id": "bad id", "address": c.wan}, 400, "INVALID_HIVE_ID"),
                              ({"hive_id": "B", "address": hives.b.wan}, 409, "HIVE_EXISTS"),
                              ({"hive_id": "C", "address": c.wan, "extra": 1}, 400, "INVALID_REQUEST")):
        got, doc = a.call("POST", "/hives", body)
        assert (got, doc["error_code"]) == (code, error), (body, doc)

    # a gateway that is another hive than the one named: unlinked again, refused, not registered
    code, doc = a.call("POST", "/hives", {"hive_id": "X", "address": c.wan})
    assert (code, doc["error_code"]) == (409, "WAN_NOT_AUTHORIZED") and "'C'" in doc["error_detail"], doc
    assert a.hive_row("X") is None

    linked = a.ok("POST", "/hives", {"hive_id": "C", "address": c.wan})
    assert linked["wan_connected"] and linked["link"]["hive_id"] == "C", linked
    wait_until(lambda: (a.hive_row("C") or {}).get("via") is None, LINK_TIMEOUT, "A's direct link to C")
    assert a.hive_row("C")["link"]["state"] == "up"  # type: ignore[index]

    removed = a.ok("DELETE", "/hives/C")
    assert removed["link"] == "unlinked"
    wait_until(lambda: (a.hive_row("C") or {}).get("via") == "transit", LINK_TIMEOUT,
               "C reached through B again once A's own link is gone")
    code, doc = a.call("DELETE", "/hives/C")  # no longer registered nor directly linked
    assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc


async def _ask_identity_metrics(hive: Hive, target: str) -> dict[str, Any]:
    sender, _ = await connect(NodeConfig(name="WF.ride.probe", run_dir=hive.run_dir, connect_timeout=10.0))
    try:
        return await idc.identity_metrics(sender, target=target, fallback=None)
    finally:
        await sender.close()


def _routes(hive: Hive) -> list[str]:
    code, doc = hive.call("GET", "/routes")
    return [r["prefix"] for r in doc["payload"]["routes"]] if code == 200 else []


def test_global_routes_and_vpns_reach_every_hive_in_version_order(hives: Hives) -> None:
    a, b, c = hives.a, hives.b, hives.c
    put = a.ok("PUT", "/config/routes", {"routes": [{"prefix": "WF.ride.dropped", "action": "DROP"}],
                                         "version": 100})
    assert put["global_version"] == 100, put
    results = {r["hive"]: r["status"] for r in put["hives"]}
    assert set(results) == {"B", "C"} and set(results.values()) <= {"ok", "pending"}, put
    assert put["pending"] == [h for h, status in sorted(results.items()) if status == "pending"], put
    assert _routes(a) == ["WF.ride.dropped"]
    for h in (b, c):
        if results[h.hive_id] == "ok":  # it answered: applied before it did
            assert _routes(h) == ["WF.ride.dropped"], h.hive_id
        else:  # slower than the collection window on a loaded machine: it gets there by itself
            wait_until(lambda h=h: _routes(h) == ["WF.ride.dropped"], LINK_TIMEOUT, f"the routes on {h.hive_id}")
    code, doc = a.call("PUT", "/config/routes", {"routes": [], "version": 90})
    assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH"), doc
    put = a.ok("PUT", "/config/vpns", {"vpns": [{"pattern": "WF.ride", "vpn_id": 7}]})
    assert put["global_version"] == 101
    for h in (b, c):
        wait_until(lambda h=h: [(v["pattern"], v["vpn_id"]) for v in h.ok("GET", "/vpns")["vpns"]]
                   == [("WF.ride", 7)], LINK_TIMEOUT, f"the VPN rule on {h.hive_id}")
        assert _routes(h) == ["WF.ride.dropped"], "a VPN change leaves the global routes as they were"


def _replica(hive: Hive) -> dict[str, Any] | None:
    """The replica's sync state once it is synced with the primary on A, else None."""
    m = asyncio.run(_ask_identity_metrics(hive, f"SY.identity@{hive.hive_id}"))
    assert m["role"] == "replica" and m["primary"] == "SY.identity@A", m
    return m if m["sync"]["synced"] else None


def _primary_version(a: Hive) -> int:
    return int(asyncio.run(_ask_identity_metrics(a, "SY.identity@A"))["published_version"])


def _provision_on_mother(a: Hive) -> str:
    """An IO node on A provisions an identity (a write on the primary); its ILK."""
    address = f"+54{uuid.uuid4().int % 10**9}"

    async def provision() -> dict[str, Any]:
        io, _ = await connect(NodeConfig(name="IO.ride.whatsapp", run_dir=a.run_dir, connect_timeout=10.0))
        try:
            return await idc.provision_ilk(io, "whatsapp", address)
        finally:
            await io.close()

    return str(asyncio.run(provision())["ilk_id"])


def _wait_caught_up(hive: Hive, version: int, ilk: str) -> None:
    wait_until(lambda: (m := _replica(hive)) is not None and m["sync"]["version"] >= version, LINK_TIMEOUT,
               f"{hive.hive_id}'s replica at the primary's version {version}", step=0.5)
    info = read_identity_region(hive.hive_id, hive.run_dir, lambda r: r.resolve(ilk))  # written while it was away
    assert info is not None and info.registration_status == "temporary", hive.hive_id


def test_a_worker_cut_off_catches_up_on_identity_and_routes_when_it_comes_back(hives: Hives) -> None:
    a, b, c = hives.a, hives.b, hives.c
    before = wait_until(lambda: _replica(b), LINK_TIMEOUT, "B's replica synced with the primary on A", step=0.5)
    wait_until(lambda: _replica(c), LINK_TIMEOUT, "C's replica synced (through B)", step=0.5)

    b.stop()
    wait_until(lambda: not a.connected("B"), LINK_TIMEOUT, "A to see B gone")
    ilk = _provision_on_mother(a)  # the primary takes writes while B is away
    code, doc = a.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.ride.later", "action": "DROP"}]})
    assert (code, doc["status"]) == (202, "sync_pending"), doc
    assert "B" in doc["payload"]["pending"], doc
    version = _primary_version(a)
    assert version > before["sync"]["version"]

    b.start()
    wait_until(lambda: a.connected("B") and a.connected("C"), LINK_TIMEOUT, "B and C back")
    wait_until(lambda: _routes(b) == ["WF.ride.later"] and _routes(c) == ["WF.ride.later"], LINK_TIMEOUT,
               "the routes set while B was away on B and C")
    _wait_caught_up(b, version, ilk)
    _wait_caught_up(c, version, ilk)

    async def write_to_replica() -> dict[str, Any]:
        io, _ = await connect(NodeConfig(name="IO.ride.sms", run_dir=b.run_dir, connect_timeout=10.0))
        try:
            reply = await io.request("SY.identity@B", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "sms",
                                                       "address": "+1"}, msg_type="system", msg="ILK_PROVISION",
                                     timeout=10)
            return dict(reply.payload)
        finally:
            await io.close()

    refused = asyncio.run(write_to_replica())
    assert refused["error_code"] == "NOT_PRIMARY" and refused["primary"] == "SY.identity@A", refused


def test_an_unlinked_worker_catches_up_when_it_is_linked_again(hives: Hives) -> None:
    a, b, c = hives.a, hives.b, hives.c
    removed = a.ok("DELETE", "/hives/B")
    assert removed["link"] == "unlinked", removed
    wait_until(lambda: a.hive_row("B") is None and a.hive_row("C") is None, LINK_TIMEOUT,
               "B, and C behind it, gone from A's hives")
    code, doc = a.call("GET", "/hives/B/nodes")
    assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc
    code, doc = b.call("GET", "/hives/B/nodes")  # B itself goes on as it was
    assert code == 200, doc

    ilk = _provision_on_mother(a)
    put = a.ok("PUT", "/config/routes", {"routes": [{"prefix": "WF.ride.relinked", "action": "DROP"}]})
    assert put["hives"] == [] and put["pending"] == [], "an unlinked hive is no longer one of A's"
    version = _primary_version(a)
    assert _routes(b) == ["WF.ride.later"], "B cannot have heard of it"

    a.ok("POST", "/hives", {"hive_id": "B", "address": b.wan})
    wait_until(lambda: a.connected("B") and a.connected("C"), LINK_TIMEOUT, "B and C linked again")
    wait_until(lambda: _routes(b) == ["WF.ride.relinked"] and _routes(c) == ["WF.ride.relinked"], LINK_TIMEOUT,
               "the routes set while B was unlinked on B and C")
    _wait_caught_up(b, version, ilk)
    _wait_caught_up(c, version, ilk)


def test_a_hive_without_an_admin_or_with_one_that_does_not_answer_gets_its_own_error(hives: Hives) -> None:
    a = hives.a
    d = Hive("D", a.root.parent / "D", a.ca, mother="A", uplinks=(a.wan,), admin=False, identity=False)
    d.root.mkdir()
    d.start()
    try:
        wait_until(lambda: a.connected("D"), LINK_TIMEOUT, "D linked to A")
        code, doc = a.call("GET", "/hives/D/nodes")
        assert (code, doc["error_code"]) == (503, "REMOTE_ADMIN_UNAVAILABLE"), doc
    finally:
        d.stop()
    wait_until(lambda: a.hive_row("D") is None, LINK_TIMEOUT, "D gone from A's hives")
    code, doc = a.call("GET", "/hives/D/nodes")
    assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc

    d.admin = True
    d.start()
    try:
        wait_until(lambda: a.connected("D") and a.call("GET", "/hives/D/nodes")[0] == 200, LINK_TIMEOUT,
                   "D's admin answering A")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGSTOP)  # SY.admin runs inside `fluxbee up`: frozen; D's router is not
        try:
            code, doc = a.call("GET", "/hives/D/nodes")
            assert (code, doc["error_code"]) == (504, "WAN_TIMEOUT"), doc
            assert "SY.admin@D" in doc["error_detail"]
        finally:
            d.proc.send_signal(signal.SIGCONT)
    finally:
        d.stop()


def test_a_dst_null_message_is_decided_once_at_the_first_router_and_routed_by_name_after(hives: Hives) -> None:
    """Hive A's policy sends dst:null to WF.echo@C (through B). B and C run no policy (A runs no
    SY.policy for them to follow; the test writes A's region as SY.policy would): had they decided
    again, they would answer OPA_ERROR; the echo's answer proves A stamped the destination."""
    from fluxbee.dataplane import wire
    from fluxbee.dataplane.policy import compile_policy
    from fluxbee.dataplane.shm.policy import PolicyRegion, artefact_digest

    a = hives.a
    region = PolicyRegion.create("A", owner_uuid=str(uuid.uuid4()), run_dir=a.run_dir)
    try:
        artefact = compile_policy('package router\n\ntarget := "WF.echo@C"\n')
        blob = artefact.to_bytes()
        region.publish(blob, 1, artefact_digest(blob), engine=artefact.engine, entrypoints=artefact.entrypoints)

        async def run() -> None:
            sender, _ = await connect(NodeConfig(name="WF.policy.client", run_dir=a.run_dir, connect_timeout=10))
            try:
                deadline = asyncio.get_running_loop().time() + 30
                while (await sender.router_status())["policy"]["version"] != 1:  # loaded by A's poll
                    assert asyncio.get_running_loop().time() < deadline, "A's router did not load the policy"
                    await asyncio.sleep(0.2)
                answer = await sender.request(None, {"hello": "C"}, timeout=30)
                assert answer.payload == {"hello": "C"} and answer.routing.src_l2_name == "WF.echo@C"
                router = next((a.run_dir / "routers").glob("*.sock")).stem
                page = await sender.request(str(uuid.UUID(router)), {}, msg_type=wire.TYPE_SYSTEM,
                                            msg=wire.OPA_DECISIONS_GET, timeout=10)
                decisions = page.payload["decisions"]
                assert [(d["result"], d["resolved"]) for d in decisions] == [("routed", "WF.echo@C")], decisions
            finally:
                await sender.close()

        asyncio.run(run())
    finally:
        region.close()
