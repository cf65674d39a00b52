"""The inventory and the node lifecycle (start, restart, instance removal) of a real `fluxbee up` hive,
driven over its admin HTTP port as a user drives it."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AdminHive, running_hive
from hive_harness import fluxbee_argv, wait_until

NODE = "WF.inv.life"
FULL = f"{NODE}@local"
WAIT = 30.0
"""Generous: a shared 2-core machine starts Python nodes slowly."""


@pytest.fixture(scope="module")
def hive() -> Iterator[AdminHive]:
    with running_hive(identity=False) as h:
        yield h


def ok(hive: AdminHive, method: str, path: str, body: Any = None) -> dict[str, Any]:
    code, doc = hive.call(method, path, body)
    assert code == 200 and doc["status"] == "ok", (method, path, code, doc)
    return dict(doc["payload"])


def error(hive: AdminHive, method: str, path: str, body: Any = None) -> tuple[int, str]:
    code, doc = hive.call(method, path, body)
    assert doc["status"] == "error", (method, path, code, doc)
    return code, str(doc["error_code"])


def status(hive: AdminHive, name: str) -> dict[str, Any]:
    code, doc = hive.call("GET", f"/hives/local/nodes/{name}/status")
    return dict(doc["payload"]["node_status"]) if code == 200 else {"lifecycle_state": doc["error_code"]}


def connected(hive: AdminHive) -> dict[str, dict[str, Any]]:
    """The router's view: name -> list row (uuid, connected_at) of every connected node."""
    rows = ok(hive, "GET", "/hives/local/nodes")["nodes"]
    return {r["name"]: r for r in rows if r.get("visible_in_router")}


def test_the_inventory_lists_the_hives_real_nodes_and_filters_them(hive: AdminHive) -> None:
    wait_until(lambda: "WF.echo@local" in connected(hive), WAIT, "WF.echo connected")
    listed = {r["name"]: r for r in ok(hive, "GET", "/hives/local/nodes")["nodes"]}
    inv = ok(hive, "GET", "/inventory")
    assert inv["scope"] == "global" and inv["hive_id"] == "local" and inv["total_hives"] == 1
    (local,) = inv["hives"]
    assert local["hive_id"] == "local" and local["is_local"] is True and local["inventory_source"] == "router"
    names = {n["name"] for n in local["nodes"]}
    assert {"WF.echo@local", "SY.admin@local"} <= names  # the declared node and the system services

    def same_as_the_list() -> bool:  # the rows GET /hives/{h}/nodes shows (read twice: nodes may come and go)
        return {n["name"] for n in ok(hive, "GET", "/inventory")["hives"][0]["nodes"]} == {
            r["name"] for r in ok(hive, "GET", "/hives/local/nodes")["nodes"]}

    wait_until(same_as_the_list, WAIT, "the inventory to list what the hive lists")
    assert inv["total_nodes"] == local["node_count"] == len(local["nodes"])
    echo = next(n for n in local["nodes"] if n["name"] == "WF.echo@local")
    assert echo["kind"] == "WF" and echo["status"] == "running" and echo["uuid"] == listed["WF.echo@local"]["uuid"]

    only_wf = ok(hive, "GET", "/inventory?type=wf")  # upper-cased, as the original does
    assert only_wf["filter_type"] == "WF"
    assert {n["kind"] for n in only_wf["hives"][0]["nodes"]} == {"WF"}
    assert "WF.echo@local" in {n["name"] for n in only_wf["hives"][0]["nodes"]}
    only_sy = ok(hive, "GET", "/inventory/nodes?type=SY")
    assert "SY.admin@local" in {n["name"] for n in only_sy["hives"][0]["nodes"]}
    assert "WF.echo@local" not in {n["name"] for n in only_sy["hives"][0]["nodes"]}

    summary = ok(hive, "GET", "/inventory/summary")
    assert summary["scope"] == "summary" and "nodes" not in summary["hives"][0]
    assert summary["by_kind"]["WF"] >= 1 and summary["by_kind"]["SY"] >= 1
    assert sum(summary["by_kind"].values()) == summary["total_nodes"] == summary["hives"][0]["node_count"]
    assert summary["by_status"].get("running", 0) >= 2

    for path in ("/inventory/local", "/hives/local/status", "/inventory?hive=local"):
        one = ok(hive, "GET", path)
        assert one["scope"] == "hive" and one["hive"] == "local" and one["hive_status"] == "alive", path
        assert "WF.echo@local" in {n["name"] for n in one["nodes"]} and one["node_count"] == len(one["nodes"])


