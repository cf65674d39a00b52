"""The admin API on the Kubernetes backend: the real kopf operator against the emulated API.

The emulator and operator fixtures are the operator tests' own (``tests/integration/operator``),
loaded here under another module name.  There is no kubelet, so a test marks a Pod Ready itself
(as the kubelet would) where it needs a running node.  The same assertions as the local backend's
tests apply where the backends agree; where the cluster has no router in reach, the endpoints that
need one answer 503 ROUTER_UNREACHABLE, and with a router in the socket directory they work.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hive_harness import RouterProc, fluxbee_argv, free_port

from fluxbee.admin import cluster as cluster_mod
from fluxbee.admin.cluster import ClusterSettings, cluster_admin
from fluxbee.admin.http import AdminSettings
from fluxbee.admin.k8s import CREATED_BY
from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.kube import KubeConfig

_OPERATOR_TESTS = Path(__file__).resolve().parents[1] / "operator"
sys.path.insert(0, str(_OPERATOR_TESTS))
_spec = importlib.util.spec_from_file_location("operator_kmock_conftest", _OPERATOR_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_operator_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_operator_conftest)
cluster = _operator_conftest.cluster
operator = _operator_conftest.operator

from operator_kmock_support import NS, Cluster, eventually  # noqa: E402  (after the path above)

TENANT = "tnt:12345678-1234-1234-1234-123456789abc"
HIVE: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive",
                        "metadata": {"name": "demo", "namespace": NS}, "spec": {}}
RUNTIME: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime",
                           "metadata": {"name": "fluxbee.echo", "namespace": NS},
                           "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"],
                                    "configTemplate": {"reply_prefix": "echo: "}}}


@dataclass
class Admin:
    base: str
    http: aiohttp.ClientSession
    cluster: Cluster
    run_dir: Path

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=headers) as resp:
            return resp.status, json.loads(await resp.read())


@pytest.fixture
async def admin(cluster: Cluster, operator: Any) -> AsyncIterator[Admin]:
    await cluster.api.create("hives", NS, HIVE)
    await cluster.api.create("runtimes", NS, RUNTIME)
    run_dir = Path(tempfile.mkdtemp(prefix="fbk", dir="/tmp"))
    settings = ClusterSettings(namespace=NS, hive_resource="demo", run_dir=run_dir,
                               kube=KubeConfig(server=cluster.url, insecure=True), drift_interval=0.2)
    old_retry = cluster_mod.ROUTER_RETRY
    cluster_mod.ROUTER_RETRY = 0.1
    try:
        async with cluster_admin(AdminSettings(port=0), settings) as running, aiohttp.ClientSession() as http:
            assert running.url is not None
            yield Admin(running.url, http, cluster, run_dir)
    finally:
        cluster_mod.ROUTER_RETRY = old_retry
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


async def _mark_ready(a: Admin, fluxnode: str) -> str:
    """Play the kubelet: the FluxNode's first Pod becomes Ready."""
    async def pod() -> dict[str, Any] | None:
        pods = await a.cluster.api.list("pods", NS, {"fluxbee.io/fluxnode": fluxnode})
        return pods[0] if pods else None

    p = await eventually(pod, 10, f"a Pod of {fluxnode}")
    await a.cluster.api.patch("pods", NS, p["metadata"]["name"], {"status": {
        "phase": "Running", "startTime": "2026-01-01T00:00:00Z",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "node", "ready": True, "restartCount": 0, "state": {"running": {}}}]}},
        subresource="status")
    return str(p["metadata"]["name"])


