"""What the original's own end-to-end scripts rely on, against a real `fluxbee up` hive over HTTP.

The original's scripts (inventory spawn/kill, spawn/kill v2, node status) prepare a runtime by hand:
copy ``bin/start.sh`` into the dist store, add the version to ``manifest.json``, then
``POST /hives/{h}/sync-hint`` (dist) and ``POST /hives/{h}/update`` with the manifest's version and
sha256 until both answer ``payload.status: ok``; they spawn, find the node in
``GET /inventory/{h}`` → ``payload.nodes[].node_name``, kill it with ``{"force": true}`` (``payload.signal``
``SIGKILL``) and wait for it to leave ``payload.nodes``.  These tests do the same steps on this hive's
own store (``<run dir>/dist/runtimes``), with our echo node as the long-lived process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AdminHive, running_hive
from hive_harness import wait_until

RUNTIME = "wf.inventory.hold.diag"
NODE = "WF.inventory.spawnkill.t1"
WAIT = 45.0
"""Generous: a shared 2-core machine starts Python nodes slowly."""


@pytest.fixture(scope="module")
def hive() -> Iterator[AdminHive]:
    with running_hive(identity=False) as h:
        yield h


def store(hive: AdminHive) -> Path:
    return hive.run_dir / "dist" / "runtimes"


def copy_in(hive: AdminHive, runtime: str, version: str, *, executable: bool = True) -> tuple[int, str]:
    """A package copied in as the scripts do (no package.json), made current; the manifest's version and hash."""
    bin_dir = store(hive) / runtime / version / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    start = bin_dir / "start.sh"
    start.write_text(f"#!/bin/sh\nexec {sys.executable} -m fluxbee node echo\n")
    start.chmod(0o755 if executable else 0o644)
    path = store(hive) / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = max(int(time.time() * 1000), int(doc.get("version") or 0) + 1)
    entry = doc["runtimes"].setdefault(runtime, {})
    entry["available"] = sorted({*entry.get("available", []), version})
    entry["current"] = version
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return int(doc["version"]), hashlib.sha256(path.read_bytes()).hexdigest()


def payload(hive: AdminHive, method: str, path: str, body: Any = None, *, code: int = 200) -> dict[str, Any]:
    got, doc = hive.call(method, path, body)
    assert got == code, (method, path, got, doc)
    return dict(doc["payload"]) if isinstance(doc.get("payload"), dict) else doc


def inventory_names(hive: AdminHive, key: str = "nodes") -> set[str]:
    doc = payload(hive, "GET", "/inventory/local")
    assert doc["status"] == "ok"
    return {n["node_name"] for n in doc[key]}


def test_a_runtime_copied_into_the_store_passes_sync_hint_and_update_then_spawns_and_leaves_the_inventory(
        hive: AdminHive) -> None:
    version, digest = copy_in(hive, RUNTIME, "diag-1")
    hint = payload(hive, "POST", "/hives/local/sync-hint",
                   {"channel": "dist", "folder_id": "fluxbee-dist", "wait_for_idle": True, "timeout_ms": 30000})
    assert (hint["status"], hint["channel"], hint["state"]) == ("ok", "dist", "idle")
    body = {"category": "runtime", "manifest_version": version, "manifest_hash": digest}
    done = payload(hive, "POST", "/hives/local/update", body)
    assert (done["status"], done["local_manifest_version"], done["local_manifest_hash"]) == ("ok", version, digest)
    assert f"{RUNTIME}@diag-1" in done["unchanged"]
    versions = payload(hive, "GET", "/hives/local/versions")
    assert versions["hive"]["runtimes"]["runtimes"][RUNTIME]["current"] == "diag-1"
    assert {"runtime": RUNTIME, "current": "diag-1", "available": ["diag-1"], "type": "full_runtime"} in versions[
        "versions"]  # the flat list the original's older scripts read

    spawned = payload(hive, "POST", "/hives/local/nodes", {"node_name": NODE, "runtime": RUNTIME,
                                                           "runtime_version": "current"})
    assert (spawned["node_name"], spawned["version"]) == (f"{NODE}@local", "diag-1")
    wait_until(lambda: f"{NODE}@local" in inventory_names(hive), WAIT, f"{NODE} in the inventory")
    everything = payload(hive, "GET", "/inventory")  # the global answer lists every hive's rows at the top too
    (row,) = [n for n in everything["nodes"] if n["node_name"] == f"{NODE}@local"]
    assert (row["hive"], row["kind"]) == ("local", "WF") and row["lifecycle_state"] in ("STARTING", "RUNNING")
    killed = payload(hive, "DELETE", f"/hives/local/nodes/{NODE}", {"force": True})
    assert (killed["signal"], killed["force"]) == ("SIGKILL", True)
    assert f"{NODE}@local" not in inventory_names(hive)
    assert f"{NODE}@local" in inventory_names(hive, "stopped_nodes")  # its instance stays, for start
    assert payload(hive, "DELETE", f"/hives/local/nodes/{NODE}/instance")["status"] == "ok"
    assert f"{NODE}@local" not in inventory_names(hive, "stopped_nodes")