def test_inventory_bad_inputs_get_the_original_errors(hive: AdminHive) -> None:
    assert error(hive, "GET", "/inventory/worker-404") == (404, "NOT_FOUND")
    assert error(hive, "GET", "/hives/worker-404/status") == (404, "NOT_FOUND")
    assert error(hive, "GET", "/inventory?hive=worker-404") == (404, "NOT_FOUND")
    assert error(hive, "GET", "/inventory/bad.hive") == (400, "INVALID_HIVE_ID")
    assert error(hive, "GET", "/inventory?type=robot") == (400, "INVALID_REQUEST")
    assert error(hive, "POST", "/inventory", {}) == (405, "METHOD_NOT_ALLOWED")
    assert error(hive, "DELETE", "/inventory/summary") == (405, "METHOD_NOT_ALLOWED")


def test_restart_replaces_the_process_and_it_reconnects(hive: AdminHive) -> None:
    wait_until(lambda: status(hive, "WF.echo")["lifecycle_state"] == "RUNNING", WAIT, "WF.echo running")
    before = status(hive, "WF.echo")["process"]["pid"]
    since = connected(hive)["WF.echo@local"]["connected_at"]
    done = ok(hive, "POST", "/hives/local/nodes/WF.echo/restart")  # a hive-file node: its process, not its file
    assert done["state"] == "restarted" and done["node_name"] == "WF.echo@local"
    assert done["visible_in_router"] is True and done["pid"] not in (None, before)
    row = connected(hive)["WF.echo@local"]
    assert row["connected_at"] > since
    assert status(hive, "WF.echo")["process"]["pid"] == done["pid"]
    code, doc = hive.call("POST", "/hives/local/nodes/WF.echo/messages", {"msg": "ping", "payload": {}})
    assert code == 200, doc