async def test_node_lifecycle_on_fluxnode_resources(admin: Admin) -> None:
    a = admin
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.life.one", "runtime": "fluxbee.echo",
                                                           "runtime_version": "current", "tenant_id": TENANT,
                                                           "config": {"a": 1}})
    assert code == 200, doc
    p = doc["payload"]
    assert p["node_name"] == "WF.life.one@demo" and p["version"] == "0.1.0" and p["requested_version"] == "current"
    resource = p["unit"].removeprefix("fluxnode/")
    # the original's summary (the full config is GET …/config's), and no router in reach: no ILK, and why
    assert p["config"] == {"status": "ok", "path": f"configmap/{resource}-node-config#config.json", "created": True,
                           "config_version": 1}
    register = p["identity"]["register"]
    assert (register["status"], register["ilk_id"], register["error_code"]) == ("skipped", None, "ROUTER_UNREACHABLE")
    assert p["identity"]["identity_target"] == "SY.identity@demo" and p["identity"]["update"] is None
    node = await a.cluster.api.get("fluxnodes", NS, resource)
    assert node is not None and node["metadata"]["labels"][CREATED_BY] == "admin-api"
    assert node["spec"]["nodeName"] == "WF.life.one@demo" and node["spec"]["runtimeVersion"] == "0.1.0"

    await _mark_ready(a, resource)

    async def running() -> dict[str, Any] | None:
        c, d = await a.call("GET", "/hives/demo/nodes/WF.life.one/status")
        st = d["payload"]["node_status"] if c == 200 else None
        return st if st and st["lifecycle_state"] == "RUNNING" else None

    st = await eventually(running, 10, "the node to run")
    assert st["runtime"] == {"name": "fluxbee.echo", "requested_version": "current", "resolved_version": "0.1.0"}
    assert st["status_version"] >= 1 and st["process"]["ready_replicas"] == 1
    # no router in reach: health is not guessed
    assert (st["health_state"], st["health_source"]) == ("UNKNOWN", "UNKNOWN")
    assert st["health_error"]["error_code"] == "ROUTER_UNREACHABLE"
    code, doc = await a.call("GET", "/hives/demo/nodes")
    assert code == 200 and "WF.life.one@demo" in {n["name"] for n in doc["payload"]["nodes"]}
    assert doc["payload"]["inventory_source"] == "managed_instances_fallback"
    # errors with specific codes
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.life.one", "runtime": "fluxbee.echo"})
    assert (code, doc["error_code"]) == (409, "NODE_ALREADY_EXISTS")
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.x.y", "runtime": "no.such"})
    assert (code, doc["error_code"]) == (404, "RUNTIME_NOT_AVAILABLE")
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.x.y", "runtime": "fluxbee.echo",
                                                           "runtime_version": "9.9.9"})
    assert (code, doc["error_code"]) == (404, "RUNTIME_NOT_AVAILABLE")
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.x.y", "runtime": "fluxbee.echo",
                                                           "config": {"_system": {}}})
    assert (code, doc["error_code"]) == (422, "INVALID_CONFIG")

    # config: the operator writes the effective config into the node's ConfigMap
    async def config_with(key: str) -> dict[str, Any] | None:
        c, d = await a.call("GET", "/hives/demo/nodes/WF.life.one/config")
        return d["payload"]["config"] if c == 200 and key in d["payload"]["config"] else None

    cfg = await eventually(lambda: config_with("a"), 10, "the node's effective config")
    assert cfg["a"] == 1 and cfg["reply_prefix"] == "echo: " and cfg["tenant_id"] == TENANT
    assert cfg["_system"]["runtime"] == "fluxbee.echo" and cfg["_system"]["node_name"] == "WF.life.one@demo"
    code, doc = await a.call("PUT", "/hives/demo/nodes/WF.life.one/config?notify=false", {"b": 2})
    assert code == 200 and doc["payload"]["config_version"] == 2 and doc["payload"]["notify_status"] == "skipped"
    cfg = await eventually(lambda: config_with("b"), 10, "the patched config to reach the ConfigMap")
    assert cfg["a"] == 1 and cfg["b"] == 2
    node = await a.cluster.api.get("fluxnodes", NS, resource)
    assert node is not None and node["spec"]["config"] == {"a": 1, "b": 2}
    code, doc = await a.call("GET", "/hives/demo/nodes/WF.life.one/state")
    assert code == 200 and doc["payload"]["state"] is None
    # router-bound endpoints: a clear 503, nothing faked
    for path, body in (("/messages", {"msg": "LLM", "payload": {"text": "hi"}}), ("/control/config-get", None),
                       ("/control/config-set", {"k": "v"})):
        code, doc = await a.call("POST", "/hives/demo/nodes/WF.life.one" + path, body)
        assert (code, doc["error_code"]) == (503, "ROUTER_UNREACHABLE"), (path, doc)
    # a FluxNode applied by someone else is reported, not changed
    await a.cluster.api.create("fluxnodes", NS, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode",
                                                 "metadata": {"name": "gitops", "namespace": NS},
                                                 "spec": {"hive": "demo", "nodeName": "WF.gitops",
                                                          "runtime": "fluxbee.echo"}})
    code, doc = await a.call("PUT", "/hives/demo/nodes/WF.gitops/config", {"x": 1})
    assert (code, doc["error_code"]) == (409, "NODE_NOT_MANAGED")
    assert (await a.call("DELETE", "/hives/demo/nodes/WF.gitops"))[1]["error_code"] == "NODE_NOT_MANAGED"
    # kill
    code, doc = await a.call("DELETE", "/hives/demo/nodes/WF.life.one", {"purge_instance": True})
    assert code == 200 and doc["payload"]["instance_purged"] is True and doc["payload"]["was_running"] is True

    async def gone() -> bool:
        c, d = await a.call("GET", "/hives/demo/nodes/WF.life.one/status")
        return c == 404 and d["error_code"] == "NODE_NOT_FOUND"

    await eventually(gone, 10, "the killed node to be gone")
    assert await a.cluster.api.get("fluxnodes", NS, resource) is None
    code, doc = await a.call("GET", "/hives/demo/deployments?limit=20&category=node")
    actions = [e["action"] for e in doc["payload"]["entries"]]
    assert "run_node" in actions and "kill_node" in actions


