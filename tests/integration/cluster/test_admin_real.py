"""``fluxbee admin --backend kubernetes`` on the real control plane, beside the real operator.

The chart is installed with ``hive.enabled`` (a Hive, its admin ServiceAccount and Role, its
admin token Secret); the operator runs as in test_operator_real.py; the admin API runs on this
machine as ``fluxbee admin --backend kubernetes --listen 127.0.0.1:PORT --token-file …`` with a
kubeconfig holding only a token of the chart's admin ServiceAccount, so it can do exactly what
the chart's Role lets it do.  What it creates is read back with kubectl.  kwok's Pods run
nothing, so there is no router in the hive pods: router-bound calls answer ROUTER_UNREACHABLE,
except in the last tests, where a second admin API of the hive finds a real ``fluxbee router``
(with stand-in nodes on it) in its socket directory, as it would in the hive pod.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from admin_setup import Setup, admin_setup
from cluster_support import ControlPlane
from hive_harness import RouterProc
from operator_support import (
    AdminApi,
    apply,
    free_port,
    get,
    objects,
    running_pods,
    start_admin,
)

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import CREDENTIAL_FILE_ENV, NodeConfig, connect

TENANT = "tnt:12345678-1234-1234-1234-123456789abc"


@pytest.fixture(scope="module")
def setup(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One namespace, chart, operator and admin API for this module's tests (each uses its own nodes)."""
    with admin_setup(control_plane, tmp_path_factory.mktemp("admin-real")) as s:
        yield s


def payload(answer: tuple[int, Any], code: int = 200) -> Any:
    status, doc = answer
    assert status == code, doc
    return doc["payload"]


def test_the_admin_api_wants_the_charts_bearer_token_and_reports_the_hive(setup: Setup) -> None:
    a = setup.admin
    status, _ = a.call("GET", "/hive/status", token=None)
    assert status == 401
    assert a.call("GET", "/hive/status", token="not-the-token")[0] == 401
    hive = payload(a.call("GET", "/hive/status"))
    assert (hive["hive_id"], hive["backend"], hive["router_connected"]) == ("demo", "kubernetes", False)
    hives = payload(a.call("GET", "/hives"))["hives"]
    assert [h["hive_id"] for h in hives] == ["demo"]


