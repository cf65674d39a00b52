"""The inventory and node start/restart/instance removal of ``fluxbee admin --backend kubernetes`` on the
real control plane, beside the real operator (set up as in test_admin_real.py: the chart's Hive, its
admin ServiceAccount's token, kwok Pods that run nothing, so no router is in reach).

In a cluster a stopped node is a FluxNode at ``replicas: 0`` (the operator keeps its ConfigMap and
runs no Pod); restart stamps the FluxNode's ``spec.env`` so the operator replaces its Pods."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane
from operator_support import (
    AdminApi,
    FluxbeeProcess,
    apply,
    get,
    install_chart,
    running_pods,
    start_admin,
    start_operator,
)

RUNTIME: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime", "metadata": {"name": "fluxbee.echo"},
    "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"], "configTemplate": {"reply_prefix": "echo: "}},
}
NODE = "WF.k8s.life"


@dataclass
class Setup:
    cp: ControlPlane
    ns: str
    operator: FluxbeeProcess
    admin: AdminApi

    def wait_for(self, what: str, probe: Any, timeout: float = 90.0) -> Any:
        def both_alive() -> Any:
            self.admin.process.check_alive()
            return probe()

        return self.operator.wait_for(what, both_alive, timeout)

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        code, doc = self.admin.call(method, path, body)
        assert code == 200 and doc["status"] == "ok", (method, path, code, doc)
        return dict(doc["payload"])

    def error(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        code, doc = self.admin.call(method, path, body)
        assert doc["status"] == "error", (method, path, code, doc)
        return code, str(doc["error_code"])

    def pods(self, resource: str) -> list[dict[str, Any]]:
        return running_pods(self.cp, self.ns, f"fluxbee.io/fluxnode={resource}")

    def scale(self, resource: str, replicas: int) -> None:
        self.cp.kubectl("-n", self.ns, "patch", "fluxnode", resource, "--type", "merge", "-p",
                        json.dumps({"spec": {"replicas": replicas}}))


@pytest.fixture(scope="module")
def setup(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cp, ns = control_plane, f"t-{uuid.uuid4().hex[:10]}"
    work: Path = tmp_path_factory.mktemp("admin-inventory-real")
    cp.kubectl("create", "namespace", ns)
    operator = admin = None
    try:
        release = install_chart(cp, ns, hive="demo")
        apply(cp, ns, RUNTIME)
        operator = start_operator(cp, release, work)
        operator.wait_for("the hive's admin history ConfigMap", lambda: get(cp, ns, "configmap", "demo-admin-history"))
        admin = start_admin(cp, release, "demo", work)
        yield Setup(cp, ns, operator, admin)
    finally:
        try:
            if admin is not None:
                admin.process.stop()
        finally:
            if operator is not None:
                operator.stop()
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


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


def test_a_fluxnode_not_made_by_the_admin_api_is_not_changed_by_it(setup: Setup) -> None:
    s = setup
    apply(s.cp, s.ns, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "gitops"},
                       "spec": {"hive": "demo", "nodeName": "WF.gitops", "runtime": "fluxbee.echo",
                                "replicas": 0}})
    s.wait_for("the hand-made node listed", lambda: "WF.gitops@demo" in {
        n["name"] for n in s.ok("GET", "/inventory")["hives"][0]["nodes"]})
    for method, action in (("POST", "start"), ("POST", "restart"), ("DELETE", "instance")):
        assert s.error(method, f"/hives/demo/nodes/WF.gitops/{action}") == (409, "NODE_NOT_MANAGED"), action
    node = get(s.cp, s.ns, "fluxnode", "gitops")
    assert node is not None and node["spec"]["replicas"] == 0 and "env" not in node["spec"]
