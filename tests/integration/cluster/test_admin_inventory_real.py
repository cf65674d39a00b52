"""The inventory and node start/restart/instance removal of ``fluxbee admin --backend kubernetes`` on the
real control plane, beside the real operator (set up as in test_admin_real.py: the chart's Hive, its
admin ServiceAccount's token, kwok Pods that run nothing, so no router is in reach).

In a cluster a stopped node is a FluxNode at ``replicas: 0`` (the operator keeps its ConfigMap and
runs no Pod); restart stamps the FluxNode's ``spec.env`` so the operator replaces its Pods."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from admin_setup import ECHO_RUNTIME, Setup, admin_setup
from cluster_support import ControlPlane
from hive_pair import Pair
from operator_support import (
    apply,
    get,
)

NODE = "WF.k8s.life"


@pytest.fixture(scope="module")
def setup(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One namespace, chart, operator and admin API for this module's tests (each uses its own nodes)."""
    with admin_setup(control_plane, tmp_path_factory.mktemp("admin-inventory-real")) as s:
        yield s


def _lifecycle(s: Setup) -> str:
    code, doc = s.admin.call("GET", f"/hives/demo/nodes/{NODE}/status")
    return str(doc["payload"]["node_status"]["lifecycle_state"] if code == 200 else doc["error_code"])


def test_inventory_start_restart_and_instance_removal_over_fluxnodes(setup: Setup) -> None:
    s, cp, ns = setup, setup.cp, setup.ns
    spawned = s.ok("POST", "/hives/demo/nodes", {"node_name": NODE, "runtime": "fluxbee.echo"})
    resource = spawned["unit"].removeprefix("fluxnode/")
    s.wait_for("the node's Pod Running", lambda: len(s.pods(resource)) == 1)

    # the inventory is the backend's FluxNodes (no router in reach: the fallback source, as the hive lists them)
    inv = s.ok("GET", "/inventory")
    (demo,) = inv["hives"]
    assert (demo["hive_id"], demo["is_local"], demo["inventory_source"]) == ("demo", True,
                                                                             "managed_instances_fallback")
    row = next(n for n in demo["nodes"] if n["name"] == f"{NODE}@demo")
    assert row["kind"] == "WF" and row["managed"] is True and row["runtime"]["name"] == "fluxbee.echo"
    assert {n["name"] for n in demo["nodes"]} == {n["name"] for n in s.ok("GET", "/hives/demo/nodes")["nodes"]}
    one = s.ok("GET", "/hives/demo/status")
    assert one["scope"] == "hive" and f"{NODE}@demo" in {n["name"] for n in one["nodes"]}
    summary = s.ok("GET", "/inventory/summary?type=wf")
    assert summary["filter_type"] == "WF" and summary["by_kind"] == {"WF": summary["total_nodes"]}
    assert s.error("GET", "/inventory/elsewhere") == (404, "NOT_FOUND")
    assert s.error("GET", "/inventory?type=robot") == (400, "INVALID_REQUEST")

    # restart: the FluxNode is stamped and the operator replaces the Pod (same name, new uid)
    (before,) = s.pods(resource)
    restarted = s.ok("POST", f"/hives/demo/nodes/{NODE}/restart")
    assert restarted["state"] == "restarted" and restarted["replaced_pods"] == [before["metadata"]["name"]]
    assert restarted["visible_in_router"] is False  # no router in reach here
    node = get(cp, ns, "fluxnode", resource)
    assert node is not None and node["spec"]["env"]["FLUXBEE_RESTARTED_AT"] == str(restarted["restarted_at_ms"])
    s.wait_for("the node's Pod replaced", lambda: [p for p in s.pods(resource)
                                                   if p["metadata"]["uid"] != before["metadata"]["uid"]])
    config = get(cp, ns, "configmap", f"{resource}-node-config")
    assert config is not None and json.loads(config["data"]["config.json"])["_system"]["config_version"] == 1

    assert s.ok("POST", f"/hives/demo/nodes/{NODE}/start")["state"] == "already_running"
    assert s.error("DELETE", f"/hives/demo/nodes/{NODE}/instance") == (409, "NODE_INSTANCE_RUNNING")

    # stopped (replicas 0): no Pod, the instance (FluxNode, ConfigMap) kept; start scales it back
    s.scale(resource, 0)
    s.wait_for("the stopped node's Pods gone", lambda: not s.pods(resource))
    s.wait_for("the node reported STOPPED", lambda: _lifecycle(s) == "STOPPED")
    started = s.ok("POST", f"/hives/demo/nodes/{NODE}/start")
    assert started["state"] == "started" and started["replicas"] == 1
    s.wait_for("the started node's Pod Running", lambda: len(s.pods(resource)) == 1)

    # a stopped node's instance is removed: its FluxNode goes (and the operator's children with it)
    s.scale(resource, 0)
    s.wait_for("the node reported STOPPED", lambda: _lifecycle(s) == "STOPPED")
    removed = s.ok("DELETE", f"/hives/demo/nodes/{NODE}/instance")
    assert removed["status"] == "ok" and removed["removed_path"] == f"fluxnode/{resource}"
    s.wait_for("the FluxNode gone", lambda: get(cp, ns, "fluxnode", resource) is None)
    assert s.ok("DELETE", f"/hives/demo/nodes/{NODE}/instance")["status"] == "not_found"
    assert s.error("POST", f"/hives/demo/nodes/{NODE}/start") == (404, "NODE_NOT_FOUND")
    assert s.error("POST", f"/hives/demo/nodes/{NODE}/restart") == (404, "NODE_NOT_FOUND")

    history = s.ok("GET", "/hives/demo/deployments?limit=50&category=node")["entries"]
    assert {"start_node", "restart_node", "remove_node_instance"} <= {e["action"] for e in history}

    # killing a stopped node: the original's `not_found` (200 ok), and its FluxNode is deleted all the same
    again = s.ok("POST", "/hives/demo/nodes", {"node_name": NODE, "runtime": "fluxbee.echo"})["unit"]
    s.scale(again.removeprefix("fluxnode/"), 0)
    s.wait_for("the node reported STOPPED", lambda: _lifecycle(s) == "STOPPED" and not s.pods(
        again.removeprefix("fluxnode/")))
    killed = s.ok("DELETE", f"/hives/demo/nodes/{NODE}")
    assert (killed["status"], killed["was_running"], killed["pods"]) == ("not_found", False, [])
    s.wait_for("the stopped node's FluxNode gone", lambda: get(cp, ns, "fluxnode", again.removeprefix("fluxnode/"))
               is None)


