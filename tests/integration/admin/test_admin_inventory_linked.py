"""The inventory and node lifecycle across linked hives: two `fluxbee up` processes on loopback, A the
mother and B its worker (``motherHive: A``), linked by A's ``POST /hives``.  A asks B for B's own rows
over the links; B refuses A's-side questions it may not take (a worker does not command its mother);
a hive that cannot be asked is listed with its error, never with invented rows."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, free_port, linked_hive_file, stop_process, wait_until

START_TIMEOUT = 90.0
"""Two hives on a shared 2-core machine: generous on purpose."""


@dataclass
class Hive:
    hive_id: str
    root: Path
    ca: Path
    mother: str | None = None
    admin_port: int = field(default_factory=free_port)
    wan_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def wan(self) -> str:
        return f"127.0.0.1:{self.wan_port}"

    def start(self) -> None:
        file = self.root / "hive.yaml"
        file.write_text(linked_hive_file(self.hive_id, self.mother))
        log = self.root / "up.log"
        argv = fluxbee_argv("up", "-f", str(file), "--hive-id", self.hive_id, "--run-dir", str(self.root / "run"),
                            "--admin-listen", f"127.0.0.1:{self.admin_port}", "--wan-listen", self.wan,
                            "--wan-ca", str(self.ca))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUXBEE_UP_IDENTITY": "0", "FLUXBEE_UP_POLICY": "0"}
        offset = log.stat().st_size if log.exists() else 0  # a restarted hive appends to its log
        with open(log, "a") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        proc = self.proc
        wait_until(lambda: "is ready" in log.read_text()[offset:] or proc.poll() is not None, START_TIMEOUT,
                   f"hive {self.hive_id} to be ready")
        assert proc.poll() is None, log.read_text()[offset:]
        wait_until(self._admin_up, 30, f"hive {self.hive_id}'s admin API")

    def _admin_up(self) -> bool:
        try:
            return self.call("GET", "/hive/status")[0] == 200
        except urllib.error.URLError:
            return False

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

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        code, doc = self.call(method, path, body)
        assert code == 200 and doc["status"] == "ok", (method, path, code, doc)
        return dict(doc["payload"])

    def names(self) -> set[str]:
        return {n["name"] for n in self.ok("GET", f"/hives/{self.hive_id}/nodes")["nodes"]}


@dataclass
class Pair:
    a: Hive
    b: Hive


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="fbi", dir="/tmp"))
    ca = root / "ca"
    subprocess.run(fluxbee_argv("wan", "ca", str(ca)), check=True, capture_output=True, text=True)
    for h in "AB":
        (root / h).mkdir()
    a, b = Hive("A", root / "A", ca), Hive("B", root / "B", ca, mother="A")
    started: list[Hive] = []
    try:
        for h in (a, b):
            h.start()
            started.append(h)
        a.ok("POST", "/hives", {"hive_id": "B", "address": b.wan})

        def linked() -> bool:
            row = next((r for r in a.ok("GET", "/hives")["hives"] if r["hive_id"] == "B"), None)
            return bool(row and row.get("wan_connected"))

        wait_until(linked, START_TIMEOUT, "A linked to B")
        yield Pair(a, b)
    finally:
        for h in reversed(started):
            with contextlib.suppress(AssertionError):
                h.stop()
        shutil.rmtree(root, ignore_errors=True)


def _entry(inv: dict[str, Any], hive: str) -> dict[str, Any]:
    return next(h for h in inv["hives"] if h["hive_id"] == hive)


def test_the_mothers_inventory_holds_the_workers_own_rows(pair: Pair) -> None:
    a, b = pair.a, pair.b
    wait_until(lambda: "WF.echo@B" in b.names(), START_TIMEOUT, "WF.echo on B")

    def both_listed() -> bool:
        inv = a.ok("GET", "/inventory")
        entry = _entry(inv, "B")
        return (entry["status"] != "error" and {n["name"] for n in entry["nodes"]} == b.names()
                and {n["name"] for n in _entry(inv, "A")["nodes"]} == a.names())

    wait_until(both_listed, 30, "A's inventory to list B's nodes as B lists them")
    inv = a.ok("GET", "/inventory")
    assert inv["total_hives"] == 2 and inv["unreachable_hives"] == 0
    remote = _entry(inv, "B")
    assert remote["is_local"] is False and remote["inventory_source"] == "admin_command"
    assert remote["remote_inventory_source"] == "router" and remote["status"] == "alive"
    assert remote["link_status"] == "connected"
    # the original's clients read every node at the top level, each row naming its hive
    assert {(n["hive"], n["name"]) for n in inv["nodes"]} == (
        {("A", n["name"]) for n in _entry(inv, "A")["nodes"]} | {("B", n["name"]) for n in remote["nodes"]})
    assert {"WF.echo@B", "SY.admin@B"} <= {n["name"] for n in remote["nodes"]}
    assert all(n["hive"] == "B" for n in remote["nodes"])
    assert inv["total_nodes"] == remote["node_count"] + _entry(inv, "A")["node_count"]

    for path in ("/inventory/B", "/hives/B/status", "/inventory?hive=B"):
        one = a.ok("GET", path)
        assert one["scope"] == "hive" and one["hive"] == "B" and "WF.echo@B" in {n["name"] for n in one["nodes"]}
        assert one["status"] == "ok" and one["hive_status"] == "alive"
    only_wf = a.ok("GET", "/inventory?type=WF")
    assert {n["kind"] for h in only_wf["hives"] for n in h["nodes"]} == {"WF"}
    assert "WF.echo@B" in {n["name"] for n in _entry(only_wf, "B")["nodes"]}
    summary = a.ok("GET", "/inventory/summary")
    assert summary["total_hives"] == 2 and _entry(summary, "B")["by_kind"]["WF"] >= 1


def test_the_mother_restarts_and_starts_a_workers_node_over_the_links(pair: Pair) -> None:
    a, b = pair.a, pair.b
    wait_until(lambda: "WF.echo@B" in b.names(), START_TIMEOUT, "WF.echo on B")
    before = b.ok("GET", "/hives/B/nodes/WF.echo/status")["node_status"]["process"]["pid"]
    done = a.ok("POST", "/hives/B/nodes/WF.echo/restart")
    assert done["state"] == "restarted" and done["hive"] == "B" and done["visible_in_router"] is True
    assert done["pid"] not in (None, before)
    assert b.ok("GET", "/hives/B/nodes/WF.echo/status")["node_status"]["process"]["pid"] == done["pid"]
    assert a.ok("POST", "/hives/B/nodes/WF.echo/start")["state"] == "already_running"
    code, doc = a.call("DELETE", "/hives/B/nodes/WF.echo/instance")
    assert (code, doc["error_code"]) == (409, "NODE_INSTANCE_RUNNING")


def test_a_node_name_at_the_worker_sends_the_mothers_node_requests_to_the_worker(pair: Pair) -> None:
    """The original's precedence (its cross-hive inventory script): `POST /hives/A/nodes` with
    `node_name: X@B` spawns on B, and a kill addressed to A by that name stops it on B."""
    a, b = pair.a, pair.b
    node = "WF.cross.prec@B"
    spawned = a.ok("POST", "/hives/A/nodes", {"node_name": node, "runtime": "fluxbee.echo"})
    assert (spawned["node_name"], spawned["target"], spawned["hive"]) == (node, "B", "B")
    assert spawned["identity"]["requested_hive"] == "B"
    wait_until(lambda: node in {n["name"] for n in a.ok("GET", "/inventory/B")["nodes"]}, START_TIMEOUT,
               f"{node} in B's inventory as A shows it")
    assert node not in {n["name"] for n in a.ok("GET", "/inventory/A")["nodes"]}
    assert a.ok("GET", f"/hives/A/nodes/{node}/status")["node_status"]["hive_id"] == "B"
    killed = a.ok("DELETE", f"/hives/A/nodes/{node}", {"force": True})
    assert (killed["target"], killed["signal"]) == ("B", "SIGKILL")
    # killed without purge: it leaves the nodes that run and is listed as a stopped instance
    one = a.ok("GET", "/inventory/B")
    assert node not in {n["name"] for n in one["nodes"]} and node in {n["name"] for n in one["stopped_nodes"]}
    assert a.ok("DELETE", f"/hives/A/nodes/{node}/instance")["status"] == "ok"
    # on the worker the same rule sends a name at the mother to the mother, which refuses its worker
    code, doc = b.call("GET", "/hives/B/nodes/WF.echo@A/status")
    assert (code, doc["error_code"]) == (403, "FORBIDDEN"), doc


def test_a_worker_may_not_ask_its_mother_and_says_so_in_its_inventory(pair: Pair) -> None:
    inv = pair.b.ok("GET", "/inventory")
    mother = _entry(inv, "A")
    assert mother["status"] == "error" and mother["error_code"] == "FORBIDDEN"
    assert mother["node_count"] is None and mother["nodes"] == []
    assert inv["unreachable_hives"] == 1 and inv["total_nodes"] == _entry(inv, "B")["node_count"]
    code, doc = pair.b.call("GET", "/inventory/A")
    assert (code, doc["error_code"]) == (403, "FORBIDDEN")


def test_a_hive_out_of_reach_is_stale_without_rows_and_alive_again_when_it_is_back(pair: Pair) -> None:
    a, b = pair.a, pair.b
    b.stop()  # last test of the module: B is gone, A still has it registered
    inv = a.ok("GET", "/inventory")
    gone = _entry(inv, "B")
    assert gone["status"] == "stale" and gone["node_count"] is None and gone["nodes"] == []
    assert gone["error_code"] in ("HIVE_NOT_CONNECTED", "WAN_TIMEOUT", "REMOTE_ADMIN_UNAVAILABLE"), gone
    assert inv["total_nodes"] == _entry(inv, "A")["node_count"] and inv["unreachable_hives"] == 1
    assert {n["hive"] for n in inv["nodes"]} == {"A"}
    # one hive out of reach is still an answer (200): the original's stale-hive script polls hive_status
    one = a.ok("GET", "/inventory/B")
    assert (one["hive_status"], one["node_count"], one["nodes"]) == ("stale", None, [])
    assert one["hives"][0]["error_code"] == gone["error_code"]
    b.start()
    wait_until(lambda: a.ok("GET", "/inventory/B")["hive_status"] == "alive", START_TIMEOUT,
               "B back in A's inventory as alive")