async def test_routes_and_vpns_patch_the_hive_and_the_operator_rolls_its_config_map(admin: Admin) -> None:
    a = admin
    code, doc = await a.call("POST", "/routes", {"prefix": "AI.sales.", "action": "DROP"})
    assert code == 200, doc
    assert (await a.call("POST", "/hives/demo/routes", {"prefix": "AI.sales.", "action": "DROP"}))[0] == 409
    code, doc = await a.call("GET", "/hives/demo/routes")
    assert [r["prefix"] for r in doc["payload"]["routes"]] == ["AI.sales."]
    hive = await a.cluster.api.get("hives", NS, "demo")
    assert hive is not None and hive["spec"]["routes"][0]["prefix"] == "AI.sales."

    async def rolled() -> bool:
        cm = await a.cluster.api.get("configmaps", NS, "demo-hive-config")
        return cm is not None and "AI.sales." in cm["data"]["hive.yaml"]

    await eventually(rolled, 10, "the operator to roll the hive ConfigMap")
    assert (await a.call("DELETE", "/routes?prefix=AI.sales."))[0] == 200
    assert (await a.call("DELETE", "/hives/demo/routes/AI.sales."))[0] == 404
    assert (await a.call("POST", "/hives/demo/vpns", {"pattern": "WF.q", "vpn_id": 3}))[0] == 200
    assert (await a.call("DELETE", "/hives/demo/vpns/WF.q"))[0] == 200
    code, doc = await a.call("PUT", "/config/vpns", {"vpns": [{"pattern": "WF.echo", "match_kind": "PREFIX",
                                                               "vpn_id": 20}]})
    assert code == 200, doc
    code, doc = await a.call("GET", "/vpns")
    assert doc["payload"]["vpns"][0]["vpn_id"] == 20
    code, doc = await a.call("PUT", "/config/routes", {"routes": [], "vpns": [], "version": 1000})
    assert code == 200, doc
    code, doc = await a.call("PUT", "/config/routes", {"routes": [], "version": 5})
    assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH")
    hive = await a.cluster.api.get("hives", NS, "demo")
    assert hive is not None and hive["spec"]["vpns"] == [] and hive["spec"]["routes"] == []