def test_a_fluxnode_not_made_by_the_admin_api_is_not_changed_by_it(setup: Setup) -> None:
    s = setup
    apply(s.cp, s.ns, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "gitops"},
                       "spec": {"hive": "demo", "nodeName": "WF.gitops", "runtime": "fluxbee.echo",
                                "replicas": 0}})
    # replicas 0: a stopped instance, listed apart from the nodes that run (as the original's inventory)
    s.wait_for("the hand-made node listed", lambda: "WF.gitops@demo" in {
        n["name"] for n in s.ok("GET", "/inventory")["hives"][0]["stopped_nodes"]})
    for method, action in (("POST", "start"), ("POST", "restart"), ("DELETE", "instance")):
        assert s.error(method, f"/hives/demo/nodes/WF.gitops/{action}") == (409, "NODE_NOT_MANAGED"), action
    node = get(s.cp, s.ns, "fluxnode", "gitops")
    assert node is not None and node["spec"]["replicas"] == 0 and "env" not in node["spec"]


# Two hives in a cluster (conftest.py's ``pair``, module-scoped: this module gets a pair of its own): the
# mother's inventory holds the worker's own rows, asked over the links, and its lifecycle actions reach the
# worker's FluxNodes.
def test_the_mothers_inventory_and_lifecycle_reach_the_workers_fluxnodes(pair: Pair) -> None:
    cp, m, w = pair.cp, pair.mother, pair.worker
    assert m.admin is not None and w.admin is not None
    apply(cp, w.ns, ECHO_RUNTIME)
    spawned = m.admin.call("POST", "/hives/worker/nodes", {"node_name": "WF.k8s.far", "runtime": "fluxbee.echo"})
    assert spawned[0] == 200, spawned
    resource = spawned[1]["payload"]["unit"].removeprefix("fluxnode/")
    assert get(cp, w.ns, "fluxnode", resource) is not None

    def worker_rows() -> dict[str, Any] | None:
        assert m.admin is not None
        code, doc = m.admin.call("GET", "/inventory")
        entry = next((h for h in doc["payload"]["hives"] if h["hive_id"] == "worker"), None) if code == 200 else None
        return entry if entry and entry["status"] == "alive" else None

    worker = m.operator.wait_for("the mother's inventory to hold the worker's rows", worker_rows, timeout=60)
    names = {n["name"]: n for n in worker["nodes"]}
    assert worker["inventory_source"] == "admin_command" and worker["remote_inventory_source"] == "router"
    assert names["SY.admin@worker"]["visible_in_router"] is True  # the worker's admin API, on its router
    assert names["WF.k8s.far@worker"]["managed"] is True and names["WF.k8s.far@worker"]["hive"] == "worker"
    assert set(names) == {n["name"] for n in w.admin.call("GET", "/hives/worker/nodes")[1]["payload"]["nodes"]}
    one = m.admin.call("GET", "/hives/worker/status")[1]["payload"]
    assert one["scope"] == "hive" and "WF.k8s.far@worker" in {n["name"] for n in one["nodes"]}

    restarted = m.admin.call("POST", "/hives/worker/nodes/WF.k8s.far/restart")
    assert restarted[0] == 200 and restarted[1]["payload"]["state"] == "restarted", restarted
    node = get(cp, w.ns, "fluxnode", resource)
    assert node is not None and "FLUXBEE_RESTARTED_AT" in node["spec"]["env"]
    code, doc = m.admin.call("DELETE", "/hives/worker/nodes/WF.k8s.far/instance")
    assert (code, doc["error_code"]) == (409, "NODE_INSTANCE_RUNNING")

    # the worker may not ask its mother: the mother's row says so, with nothing made up
    code, doc = w.admin.call("GET", "/inventory")
    mother = next(h for h in doc["payload"]["hives"] if h["hive_id"] == "mother")
    assert (mother["status"], mother["error_code"], mother["node_count"]) == ("error", "FORBIDDEN", None)