def test_update_waits_while_the_manifest_differs_or_a_runtime_cannot_launch_and_refuses_an_older_one(
        hive: AdminHive) -> None:
    version, digest = copy_in(hive, "wf.update.check", "1.0.0", executable=False)
    code, doc = hive.call("POST", "/hives/local/update", {"manifest_version": version, "manifest_hash": digest})
    assert (code, doc["status"], doc["payload"]["status"]) == (202, "sync_pending", "sync_pending")
    assert "wf.update.check 1.0.0: bin/start.sh missing or not executable" in doc["payload"]["errors"]
    (store(hive) / "wf.update.check" / "1.0.0" / "bin" / "start.sh").chmod(0o755)
    assert payload(hive, "POST", "/hives/local/update",
                   {"manifest_version": version, "manifest_hash": digest})["status"] == "ok"
    # the caller published something this hive has not got: newer version, other bytes
    for body in ({"manifest_version": version + 1, "manifest_hash": digest},
                 {"manifest_version": version, "manifest_hash": "0" * 64}):
        code, doc = hive.call("POST", "/hives/local/update", body)
        assert (code, doc["status"]) == (202, "sync_pending"), doc
    code, doc = hive.call("POST", "/hives/local/update", {"manifest_version": version - 1, "manifest_hash": digest})
    assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH")


@pytest.mark.parametrize("path, body, code, error", [
    ("/hives/local/sync-hint", {"channel": "dist", "folder_id": "fluxbee-blob"}, 400, "INVALID_REQUEST"),
    ("/hives/local/sync-hint", {"channel": "all"}, 400, "INVALID_REQUEST"),
    ("/hives/local/sync-hint", {"timeout_ms": 0}, 400, "INVALID_REQUEST"),
    ("/hives/local/update", {"category": "runtime", "version": 3, "hash": "x"}, 400, "INVALID_REQUEST"),
    ("/hives/local/update", {"category": "runtime"}, 400, "INVALID_REQUEST"),
    ("/hives/local/update", {"manifest_hash": "x", "runtime_version": "1.0.0"}, 400, "INVALID_REQUEST"),
    ("/hives/local/update", {"manifest_hash": "x", "manifest_version": -1}, 400, "INVALID_REQUEST"),
    ("/hives/local/update", {"category": "core", "manifest_hash": "x"}, 501, "NOT_IMPLEMENTED"),
    ("/hives/nowhere/update", {"manifest_hash": "x"}, 404, "NOT_FOUND"),
])
def test_bad_sync_hint_and_update_bodies_get_a_coded_error(hive: AdminHive, path: str, body: dict[str, Any],
                                                           code: int, error: str) -> None:
    got, doc = hive.call("POST", path, body)
    assert (got, doc["status"], doc["error_code"]) == (code, "error", error), doc


def test_malformed_json_to_update_is_a_400_not_a_closed_connection(hive: AdminHive) -> None:
    got, doc = hive.call("POST", "/hives/local/update", raw=b'{"manifest_hash": ')
    assert (got, doc["action"], doc["error_code"]) == (400, "update", "INVALID_JSON"), doc


def test_the_catalogue_lists_the_actions_the_scripts_call(hive: AdminHive) -> None:
    doc = payload(hive, "GET", "/admin/actions")
    names = {a["action"]: a for a in doc["actions"]}
    assert {"list_admin_actions", "run_node", "inventory", "update", "sync_hint"} <= set(names)
    assert names["update"]["path_patterns"] == ["POST /hives/{hive}/update"]
    assert names["sync_hint"]["path_patterns"] == ["POST /hives/{hive}/sync-hint"]
    with urllib.request.urlopen(hive.base + "/openapi.json", timeout=30) as resp:
        spec = json.loads(resp.read())
    assert {"/hives/{hive}/update", "/hives/{hive}/sync-hint"} <= set(spec["paths"])


def add_dependent(hive: AdminHive, name: str, base: str) -> None:
    """A config_only runtime on ``base`` in the manifest (its package folder holds only a config)."""
    (store(hive) / name / "1.0.0" / "config").mkdir(parents=True, exist_ok=True)
    path = store(hive) / "manifest.json"
    doc = json.loads(path.read_text())
    doc["runtimes"][name] = {"available": ["1.0.0"], "current": "1.0.0", "type": "config_only", "runtime_base": base}
    doc["version"] = int(doc["version"]) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def delete_error(hive: AdminHive, runtime: str, version: str) -> tuple[int, str]:
    code, doc = hive.call("DELETE", f"/hives/local/runtimes/{runtime}/versions/{version}")
    assert doc["status"] == "error", doc
    return code, str(doc["error_code"])