def test_start_restart_and_instance_removal_follow_the_stopped_instance(hive: AdminHive) -> None:
    assert ok(hive, "POST", "/hives/local/nodes", {"node_name": NODE, "runtime": "fluxbee.echo",
                                                   "config": {"greeting": "hi"}})["node_name"] == FULL
    wait_until(lambda: status(hive, NODE)["lifecycle_state"] == "RUNNING", WAIT, "the spawned node running")
    again = ok(hive, "POST", f"/hives/local/nodes/{NODE}/start")
    assert again["state"] == "already_running" and again["visible_in_router"] is True
    pid = status(hive, NODE)["process"]["pid"]

    restarted = ok(hive, "POST", f"/hives/local/nodes/{NODE}/restart")
    assert restarted["state"] == "restarted" and restarted["pid"] not in (None, pid)
    assert restarted["visible_in_router"] is True and restarted["runtime"] == "fluxbee.echo"

    # a running node's instance is not removed
    assert error(hive, "DELETE", f"/hives/local/nodes/{NODE}/instance") == (409, "NODE_INSTANCE_RUNNING")

    # kill keeps the instance: the node is STOPPED, its config stays, and start brings it back
    killed = ok(hive, "DELETE", f"/hives/local/nodes/{NODE}")
    assert killed["was_running"] is True
    wait_until(lambda: FULL not in connected(hive), WAIT, "the killed node to leave the router")
    assert status(hive, NODE)["lifecycle_state"] == "STOPPED"
    node_dir = hive.run_dir / "nodes" / FULL
    assert (node_dir / "config.json").exists()
    started = ok(hive, "POST", f"/hives/local/nodes/{NODE}/start")
    assert started["state"] == "started" and started["visible_in_router"] is True
    assert started["pid"] not in (None, restarted["pid"])
    config = ok(hive, "GET", f"/hives/local/nodes/{NODE}/config")["config"]
    assert config["greeting"] == "hi" and config["_system"]["runtime"] == "fluxbee.echo"

    # a stopped node is restarted by starting it; without the document kill keeps (a node killed by an
    # earlier version), from the instance's own config
    ok(hive, "DELETE", f"/hives/local/nodes/{NODE}")
    wait_until(lambda: FULL not in connected(hive), WAIT, "the killed node to leave the router")
    kept = hive.run_dir / "admin" / "stopped" / f"{FULL}.yaml"
    assert kept.exists()
    kept.unlink()
    assert ok(hive, "POST", f"/hives/local/nodes/{NODE}/restart")["state"] == "restarted"
    assert status(hive, NODE)["lifecycle_state"] == "RUNNING"
    config = ok(hive, "GET", f"/hives/local/nodes/{NODE}/config")["config"]
    assert config["greeting"] == "hi" and config["_system"]["runtime"] == "fluxbee.echo"

    # removing a stopped node's instance deletes its files; then there is nothing to start
    assert ok(hive, "DELETE", f"/hives/local/nodes/{NODE}")["status"] == "ok"
    wait_until(lambda: FULL not in connected(hive), WAIT, "the killed node to leave the router")
    # killing it again: the original's `not_found` in a 200 envelope, and the instance is kept
    again = ok(hive, "DELETE", f"/hives/local/nodes/{NODE}")
    assert again["status"] == "not_found" and again["was_running"] is False and node_dir.exists()
    removed = ok(hive, "DELETE", f"/hives/local/nodes/{NODE}/instance")
    assert removed["status"] == "ok" and removed["removed_path"] == str(node_dir) and not node_dir.exists()
    assert ok(hive, "DELETE", f"/hives/local/nodes/{NODE}/instance")["status"] == "not_found"
    assert error(hive, "POST", f"/hives/local/nodes/{NODE}/start") == (404, "NODE_NOT_FOUND")
    assert error(hive, "POST", f"/hives/local/nodes/{NODE}/restart") == (404, "NODE_NOT_FOUND")
    assert status(hive, NODE)["lifecycle_state"] == "NODE_NOT_FOUND"

    entries = ok(hive, "GET", "/hives/local/deployments?limit=50&category=node")["entries"]
    done = {e["action"] for e in entries}
    assert {"start_node", "restart_node", "remove_node_instance"} <= done


def test_a_stopped_instance_whose_config_cannot_be_read_is_not_started_and_says_why(hive: AdminHive) -> None:
    broken = hive.run_dir / "nodes" / "WF.inv.broken@local"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    assert error(hive, "POST", "/hives/local/nodes/WF.inv.broken/start") == (502, "START_FAILED")
    (broken / "config.json").write_text('{"_system": {"node_name": "WF.inv.broken@local"}}')  # no runtime
    code, doc = hive.call("POST", "/hives/local/nodes/WF.inv.broken/start")
    assert (code, doc["error_code"]) == (502, "START_FAILED") and "_system.runtime" in doc["error_detail"]
    (broken / "config.json").write_text('{"_system": {"runtime": "no.such.runtime", "runtime_version": "1.0.0"}}')
    code, doc = hive.call("POST", "/hives/local/nodes/WF.inv.broken/start")
    assert (code, doc["error_code"]) == (502, "START_FAILED") and "no.such.runtime" in doc["error_detail"]
    assert not (hive.run_dir / "admin" / "nodes" / "WF.inv.broken@local.yaml").exists()  # nothing left behind
    assert ok(hive, "DELETE", "/hives/local/nodes/WF.inv.broken/instance")["status"] == "ok"
    assert not broken.exists()