def test_a_node_spawned_through_the_admin_api_runs_as_a_fluxnode_and_killing_it_removes_its_pods(
        setup: Setup) -> None:
    cp, ns, a = setup.cp, setup.ns, setup.admin
    spawned = payload(a.call("POST", "/hives/demo/nodes", {"node_name": "WF.life.one", "runtime": "fluxbee.echo",
                                                           "tenant_id": TENANT, "config": {"a": 1}}))
    assert spawned["node_name"] == "WF.life.one@demo" and spawned["version"] == "0.1.0"
    register = spawned["identity"]["register"]  # no router in reach: no ILK, and it says why
    assert (register["status"], register["ilk_id"], register["error_code"]) == ("skipped", None, "ROUTER_UNREACHABLE")
    resource = spawned["unit"].removeprefix("fluxnode/")
    node = get(cp, ns, "fluxnode", resource)
    assert node is not None
    assert node["metadata"]["labels"]["fluxbee.io/created-by"] == "admin-api"
    assert (node["spec"]["nodeName"], node["spec"]["hive"], node["spec"]["runtime"]) == (
        "WF.life.one@demo", "demo", "fluxbee.echo")

    # The operator makes its Pod, the scheduler places it, kwok runs it: the admin API sees it run.
    setup.wait_for("the spawned node's Pod Running",
                   lambda: len(running_pods(cp, ns, f"fluxbee.io/fluxnode={resource}")) == 1)

    def running() -> dict[str, Any] | None:
        code, doc = a.call("GET", "/hives/demo/nodes/WF.life.one/status")
        st = doc["payload"]["node_status"] if code == 200 else None
        return st if st and st["lifecycle_state"] == "RUNNING" and st["process"]["ready_replicas"] == 1 else None

    st = setup.wait_for("the admin API to report the node RUNNING", running)
    assert st["runtime"]["resolved_version"] == "0.1.0" and st["managed"] is True
    assert st["process"]["pods"] == [f"{resource}-0"]
    assert (st["health_state"], st["health_error"]["error_code"]) == ("UNKNOWN", "ROUTER_UNREACHABLE")
    listed = payload(a.call("GET", "/hives/demo/nodes"))
    assert "WF.life.one@demo" in {n["name"] for n in listed["nodes"]}
    assert listed["inventory_source"] == "managed_instances_fallback"
    assert payload(a.call("GET", "/hives/demo/nodes/WF.life.one/state"))["state"] is None
    for body, code_and_error in (
        ({"node_name": "WF.life.one", "runtime": "fluxbee.echo"}, (409, "NODE_ALREADY_EXISTS")),
        ({"node_name": "WF.x.y", "runtime": "no.such"}, (404, "RUNTIME_NOT_AVAILABLE")),
        ({"node_name": "WF.x.y", "runtime": "fluxbee.echo", "runtime_version": "9.9.9"},
         (404, "RUNTIME_NOT_AVAILABLE")),
        ({"node_name": "WF.x.y", "runtime": "fluxbee.echo", "config": {"_system": {}}}, (422, "INVALID_CONFIG")),
    ):
        code, doc = a.call("POST", "/hives/demo/nodes", body)
        assert (code, doc["error_code"]) == code_and_error, (body, doc)
    assert [n["spec"]["nodeName"] for n in objects(cp, ns, "fluxnodes", "fluxbee.io/created-by=admin-api")] == [
        "WF.life.one@demo"]
    for path, body in (("/messages", {"msg": "LLM", "payload": {"text": "hi"}}), ("/control/config-get", None)):
        code, doc = a.call("POST", "/hives/demo/nodes/WF.life.one" + path, body)
        assert (code, doc["error_code"]) == (503, "ROUTER_UNREACHABLE"), (path, doc)

    # Its config: the admin API patches the FluxNode, the operator renders the ConfigMap.
    (before,) = running_pods(cp, ns, f"fluxbee.io/fluxnode={resource}")
    changed = payload(a.call("PUT", "/hives/demo/nodes/WF.life.one/config?notify=false", {"b": 2}))
    assert changed["config_version"] == 2
    node = get(cp, ns, "fluxnode", resource)
    assert node is not None and node["spec"]["config"] == {"a": 1, "b": 2}

    def rendered() -> dict[str, Any] | None:
        cm = get(cp, ns, "configmap", f"{resource}-node-config")
        config = json.loads(cm["data"]["config.json"]) if cm else {}
        return config if config.get("b") == 2 else None

    config = setup.wait_for("the operator to render the new config", rendered)
    assert config["a"] == 1 and config["reply_prefix"] == "echo: " and config["tenant_id"] == TENANT

    # The Pod is replaced to run the new config (same name, new uid); until the new one runs, the
    # admin API may still see the old one RUNNING.
    setup.wait_for("the node's Pod replaced to run the new config", lambda: [
        p for p in running_pods(cp, ns, f"fluxbee.io/fluxnode={resource}")
        if p["metadata"]["uid"] != before["metadata"]["uid"]])
    setup.wait_for("the node RUNNING again", running)
    killed = payload(a.call("DELETE", "/hives/demo/nodes/WF.life.one", {"purge_instance": True}))
    assert killed["was_running"] is True and killed["instance_purged"] is True
    setup.wait_for("the FluxNode, its Pod and ConfigMap gone", lambda: get(cp, ns, "fluxnode", resource) is None
                   and objects(cp, ns, "pods", f"fluxbee.io/fluxnode={resource}") == []
                   and get(cp, ns, "configmap", f"{resource}-node-config") is None)
    code, doc = a.call("GET", "/hives/demo/nodes/WF.life.one/status")
    assert (code, doc["error_code"]) == (404, "NODE_NOT_FOUND")
    history = payload(a.call("GET", "/hives/demo/deployments?limit=20&category=node"))["entries"]
    assert {"run_node", "kill_node"} <= {e["action"] for e in history}


