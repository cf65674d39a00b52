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
from hive_harness import fluxbee_argv, free_port, stop_process, wait_until

START_TIMEOUT = 90.0
"""Two hives on a shared 2-core machine: generous on purpose."""


def hive_file(hive: str, mother: str | None) -> str:
    spec = {"role": "worker", "motherHive": mother} if mother else {"role": "motherbee"}
    docs = [{"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": hive}, "spec": spec},
            {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "echo"},
             "spec": {"hive": hive, "nodeName": "WF.echo", "runtime": "fluxbee.echo", "replicas": 1}}]
    return "\n---\n".join(json.dumps(d) for d in docs)


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
        file.write_text(hive_file(self.hive_id, self.mother))
        log = self.root / "up.log"
        argv = fluxbee_argv("up", "-f", str(file), "--hive-id", self.hive_id, "--run-dir", str(self.root / "run"),
                            "--admin-listen", f"127.0.0.1:{self.admin_port}", "--wan-listen", self.wan,
                            "--wan-ca", str(self.ca))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUXBEE_UP_IDENTITY": "0", "FLUXBEE_UP_POLICY": "0"}
        with open(log, "a") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        proc = self.proc
        wait_until(lambda: "is ready" in log.read_text() or proc.poll() is not None, START_TIMEOUT,
                   f"hive {self.hive_id} to be ready")
        assert proc.poll() is None, log.read_text()
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
    assert remote["remote_inventory_source"] == "router" and remote["status"] == "connected"
    assert {"WF.echo@B", "SY.admin@B"} <= {n["name"] for n in remote["nodes"]}
    assert all(n["hive"] == "B" for n in remote["nodes"])
    assert inv["total_nodes"] == remote["node_count"] + _entry(inv, "A")["node_count"]

    for path in ("/inventory/B", "/hives/B/status", "/inventory?hive=B"):
        one = a.ok("GET", path)
        assert one["scope"] == "hive" and one["hive"] == "B" and "WF.echo@B" in {n["name"] for n in one["nodes"]}
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


def test_a_worker_may_not_ask_its_mother_and_says_so_in_its_inventory(pair: Pair) -> None:
    inv = pair.b.ok("GET", "/inventory")
    mother = _entry(inv, "A")
    assert mother["status"] == "error" and mother["error_code"] == "FORBIDDEN"
    assert mother["node_count"] is None and mother["nodes"] == []
    assert inv["unreachable_hives"] == 1 and inv["total_nodes"] == _entry(inv, "B")["node_count"]
    code, doc = pair.b.call("GET", "/inventory/A")
    assert (code, doc["error_code"]) == (403, "FORBIDDEN")


def test_a_hive_that_cannot_be_asked_is_listed_with_its_error(pair: Pair) -> None:
    a, b = pair.a, pair.b
    b.stop()  # last test of the module: B is gone, A still has it registered
    inv = a.ok("GET", "/inventory")
    gone = _entry(inv, "B")
    assert gone["status"] == "error" and gone["node_count"] is None and gone["nodes"] == []
    assert gone["error_code"] in ("HIVE_NOT_CONNECTED", "WAN_TIMEOUT", "REMOTE_ADMIN_UNAVAILABLE"), gone
    assert inv["total_nodes"] == _entry(inv, "A")["node_count"]
    code, doc = a.call("GET", "/inventory/B")
    assert code in (503, 504) and doc["error_code"] in (
        "HIVE_NOT_CONNECTED", "WAN_TIMEOUT", "REMOTE_ADMIN_UNAVAILABLE"), doc