async def test_hives_versions_runtimes_catalogue_identity_and_bad_input(admin: Admin) -> None:
    a = admin
    assert await a.call("GET", "/health") == (200, {"status": "ok"})
    code, doc = await a.call("GET", "/hive/status")
    assert code == 200 and doc["payload"]["hive_id"] == "demo" and doc["payload"]["backend"] == "kubernetes"
    assert doc["payload"]["router_connected"] is False
    code, doc = await a.call("POST", "/hives", {"hive_id": "worker-220", "address": "192.168.8.220"})
    assert code == 200 and doc["payload"]["bootstrap_mode"] == "hive_resource", doc
    assert (await a.call("POST", "/hives", {"hive_id": "worker-220", "address": "192.168.8.220"}))[1][
        "error_code"] == "HIVE_EXISTS"
    assert (await a.call("POST", "/hives", {"hive_id": "bad id", "address": "x"}))[0] == 400
    code, doc = await a.call("GET", "/hives")
    assert {h["hive_id"] for h in doc["payload"]["hives"]} == {"demo", "worker-220"}
    assert (await a.call("GET", "/hives/worker-220"))[1]["payload"]["hive"]["address"] == "192.168.8.220"
    worker = await a.cluster.api.get("hives", NS, "worker-220")
    assert worker is not None and worker["spec"]["role"] == "worker"
    assert (await a.call("GET", "/hives/worker-220/nodes"))[0] == 503
    assert (await a.call("DELETE", "/hives/demo"))[0] == 400
    assert (await a.call("DELETE", "/hives/worker-220"))[0] == 200
    assert (await a.call("GET", "/hives/worker-220"))[0] == 404

    async def ready_runtime() -> dict[str, Any] | None:
        _, d = await a.call("GET", "/hives/demo/versions")
        rt = d["payload"]["hive"]["runtimes"]["runtimes"]["fluxbee.echo"]
        return rt if rt["readiness"]["0.1.0"]["start_sh_executable"] else None

    rt = await eventually(ready_runtime, 10, "the operator to mark the Runtime Ready")
    assert rt["current"] == "0.1.0" and rt["available"] == ["0.1.0"] and rt["type"] == "full_runtime"
    code, doc = await a.call("GET", "/versions")
    assert doc["payload"]["hives"][0]["hive_id"] == "demo"
    code, doc = await a.call("GET", "/hives/demo/runtimes/fluxbee.echo")
    assert code == 200 and doc["payload"]["materialization_summary"]["current_materialized"] is True
    assert (await a.call("GET", "/hives/demo/runtimes/no.such"))[1]["error_code"] == "RUNTIME_NOT_FOUND"
    code, doc = await a.call("GET", "/admin/actions")
    assert {"run_node", "list_ilks", "publish_module"} <= {x["action"] for x in doc["payload"]["actions"]}
    for path in ("/hives/demo/identity/ilks", "/modules"):
        code, doc = await a.call("GET", path)
        assert (code, doc["error_code"]) == (503, "ROUTER_UNREACHABLE")
    cases = [
        ("POST", "/hives/demo/nodes", b"{not json", 400, "INVALID_JSON"),
        ("POST", "/hives/demo/nodes", b"[1]", 400, "INVALID_REQUEST"),
        ("POST", "/hives/demo/nodes", b'{"node_name": 5, "runtime": "fluxbee.echo"}', 400, "INVALID_REQUEST"),
        ("POST", "/hives/demo/nodes", b'{"node_name": "WF.a.b", "runtime": "x", "bogus": 1}', 400,
         "INVALID_REQUEST"),
        ("GET", "/hives/demo/deployments?limit=abc", None, 400, "INVALID_REQUEST"),
        ("GET", "/no/such/path", None, 404, "NOT_FOUND"),
    ]
    for method, path, raw, status, err in cases:
        got, doc = await a.call(method, path, raw=raw)
        assert (got, doc["status"], doc["error_code"]) == (status, "error", err), (path, doc)


async def test_observed_drift_a_replaced_pod_and_a_failing_node_are_recorded(admin: Admin) -> None:
    a = admin
    code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.drift.one", "runtime": "fluxbee.echo"})
    assert code == 200, doc
    resource = doc["payload"]["unit"].removeprefix("fluxnode/")
    pod = await _mark_ready(a, resource)
    await asyncio.sleep(0.5)  # the monitor sees the Pod once
    await a.cluster.api.delete("pods", NS, pod)  # drift: the operator brings a new Pod

    async def alert(kind: str) -> bool:
        _, d = await a.call("GET", f"/hives/demo/drift-alerts?kind={kind}")
        return any(e["detail"]["node_name"] in ("WF.drift.one@demo", "WF.broken@demo")
                   for e in d["payload"]["entries"])

    await eventually(lambda: alert("node_replaced"), 10, "a node_replaced drift alert")
    await a.cluster.api.create("fluxnodes", NS, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode",
                                                 "metadata": {"name": "broken", "namespace": NS},
                                                 "spec": {"hive": "demo", "nodeName": "WF.broken",
                                                          "runtime": "not.published"}})
    await eventually(lambda: alert("node_failed"), 10, "a node_failed drift alert")
    code, doc = await a.call("GET", "/hives/demo/nodes/WF.broken/status")
    assert doc["payload"]["node_status"]["lifecycle_state"] == "FAILED"
    assert doc["payload"]["node_status"]["process"]["reason"] == "RuntimeNotFound"