def test_a_runtime_version_is_deleted_only_when_not_current_not_running_and_without_dependents(
        hive: AdminHive) -> None:
    """The original's runtime-delete script, without its publish tool: the same refusals and codes."""
    rt = "wf.delete.ok"
    copy_in(hive, rt, "1.0.0")
    copy_in(hive, rt, "2.0.0")
    assert delete_error(hive, rt, "2.0.0") == (409, "RUNTIME_CURRENT_CONFLICT")
    assert delete_error(hive, rt, "current") == (409, "RUNTIME_CURRENT_CONFLICT")
    assert delete_error(hive, rt, "9.9.9") == (404, "RUNTIME_VERSION_NOT_FOUND")
    assert delete_error(hive, "wf.never.there", "1.0.0") == (404, "RUNTIME_NOT_FOUND")
    done = payload(hive, "DELETE", f"/hives/local/runtimes/{rt}/versions/1.0.0")
    assert (done["removed_version"], done["current"], done["removed_runtime_dir"]) == ("1.0.0", "2.0.0", False)
    assert not (store(hive) / rt / "1.0.0").exists() and (store(hive) / rt / "2.0.0" / "bin" / "start.sh").exists()
    assert payload(hive, "GET", f"/hives/local/runtimes/{rt}")["available"] == ["2.0.0"]
    assert done["manifest_hash"] == hashlib.sha256((store(hive) / "manifest.json").read_bytes()).hexdigest()
    # the last version may go, and the runtime with it
    last = payload(hive, "DELETE", f"/hives/local/runtimes/{rt}/versions/2.0.0")
    assert last["removed_runtime_dir"] is True and not (store(hive) / rt).exists()
    assert delete_error(hive, rt, "2.0.0") == (404, "RUNTIME_NOT_FOUND")
    assert any(e["action"] == "remove_runtime_version" for e in payload(hive, "GET", "/deployments")["entries"])


def test_a_version_a_node_runs_or_a_runtime_builds_on_is_not_deleted(hive: AdminHive) -> None:
    rt = "wf.delete.inuse"
    copy_in(hive, rt, "1.0.0")
    copy_in(hive, rt, "2.0.0")
    node = "WF.delete.pinned"
    payload(hive, "POST", "/hives/local/nodes", {"node_name": node, "runtime": rt, "runtime_version": "1.0.0"})

    def running() -> bool:
        got, doc = hive.call("GET", f"/hives/local/nodes/{node}/status")
        return got == 200 and doc["payload"]["node_status"]["lifecycle_state"] in ("RUNNING", "STARTING")

    wait_until(running, WAIT, f"{node} running on {rt} 1.0.0")
    assert delete_error(hive, rt, "1.0.0") == (409, "RUNTIME_IN_USE")
    payload(hive, "DELETE", f"/hives/local/nodes/{node}", {"force": True, "purge_instance": True})
    assert payload(hive, "DELETE", f"/hives/local/runtimes/{rt}/versions/1.0.0")["removed_version"] == "1.0.0"

    add_dependent(hive, "wf.delete.dependent", rt)
    copy_in(hive, rt, "3.0.0")
    assert delete_error(hive, rt, "2.0.0") == (409, "RUNTIME_HAS_DEPENDENTS")


def test_a_spawn_whose_package_cannot_start_is_refused_before_anything_is_written(hive: AdminHive) -> None:
    """The original's preflight, whose RUNTIME_NOT_PRESENT its scripts answer with sync-hint + update."""
    copy_in(hive, "wf.not.executable", "1.0.0", executable=False)
    copy_in(hive, "wf.not.copied", "1.0.0")
    (store(hive) / "wf.not.copied" / "1.0.0" / "bin" / "start.sh").unlink()
    (store(hive) / "wf.not.copied" / "1.0.0" / "bin").rmdir()
    (store(hive) / "wf.not.copied" / "1.0.0").rmdir()
    for runtime, says in (("wf.not.executable", "not executable"), ("wf.not.copied", "not in the store")):
        node = f"WF.refused.{runtime.split('.')[-1]}"
        code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": node, "runtime": runtime})
        assert (code, doc["error_code"]) == (503, "RUNTIME_NOT_PRESENT") and says in doc["error_detail"], doc
        assert not (hive.run_dir / "nodes" / f"{node}@local").exists()
        assert hive.call("GET", f"/hives/local/nodes/{node}/status")[1]["error_code"] == "NODE_NOT_FOUND"