def test_a_fluxnode_applied_with_kubectl_is_listed_but_not_changed_by_the_admin_api(setup: Setup) -> None:
    cp, ns, a = setup.cp, setup.ns, setup.admin
    apply(cp, ns, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "gitops"},
                   "spec": {"hive": "demo", "nodeName": "WF.gitops", "runtime": "fluxbee.echo"}})

    def listed() -> dict[str, Any] | None:
        nodes = payload(a.call("GET", "/hives/demo/nodes"))["nodes"]
        found = [n for n in nodes if n["name"] == "WF.gitops@demo"]
        return found[0] if found and found[0]["lifecycle_state"] == "RUNNING" else None

    assert setup.wait_for("the kubectl-applied node RUNNING in the admin API", listed)["managed"] is False
    code, doc = a.call("PUT", "/hives/demo/nodes/WF.gitops/config", {"x": 1})
    assert (code, doc["error_code"]) == (409, "NODE_NOT_MANAGED")
    code, doc = a.call("DELETE", "/hives/demo/nodes/WF.gitops")
    assert (code, doc["error_code"]) == (409, "NODE_NOT_MANAGED")
    assert get(cp, ns, "fluxnode", "gitops") is not None


def test_routes_and_vpns_set_through_the_admin_api_reach_the_hive_and_its_config_map(setup: Setup) -> None:
    cp, ns, a = setup.cp, setup.ns, setup.admin
    payload(a.call("POST", "/hives/demo/routes", {"prefix": "AI.sales.", "action": "DROP"}))
    assert a.call("POST", "/hives/demo/routes", {"prefix": "AI.sales.", "action": "DROP"})[0] == 409
    payload(a.call("POST", "/hives/demo/vpns", {"pattern": "WF.q", "vpn_id": 3}))
    hive = get(cp, ns, "hive", "demo")
    assert hive is not None
    assert [r["prefix"] for r in hive["spec"]["routes"]] == ["AI.sales."]
    assert [(v["pattern"], v["vpnId"]) for v in hive["spec"]["vpns"]] == [("WF.q", 3)]
    assert [r["prefix"] for r in payload(a.call("GET", "/hives/demo/routes"))["routes"]] == ["AI.sales."]
    assert [v["vpn_id"] for v in payload(a.call("GET", "/hives/demo/vpns"))["vpns"]] == [3]

    def rolled() -> bool:
        cm = get(cp, ns, "configmap", "demo-hive-config")
        text = cm["data"]["hive.yaml"] if cm else ""
        return "AI.sales." in text and "vpn_id: 3" in text

    setup.wait_for("the operator to roll the hive ConfigMap", rolled)

    assert a.call("DELETE", "/hives/demo/routes/AI.sales.")[0] == 200
    assert a.call("DELETE", "/hives/demo/vpns/WF.q")[0] == 200
    assert a.call("DELETE", "/hives/demo/routes/AI.sales.")[0] == 404
    hive = get(cp, ns, "hive", "demo")
    assert hive is not None and hive["spec"]["routes"] == [] and hive["spec"]["vpns"] == []
    # The hive-less paths and the whole-table replacements, with their version check.
    payload(a.call("POST", "/routes", {"prefix": "AI.ops.", "action": "DROP"}))
    assert [r["prefix"] for r in (get(cp, ns, "hive", "demo") or {})["spec"]["routes"]] == ["AI.ops."]
    assert a.call("DELETE", "/routes?prefix=AI.ops.")[0] == 200
    payload(a.call("PUT", "/config/vpns", {"vpns": [{"pattern": "WF.echo", "match_kind": "PREFIX", "vpn_id": 20}]}))
    assert [v["vpn_id"] for v in payload(a.call("GET", "/vpns"))["vpns"]] == [20]
    assert [v["vpnId"] for v in (get(cp, ns, "hive", "demo") or {})["spec"]["vpns"]] == [20]
    payload(a.call("PUT", "/config/routes", {"routes": [], "vpns": [], "version": 1000}))
    code, doc = a.call("PUT", "/config/routes", {"routes": [], "version": 5})
    assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH")
    hive = get(cp, ns, "hive", "demo")
    assert hive is not None and hive["spec"]["routes"] == [] and hive["spec"]["vpns"] == []
    setup.wait_for("the routes gone from the hive ConfigMap",
                   lambda: "AI.sales." not in (get(cp, ns, "configmap", "demo-hive-config") or {})
                   .get("data", {}).get("hive.yaml", "AI.sales."))