async def test_with_a_router_in_the_socket_dir_messages_and_control_go_through_it(admin: Admin) -> None:
    a = admin
    router = RouterProc(a.run_dir, hive_id="demo")
    try:
        async def connected() -> bool:
            _, d = await a.call("GET", "/hive/status")
            return bool(d["payload"]["router_connected"])

        await eventually(connected, 10, "the admin API to connect to the router")
        seen: list[wire.Message] = []
        holder: list[Any] = []

        def answer(msg: wire.Message) -> None:
            seen.append(msg)
            if msg.meta.msg == wire.CONFIG_GET:
                holder[0].reply_nowait(msg, {"status": "ok", "seen": "CONFIG_GET"}, msg=wire.CONFIG_RESPONSE)

        sender, _ = await connect(NodeConfig(name="WF.probe", run_dir=a.run_dir, reconnect=False, on_message=answer,
                                             handle_config=False))
        holder.append(sender)
        try:
            code, doc = await a.call("POST", "/hives/demo/nodes/WF.probe/messages", {"msg": "LLM",
                                                                                     "payload": {"text": "hi"}})
            assert code == 200 and wire.is_uuid(doc["payload"]["trace_id"])
            async def delivered() -> bool:
                return any(m.payload == {"text": "hi"} for m in seen)

            await eventually(delivered, 5, "the message")
            code, doc = await a.call("POST", "/hives/demo/nodes/WF.probe/control/config-get")
            assert code == 200 and doc["payload"]["response"]["seen"] == "CONFIG_GET", doc
            async def listed() -> dict[str, Any] | None:  # the router's status is shared for 0.1 s
                _, d = await a.call("GET", "/hives/demo/nodes")
                return d["payload"] if "WF.probe@demo" in {n["name"] for n in d["payload"]["nodes"]} else None

            assert (await eventually(listed, 5, "WF.probe in the node list"))["inventory_source"] == "router"
            code, doc = await a.call("GET", "/hives/demo/identity/ilks")  # no SY.identity in this hive
            assert (code, doc["error_code"]) == (503, "IDENTITY_UNAVAILABLE")
        finally:
            await sender.close()
    finally:
        assert router.stop() == 0