def test_lifecycle_bad_inputs_get_the_original_errors(hive: AdminHive) -> None:
    assert error(hive, "POST", "/hives/worker-404/nodes/WF.x.y/start") == (404, "NOT_FOUND")
    assert error(hive, "POST", "/hives/local/nodes/not-a-name/restart") == (400, "INVALID_REQUEST")
    # the name's hive wins over the path's (the original's rule): an unknown one is not found
    assert error(hive, "POST", "/hives/local/nodes/WF.x.y@other/start") == (404, "NOT_FOUND")
    assert error(hive, "POST", "/hives/local/nodes/WF.x.y@no.such/start") == (400, "INVALID_HIVE_ID")
    assert error(hive, "GET", "/hives/local/nodes/WF.echo/start") == (405, "METHOD_NOT_ALLOWED")
    assert error(hive, "GET", "/hives/local/nodes/WF.echo/instance") == (405, "METHOD_NOT_ALLOWED")
    assert error(hive, "DELETE", "/hives/local/nodes/WF.echo/instance") == (409, "NODE_INSTANCE_RUNNING")
    assert ok(hive, "DELETE", "/hives/local/nodes/WF.never.spawned/instance")["status"] == "not_found"


def test_fluxbee_ctl_shows_the_inventory_and_restarts_a_node(hive: AdminHive) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(fluxbee_argv("ctl", "--url", hive.base, "--hive", "local", *args),
                              capture_output=True, text=True, timeout=120)

    done = ctl("inventory", "--type", "wf")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split()[:3] == ["HIVE", "HIVE_STATUS", "NODE_NAME"]
    assert any(line.split()[:3] == ["local", "alive", "WF.echo@local"] for line in lines), done.stdout
    assert not any("SY.admin" in line for line in lines)
    summary = json.loads(ctl("--json", "inventory", "--summary").stdout)
    assert summary["scope"] == "summary" and summary["hives"][0]["hive_id"] == "local"
    wait_until(lambda: status(hive, "WF.echo")["lifecycle_state"] == "RUNNING", WAIT, "WF.echo running")
    restarted = ctl("--json", "restart", "WF.echo")
    assert restarted.returncode == 0 and json.loads(restarted.stdout)["state"] == "restarted", restarted.stderr
    refused = ctl("rm-instance", "WF.echo")
    assert refused.returncode == 1 and "NODE_INSTANCE_RUNNING" in refused.stderr
    bad = ctl("inventory", "--summary", "--of-hive", "local")
    assert bad.returncode == 2 and "--summary covers every hive" in bad.stderr


def test_the_catalogue_and_the_openapi_document_list_the_new_actions_and_paths(hive: AdminHive) -> None:
    actions = {a["action"]: a for a in ok(hive, "GET", "/admin/actions")["actions"]}
    assert set(actions["inventory"]["path_patterns"]) == {
        "GET /inventory", "GET /inventory/summary", "GET /inventory/nodes", "GET /inventory/{hive}",
        "GET /hives/{hive}/status"}
    assert actions["inventory"]["requires_target"] is False and actions["inventory"]["read_only"] is True
    for name, pattern in (("start_node", "POST /hives/{hive}/nodes/{name}/start"),
                          ("restart_node", "POST /hives/{hive}/nodes/{name}/restart"),
                          ("remove_node_instance", "DELETE /hives/{hive}/nodes/{name}/instance")):
        assert actions[name]["path_patterns"] == [pattern] and actions[name]["requires_target"] is True
    assert actions["remove_node_instance"]["confirmation_required"] is True
    help_ = ok(hive, "GET", "/admin/actions/inventory")["entry"]
    assert set(help_["request_contract"]["body"]["optional_fields"]) == {"scope", "filter_hive", "filter_type"}
    with urllib.request.urlopen(hive.base + "/openapi.json", timeout=30) as resp:
        paths = json.loads(resp.read())["paths"]
    assert {"/inventory", "/inventory/summary", "/inventory/nodes", "/inventory/{hive}"} <= set(paths)
    assert "get" in paths["/hives/{hive}/status"] and "post" in paths["/hives/{hive}/nodes/{name}/restart"]
    assert {p["name"] for p in paths["/inventory"]["get"]["parameters"]} == {"type", "hive"}