def test_versions_runtimes_and_remote_hives_are_the_clusters_objects(setup: Setup) -> None:
    cp, ns, a = setup.cp, setup.ns, setup.admin

    def ready_runtime() -> dict[str, Any] | None:
        doc = payload(a.call("GET", "/hives/demo/versions"))
        rt = doc["hive"]["runtimes"]["runtimes"].get("fluxbee.echo")
        return rt if rt and rt["readiness"]["0.1.0"]["start_sh_executable"] else None

    rt = setup.wait_for("the Runtime Ready in the versions", ready_runtime)
    assert rt["current"] == "0.1.0" and rt["available"] == ["0.1.0"]
    assert payload(a.call("GET", "/versions"))["hives"][0]["hive_id"] == "demo"
    runtime = payload(a.call("GET", "/hives/demo/runtimes/fluxbee.echo"))
    assert runtime["materialization_summary"]["current_materialized"] is True
    code, doc = a.call("GET", "/hives/demo/runtimes/no.such")
    assert (code, doc["error_code"]) == (404, "RUNTIME_NOT_FOUND")

    # A remote hive is a Hive object of role worker; removing it deletes the object.
    added = payload(a.call("POST", "/hives", {"hive_id": "worker-220", "address": "192.168.8.220"}))
    assert added["bootstrap_mode"] == "hive_resource"
    worker = [h for h in objects(cp, ns, "hives") if h["metadata"]["name"] != "demo"]
    assert len(worker) == 1 and worker[0]["spec"]["role"] == "worker"
    assert {h["hive_id"] for h in payload(a.call("GET", "/hives"))["hives"]} == {"demo", "worker-220"}
    assert payload(a.call("GET", "/hives/worker-220"))["hive"]["address"] == "192.168.8.220"
    code, doc = a.call("POST", "/hives", {"hive_id": "worker-220", "address": "192.168.8.220"})
    assert (code, doc["error_code"]) == (409, "HIVE_EXISTS")
    assert a.call("POST", "/hives", {"hive_id": "bad id", "address": "x"})[0] == 400
    assert a.call("GET", "/hives/worker-220/nodes")[0] == 503  # another hive's nodes are its admin API's
    assert a.call("DELETE", "/hives/worker-220")[0] == 200
    setup.wait_for("the remote Hive object gone",
                   lambda: [h["metadata"]["name"] for h in objects(cp, ns, "hives")] == ["demo"])
    assert a.call("DELETE", "/hives/demo")[0] == 400  # not the hive it serves
    assert a.call("GET", "/hives/worker-220")[0] == 404


def test_bad_requests_get_their_error_codes_and_router_bound_reads_say_the_router_is_unreachable(
        setup: Setup) -> None:
    a = setup.admin
    assert a.call("GET", "/health") == (200, {"status": "ok"})
    actions = {x["action"] for x in payload(a.call("GET", "/admin/actions"))["actions"]}
    assert {"run_node", "list_ilks", "publish_module"} <= actions
    for path in ("/hives/demo/identity/ilks", "/modules"):
        code, doc = a.call("GET", path)
        assert (code, doc["error_code"]) == (503, "ROUTER_UNREACHABLE"), path
    for method, path, raw, status, error in (
        ("POST", "/hives/demo/nodes", b"{not json", 400, "INVALID_JSON"),
        ("POST", "/hives/demo/nodes", b"[1]", 400, "INVALID_REQUEST"),
        ("POST", "/hives/demo/nodes", b'{"node_name": 5, "runtime": "fluxbee.echo"}', 400, "INVALID_REQUEST"),
        ("POST", "/hives/demo/nodes", b'{"node_name": "WF.a.b", "runtime": "x", "bogus": 1}', 400, "INVALID_REQUEST"),
        ("GET", "/hives/demo/deployments?limit=abc", None, 400, "INVALID_REQUEST"),
        ("GET", "/no/such/path", None, 404, "NOT_FOUND"),
    ):
        code, doc = a.call(method, path, raw=raw)
        assert (code, doc["status"], doc["error_code"]) == (status, "error", error), (path, doc)