async def test_with_sy_identity_on_the_router_a_spawn_registers_the_ilk_and_records_it_in_the_fluxnode(
        admin: Admin) -> None:
    """A stand-in SY.identity on the hive's router: the spawn registers the node's ILK (creating the unknown
    tenant first), the FluxNode carries it, the operator renders it into ``_system.ilk_id``, status shows it; a
    refusal creates no FluxNode."""
    a = admin
    router = RouterProc(a.run_dir, hive_id="demo")
    try:
        async def connected() -> bool:
            _, d = await a.call("GET", "/hive/status")
            return bool(d["payload"]["router_connected"])

        await eventually(connected, 10, "the admin API to connect to the router")
        asked: list[tuple[str | None, Any]] = []
        tenants: set[str] = set()
        pending = f"tnt:{uuid.uuid4()}"
        holder: list[Any] = []

        def answer(msg: wire.Message) -> None:
            asked.append((msg.meta.msg, msg.payload))
            body = msg.payload
            if msg.meta.msg == "TNT_CREATE":
                tenants.add(body["tenant_id"])
                reply = {"status": "ok", "tenant_id": body["tenant_id"], "created": True, "matched_by": None}
            elif msg.meta.msg == "ILK_REGISTER" and body["tenant_id"] == pending:
                reply = {"status": "error", "error_code": "TENANT_PENDING", "message": "pending approval"}
            elif msg.meta.msg == "ILK_REGISTER" and body["tenant_id"] not in tenants:
                reply = {"status": "error", "error_code": "INVALID_TENANT", "message": "no such tenant"}
            elif msg.meta.msg == "ILK_REGISTER":
                reply = {"status": "ok", "ilk_id": body["ilk_id"]}
            else:
                return
            holder[0].reply_nowait(msg, reply, msg_type=wire.TYPE_SYSTEM, msg=f"{msg.meta.msg}_RESPONSE")

        identity, _ = await connect(NodeConfig(name="SY.identity", run_dir=a.run_dir, reconnect=False,
                                               on_message=answer, handle_config=False))
        holder.append(identity)
        try:
            code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "AI.k8s.agent",
                                                                   "runtime": "fluxbee.echo", "tenant_id": TENANT})
            assert code == 200, doc
            register = doc["payload"]["identity"]["register"]
            ilk = register["ilk_id"]
            assert register == {"status": "ok", "ilk_id": ilk, "ilk_type": "agent", "target": "SY.identity@demo",
                                "tenant_id": TENANT, "created": True, "tenant_created": True}
            assert [m for m, _ in asked] == ["ILK_REGISTER", "TNT_CREATE", "ILK_REGISTER"]
            assert asked[1][1] == {"name": TENANT, "status": "active", "tenant_id": TENANT}
            assert asked[2][1]["identification"] == {"display_name": "AI.k8s.agent@demo",
                                                     "node_name": "AI.k8s.agent@demo", "runtime": "fluxbee.echo",
                                                     "runtime_version": "0.1.0"}
            resource = doc["payload"]["unit"].removeprefix("fluxnode/")
            node = await a.cluster.api.get("fluxnodes", NS, resource)
            assert node is not None and node["spec"]["agentIlk"] == ilk

            async def rendered() -> dict[str, Any] | None:
                c, d = await a.call("GET", "/hives/demo/nodes/AI.k8s.agent/config")
                return d["payload"]["config"] if c == 200 and d["payload"]["config"] else None

            cfg = await eventually(rendered, 10, "the operator to render the node's config")
            assert cfg["_system"]["ilk_id"] == ilk and cfg["_system"]["tenant_id"] == TENANT
            code, doc = await a.call("GET", "/hives/demo/nodes/AI.k8s.agent/status")
            assert doc["payload"]["node_status"]["identity"] == {"ilk_id": ilk, "tenant_id": TENANT}

            code, doc = await a.call("POST", "/hives/demo/nodes", {"node_name": "WF.k8s.refused",
                                                                   "runtime": "fluxbee.echo", "tenant_id": pending})
            assert (code, doc["error_code"]) == (409, "IDENTITY_REGISTER_FAILED"), doc
            assert doc["payload"]["identity"]["register"]["error_code"] == "TENANT_PENDING"
            assert all((n.get("spec") or {}).get("nodeName") != "WF.k8s.refused@demo"
                       for n in await a.cluster.api.list("fluxnodes", NS))
        finally:
            await identity.close()
    finally:
        assert router.stop() == 0


async def test_the_fluxbee_admin_command_serves_a_hive_and_needs_a_token_off_loopback(cluster: Cluster) -> None:
    await cluster.api.create("hives", NS, HIVE)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FLUXBEE_ADMIN_TOKEN", None)
    refused = await asyncio.create_subprocess_exec(
        *fluxbee_argv("admin", "--listen", f"0.0.0.0:{port}", "--backend", "kubernetes", "--hive", "demo",
                      "--namespace", NS, "--kube-api", cluster.url), env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 2 and b"bearer token is required" in err
    with tempfile.TemporaryDirectory(prefix="fbc", dir="/tmp") as tmp:
        proc = await asyncio.create_subprocess_exec(
            *fluxbee_argv("admin", "--listen", f"127.0.0.1:{port}", "--backend", "kubernetes", "--namespace", NS,
                          "--kube-api", cluster.url, "--run-dir", tmp),
            env={**env, "FLUXBEE_HIVE_RESOURCE": "demo", "FLUXBEE_ADMIN_TOKEN": "s3cret"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert b"admin API on" in line, line
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/hive/status") as resp:
                    assert resp.status == 401
                async with http.get(f"http://127.0.0.1:{port}/hive/status",
                                    headers={"Authorization": "Bearer s3cret"}) as resp:
                    doc = await resp.json()
                    assert resp.status == 200 and doc["payload"]["hive_id"] == "demo"
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 15) == 0
