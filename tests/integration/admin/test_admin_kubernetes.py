"""The admin API on the Kubernetes backend with a router in its socket directory (emulated API).

Spawn, status, config, kill, routes, VPNs, versions, remote hives, bad input, drift and the
``fluxbee admin`` command run against the real control plane, as a subprocess logged in as the
chart's ServiceAccount (tests/integration/cluster/test_admin_real.py).  What stays here needs a
router the admin API reaches through the hive's socket directory, with stand-in nodes answering
on it (SY.identity registering ILKs): the admin API runs in-process so that the router, the
stand-ins and the admin API share one run directory; the Kubernetes side is incidental.
The emulator and operator fixtures are the operator tests' own (``tests/integration/operator``),
loaded here under another module name."""

from __future__ import annotations

import importlib.util
import json
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
from hive_harness import RouterProc

from fluxbee.admin import cluster as cluster_mod
from fluxbee.admin.cluster import ClusterSettings, cluster_admin
from fluxbee.admin.http import AdminSettings
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
    settings = ClusterSettings(namespace=NS, hive_resource="demo", run_dir=run_dir, state_dir=run_dir / "history",
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