def test_a_replaced_pod_and_a_failing_node_are_recorded_as_drift(setup: Setup) -> None:
    cp, ns, a = setup.cp, setup.ns, setup.admin
    resource = payload(a.call("POST", "/hives/demo/nodes", {"node_name": "WF.drift.one", "runtime": "fluxbee.echo"}))[
        "unit"].removeprefix("fluxnode/")
    (pod,) = setup.wait_for("the node's Pod Running",
                            lambda: running_pods(cp, ns, f"fluxbee.io/fluxnode={resource}") or None)

    def alert(kind: str, node: str) -> bool:
        entries = payload(a.call("GET", f"/hives/demo/drift-alerts?kind={kind}"))["entries"]
        return any(e["detail"]["node_name"] == node for e in entries)

    apply(cp, ns, {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "broken"},
                   "spec": {"hive": "demo", "nodeName": "WF.broken", "runtime": "not.published"}})
    # Its alert comes from a check that began after the Pod above ran: that check saw the Pod.
    setup.wait_for("a node_failed drift alert", lambda: alert("node_failed", "WF.broken@demo"))
    status = payload(a.call("GET", "/hives/demo/nodes/WF.broken/status"))["node_status"]
    assert (status["lifecycle_state"], status["process"]["reason"]) == ("FAILED", "RuntimeNotFound")

    cp.kubectl("-n", ns, "delete", "pod", pod["metadata"]["name"], "--wait=false")  # the operator brings a new one
    setup.wait_for("a node_replaced drift alert", lambda: alert("node_replaced", "WF.drift.one@demo"))


def test_off_loopback_the_admin_command_refuses_to_start_without_a_bearer_token(
        setup: Setup, tmp_path: Path) -> None:
    env = dict(setup.admin.process.env)
    refused = subprocess.run([str(Path(sys.executable).parent / "fluxbee"), "admin", "--backend", "kubernetes",
                              "--listen", f"0.0.0.0:{free_port()}", "--hive", "demo"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "bearer token is required" in refused.stderr, refused.stderr


@dataclass
class Routed:
    """A second admin API of the same hive whose socket directory holds a running router."""

    admin: AdminApi
    run_dir: Path

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # off the event loop: the stand-in nodes answer on it while the admin API waits for them
        return await asyncio.to_thread(self.admin.call, method, path, body)

    async def eventually(self, what: str, probe: Any, timeout: float = 20.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.admin.process.check_alive()
            got = await probe()
            if got is not None and got is not False:
                return got
            await asyncio.sleep(0.2)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
async def routed(setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Routed]:
    run_dir = Path(tempfile.mkdtemp(prefix="fbr", dir="/tmp"))  # short: socket paths have a length limit
    router = RouterProc(run_dir, hive_id="demo")
    # SY.* names are claimed on the router: the admin API and the stand-in SY.identity prove them
    # with the test token the router's claims name (the contract `fluxbee up` and the operator use).
    monkeypatch.setenv(CREDENTIAL_FILE_ENV, str(router.credential_file))
    admin = None
    try:
        admin = await asyncio.to_thread(start_admin, setup.cp, setup.release, "demo", tmp_path, run_dir,
                                        router.credential_file)
        r = Routed(admin, run_dir)

        async def connected() -> bool:
            return bool((await r.call("GET", "/hive/status"))[1]["payload"]["router_connected"])

        await r.eventually("the admin API to connect to the router", connected)
        yield r
    finally:
        try:
            if admin is not None:
                admin.process.stop()
        finally:
            assert router.stop() == 0
            shutil.rmtree(run_dir, ignore_errors=True)


async def test_with_a_router_in_its_socket_directory_messages_and_control_go_through_it(routed: Routed) -> None:
    r = routed
    seen: list[wire.Message] = []
    holder: list[Any] = []

    def answer(msg: wire.Message) -> None:
        seen.append(msg)
        if msg.meta.msg == wire.CONFIG_GET:
            holder[0].reply_nowait(msg, {"status": "ok", "seen": "CONFIG_GET"}, msg=wire.CONFIG_RESPONSE)

    probe, _ = await connect(NodeConfig(name="WF.probe", run_dir=r.run_dir, reconnect=False, on_message=answer,
                                        handle_config=False))
    holder.append(probe)
    try:
        code, doc = await r.call("POST", "/hives/demo/nodes/WF.probe/messages", {"msg": "LLM",
                                                                                 "payload": {"text": "hi"}})
        assert code == 200 and wire.is_uuid(doc["payload"]["trace_id"]), doc

        async def delivered() -> bool:
            return any(m.payload == {"text": "hi"} for m in seen)

        await r.eventually("the message", delivered)
        code, doc = await r.call("POST", "/hives/demo/nodes/WF.probe/control/config-get")
        assert code == 200 and doc["payload"]["response"]["seen"] == "CONFIG_GET", doc

        async def listed() -> dict[str, Any] | None:  # the router's status is shared for 0.1 s
            doc = (await r.call("GET", "/hives/demo/nodes"))[1]["payload"]
            return doc if "WF.probe@demo" in {n["name"] for n in doc["nodes"]} else None

        assert (await r.eventually("WF.probe in the node list", listed))["inventory_source"] == "router"
        code, doc = await r.call("GET", "/hives/demo/identity/ilks")  # no SY.identity on this router
        assert (code, doc["error_code"]) == (503, "IDENTITY_UNAVAILABLE")
    finally:
        await probe.close()


async def test_with_sy_identity_on_the_router_a_spawn_registers_the_ilk_and_the_operator_renders_it(
        setup: Setup, routed: Routed) -> None:
    """A stand-in SY.identity: the spawn registers the node's ILK (creating the unknown tenant first),
    the FluxNode carries it, the real operator renders it into ``_system.ilk_id``; a refusal creates
    no FluxNode."""
    cp, ns, r = setup.cp, setup.ns, routed
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

    identity, _ = await connect(NodeConfig(name="SY.identity", run_dir=r.run_dir, reconnect=False,
                                           on_message=answer, handle_config=False))
    holder.append(identity)
    try:
        code, doc = await r.call("POST", "/hives/demo/nodes", {"node_name": "AI.k8s.agent",
                                                               "runtime": "fluxbee.echo", "tenant_id": TENANT})
        assert code == 200, doc
        register = doc["payload"]["identity"]["register"]
        ilk = register["ilk_id"]
        assert register == {"status": "ok", "ilk_id": ilk, "ilk_type": "agent", "target": "SY.identity@demo",
                            "tenant_id": TENANT, "created": True, "tenant_created": True}
        assert [m for m, _ in asked] == ["ILK_REGISTER", "TNT_CREATE", "ILK_REGISTER"]
        assert asked[2][1]["identification"] == {"display_name": "AI.k8s.agent@demo",
                                                 "node_name": "AI.k8s.agent@demo", "runtime": "fluxbee.echo",
                                                 "runtime_version": "0.1.0"}
        resource = doc["payload"]["unit"].removeprefix("fluxnode/")
        node = await asyncio.to_thread(get, cp, ns, "fluxnode", resource)
        assert node is not None and node["spec"]["agentIlk"] == ilk

        async def rendered() -> dict[str, Any] | None:
            cm = await asyncio.to_thread(get, cp, ns, "configmap", f"{resource}-node-config")
            config = json.loads(cm["data"]["config.json"]) if cm else {}
            return config if config.get("_system", {}).get("ilk_id") == ilk else None

        config = await r.eventually("the operator to render the ILK into the node's config", rendered)
        assert config["_system"]["tenant_id"] == TENANT
        code, doc = await r.call("GET", "/hives/demo/nodes/AI.k8s.agent/status")
        assert doc["payload"]["node_status"]["identity"] == {"ilk_id": ilk, "tenant_id": TENANT}

        code, doc = await r.call("POST", "/hives/demo/nodes", {"node_name": "WF.k8s.refused",
                                                               "runtime": "fluxbee.echo", "tenant_id": pending})
        assert (code, doc["error_code"]) == (409, "IDENTITY_REGISTER_FAILED"), doc
        assert doc["payload"]["identity"]["register"]["error_code"] == "TENANT_PENDING"
        nodes = await asyncio.to_thread(objects, cp, ns, "fluxnodes")
        assert "WF.k8s.refused@demo" not in {n["spec"]["nodeName"] for n in nodes}
        # …and the spawned agent is killed through this admin API too (its FluxNode goes).
        assert (await r.call("DELETE", "/hives/demo/nodes/AI.k8s.agent"))[0] == 200

        async def gone() -> bool:
            return await asyncio.to_thread(get, cp, ns, "fluxnode", resource) is None

        await r.eventually("the agent's FluxNode gone", gone)
    finally:
        await identity.close()
