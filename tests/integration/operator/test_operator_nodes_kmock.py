"""FluxNode → Pods and config; drift repair; deletion; invalid specs; operator restart."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from operator_kmock_support import IMAGE, NS, Cluster, OperatorHandle, eventually

from fluxbee.operator import labels as L

HIVE: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1",
    "kind": "Hive",
    "metadata": {"name": "demo", "namespace": NS},
    "spec": {"nodeSelector": {"fluxbee.io/hive": "true"}},
}
RUNTIME: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1",
    "kind": "Runtime",
    "metadata": {"name": "fluxbee.echo", "namespace": NS},
    "spec": {
        "version": "0.1.0",
        "command": ["fluxbee", "node", "echo"],
        "configTemplate": {"reply_prefix": "echo: ", "timeout_s": 5},
    },
}


def fluxnode(name: str = "echo", replicas: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fluxbee.io/v1alpha1",
        "kind": "FluxNode",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "hive": "demo",
            "nodeName": "AI.echo.a",
            "runtime": "fluxbee.echo",
            "replicas": replicas,
            "config": {"reply_prefix": "a: "},
            "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}},
            **spec,
        },
    }


async def pods_of(cluster: Cluster, name: str = "echo") -> list[dict[str, Any]]:
    pods = await cluster.api.list("pods", NS, {L.FLUXNODE: name})
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def n_pods(cluster: Cluster, n: int, name: str = "echo") -> Any:
    async def probe() -> list[dict[str, Any]] | None:
        pods = await pods_of(cluster, name)
        return pods if len(pods) == n else None

    return eventually(probe, what=f"{n} pods of {name}")


def status_where(cluster: Cluster, plural: str, name: str, **expected: Any) -> Any:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.api.get(plural, NS, name)
        status = (obj or {}).get("status") or {}
        return status if all(status.get(k) == v for k, v in expected.items()) else None

    return eventually(probe, what=f"{plural}/{name} status {expected}")


def degraded(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Degraded")


async def setup_hive(cluster: Cluster) -> None:
    await cluster.api.create("hives", NS, HIVE)
    await cluster.api.create("runtimes", NS, RUNTIME)


async def test_fluxnode_becomes_pods_with_mounts_config_and_placement(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode())

    pods = await n_pods(cluster, 3)
    assert [p["metadata"]["name"] for p in pods] == ["echo-0", "echo-1", "echo-2"]
    spec = pods[0]["spec"]
    assert spec["hostIPC"] is True
    assert spec["nodeSelector"] == {"fluxbee.io/hive": "true"}
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["labelSelector"]["matchLabels"] == {L.HIVE: "demo", L.COMPONENT: "hive"}
    assert affinity[0]["topologyKey"] == "kubernetes.io/hostname"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["sockets"]["hostPath"]["path"] == f"/var/run/fluxbee/{NS}/demo"  # the hive's own dir
    assert volumes["node-config"]["configMap"]["name"] == "echo-node-config"
    (container,) = spec["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["fluxbee", "node", "echo"]
    assert container["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLUXBEE_NODE_CONFIG"] == "/etc/fluxbee/node/config.json"
    assert env["FLUXBEE_RUN_DIR"] == "/var/run/fluxbee"
    assert env["FLUXBEE_NODE_NAME"] == "AI.echo.a@demo"
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "FluxNode"

    cm = await cluster.api.get("configmaps", NS, "echo-node-config")
    assert cm is not None
    config = json.loads(cm["data"]["config.json"])
    assert config["reply_prefix"] == "a: " and config["timeout_s"] == 5  # override + template
    system = config["_system"]
    assert system["node_name"] == "AI.echo.a@demo" and system["hive_id"] == "demo"
    assert system["runtime"] == "fluxbee.echo" and system["runtime_version"] == "0.1.0"

    status = await status_where(cluster, "fluxnodes", "echo", observedGeneration=1, replicas=3)
    assert status["phase"] == "Reconciling" and status["readyReplicas"] == 0

    # The kubelet reports the Pods ready: the node is Ready.
    for pod in pods:
        await cluster.api.patch(
            "pods", NS, pod["metadata"]["name"],
            {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            subresource="status",
        )
    status = await status_where(cluster, "fluxnodes", "echo", phase="Ready")
    assert status["readyReplicas"] == 3


async def test_spec_change_updates_children_and_observed_generation(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode(replicas=2))
    old = await n_pods(cluster, 2)
    await status_where(cluster, "fluxnodes", "echo", observedGeneration=1)

    await cluster.api.patch("fluxnodes", NS, "echo",
                            {"spec": {"replicas": 3, "config": {"reply_prefix": "b: "}}})

    async def replaced() -> list[dict[str, Any]] | None:
        pods = await pods_of(cluster)
        fresh = [p for p in pods if p["metadata"]["uid"] not in {o["metadata"]["uid"] for o in old}]
        return pods if len(pods) == 3 and len(fresh) == 3 else None

    await eventually(replaced, what="3 pods with the new config")
    cm = await cluster.api.get("configmaps", NS, "echo-node-config")
    assert cm is not None and json.loads(cm["data"]["config.json"])["reply_prefix"] == "b: "
    await status_where(cluster, "fluxnodes", "echo", observedGeneration=2, replicas=3)

    # Scale down: the extra Pod goes away, the others stay.
    await cluster.api.patch("fluxnodes", NS, "echo", {"spec": {"replicas": 1}})
    pods = await n_pods(cluster, 1)
    assert pods[0]["metadata"]["name"] == "echo-0"

    # Hive routes change: ConfigMap updated in place, DaemonSet (pod template) untouched.
    ds_before = await cluster.api.get("daemonsets", NS, "demo-hive")
    await cluster.api.patch("hives", NS, "demo", {"spec": {"vpns": [
        {"pattern": "WF.", "vpnId": 3}
    ]}})

    async def config_updated() -> dict[str, Any] | None:
        cm = await cluster.api.get("configmaps", NS, "demo-hive-config")
        return cm if cm and "vpn_id: 3" in cm["data"]["hive.yaml"] else None

    await eventually(config_updated, what="hive ConfigMap with the VPN")
    await status_where(cluster, "hives", "demo", observedGeneration=2)
    ds_after = await cluster.api.get("daemonsets", NS, "demo-hive")
    assert ds_before and ds_after
    assert ds_after["spec"]["template"] == ds_before["spec"]["template"]


async def test_deleted_or_edited_children_are_put_back(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode(replicas=2))
    pods = await n_pods(cluster, 2)
    ds = await eventually(lambda: cluster.api.get("daemonsets", NS, "demo-hive"), what="DS")

    await cluster.api.delete("pods", NS, "echo-1")

    async def pod_back() -> dict[str, Any] | None:
        pod = await cluster.api.get("pods", NS, "echo-1")
        return pod if pod and pod["metadata"]["uid"] != pods[1]["metadata"]["uid"] else None

    await eventually(pod_back, what="echo-1 recreated")

    await cluster.api.delete("daemonsets", NS, "demo-hive")

    async def ds_back() -> dict[str, Any] | None:
        got = await cluster.api.get("daemonsets", NS, "demo-hive")
        return got if got and got["metadata"]["uid"] != ds["metadata"]["uid"] else None

    await eventually(ds_back, what="DaemonSet recreated")

    await cluster.api.patch("configmaps", NS, "demo-hive-config",
                            {"data": {"hive.yaml": "hive_id: hacked\n"}})

    async def cm_repaired() -> dict[str, Any] | None:
        cm = await cluster.api.get("configmaps", NS, "demo-hive-config")
        return cm if cm and "hive_id: demo" in cm["data"]["hive.yaml"] else None

    await eventually(cm_repaired, what="hand-edited ConfigMap repaired")

    await cluster.api.delete("services", NS, "demo-admin")
    await eventually(lambda: cluster.api.get("services", NS, "demo-admin"), what="Service back")


async def test_deleting_a_hive_cleans_up_and_stops_its_nodes(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode(replicas=2))
    await n_pods(cluster, 2)
    await eventually(lambda: cluster.api.get("services", NS, "demo-gateway"), what="gateway")

    await cluster.api.delete("hives", NS, "demo")

    async def gone() -> bool:
        left = [
            await cluster.api.get(plural, NS, name)
            for plural, name in (
                ("hives", "demo"),
                ("daemonsets", "demo-hive"),
                ("configmaps", "demo-hive-config"),
                ("services", "demo-gateway"),
                ("services", "demo-admin"),
                ("secrets", "demo-admin-token"),
            )
        ]
        return all(x is None for x in left)

    await eventually(gone, what="hive and its children deleted")
    await n_pods(cluster, 0)
    status = await status_where(cluster, "fluxnodes", "echo", phase="Degraded")
    assert degraded(status)["reason"] == "HiveNotFound"

    # The hive comes back: its nodes start again.
    await cluster.api.create("hives", NS, HIVE)
    await n_pods(cluster, 2)

    # Deleting the FluxNode removes its Pods and ConfigMap (finalizer), not only by GC.
    await cluster.api.delete("fluxnodes", NS, "echo")
    await n_pods(cluster, 0)

    async def cm_gone() -> bool:
        return await cluster.api.get("configmaps", NS, "echo-node-config") is None

    await eventually(cm_gone, what="node ConfigMap deleted")


async def test_invalid_specs_end_degraded_with_a_reason_not_a_retry_loop(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    # What the API server's CEL rules would refuse still must not wedge the operator.
    await cluster.api.create("fluxnodes", NS, fluxnode("bad-name", nodeName="echo.a"))
    await cluster.api.create("fluxnodes", NS, fluxnode("no-runtime", runtime="ai.missing"))
    await cluster.api.create("fluxnodes", NS, fluxnode("bad-version", runtimeVersion="9.9.9"))
    bad_runtime = copy.deepcopy(RUNTIME)
    bad_runtime["metadata"]["name"] = "ai.broken"
    bad_runtime["spec"] = {"version": "1.0.0", "type": "config_only"}
    await cluster.api.create("runtimes", NS, bad_runtime)
    await cluster.api.create("fluxnodes", NS, fluxnode("on-broken", runtime="ai.broken"))

    for name, reason in (
        ("bad-name", "InvalidSpec"),
        ("no-runtime", "RuntimeNotFound"),
        ("bad-version", "RuntimeVersionNotAvailable"),
        ("on-broken", "RuntimeNotReady"),
    ):
        status = await status_where(cluster, "fluxnodes", name, phase="Degraded")
        assert degraded(status)["reason"] == reason, (name, status)
        assert degraded(status)["status"] == "True" and degraded(status)["message"]
        assert await pods_of(cluster, name) == []

    status = await status_where(cluster, "runtimes", "ai.broken", phase="Degraded")
    assert degraded(status)["reason"] == "InvalidPackage"
    assert "needs a runtimeBase" in degraded(status)["message"]

    # Not a retry loop: the invalid node's status is written once and then left alone.
    before = await cluster.api.get("fluxnodes", NS, "bad-name")
    patches_before = len(cluster.emulator.objects[
        next(k for k in cluster.emulator.objects if k[1:] == (NS, "bad-name"))
    ].history)
    await asyncio.sleep(1.0)
    after = await cluster.api.get("fluxnodes", NS, "bad-name")
    patches_after = len(cluster.emulator.objects[
        next(k for k in cluster.emulator.objects if k[1:] == (NS, "bad-name"))
    ].history)
    assert before and after
    assert before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    assert patches_after == patches_before

    # The missing runtime appears: the waiting node starts without being touched.
    missing = copy.deepcopy(RUNTIME)
    missing["metadata"]["name"] = "ai.missing"
    await cluster.api.create("runtimes", NS, missing)
    await n_pods(cluster, 3, "no-runtime")


async def test_operator_restart_creates_no_duplicate_children(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode(replicas=3))
    pods = await n_pods(cluster, 3)
    await status_where(cluster, "fluxnodes", "echo", observedGeneration=1)

    await operator.stop()
    # Wipe the status while it is down: the resume pass after the restart must write it again.
    await cluster.api.patch("fluxnodes", NS, "echo", {"status": None}, subresource="status")
    await cluster.api.patch("fluxnodes", NS, "echo", {"status": {"phase": "Pending"}},
                            subresource="status")
    await operator.start()
    await status_where(cluster, "fluxnodes", "echo", observedGeneration=1, replicas=3)
    after = await pods_of(cluster)
    assert [p["metadata"]["uid"] for p in after] == [p["metadata"]["uid"] for p in pods]
    assert len(await cluster.api.list("daemonsets", NS)) == 1
    assert len(await cluster.api.list("deployments", NS)) == 1  # the admin API
    assert len(await cluster.api.list("services", NS)) == 2
    assert len(await cluster.api.list("configmaps", NS)) == 4  # hive config, claims, admin history, node config
    assert len(await cluster.api.list("secrets", NS)) == 3  # admin token, system credentials, node credential

    # …and it still repairs: it is running, not just idle.
    await cluster.api.delete("pods", NS, "echo-0")
    await n_pods(cluster, 3)


async def test_a_config_change_bumps_the_system_config_version(cluster: Cluster, operator: OperatorHandle) -> None:
    await setup_hive(cluster)
    await cluster.api.create("fluxnodes", NS, fluxnode("cfg", replicas=1, config={"temperature": 0.1}))

    async def stored() -> dict[str, Any] | None:
        cm = await cluster.api.get("configmaps", NS, "cfg-node-config")
        return json.loads(cm["data"]["config.json"]) if cm else None

    first = await eventually(stored, what="the node ConfigMap")
    assert first["_system"]["config_version"] == 1
    await cluster.api.patch("fluxnodes", NS, "cfg", {"spec": {"config": {"temperature": 0.9}}})

    async def changed() -> dict[str, Any] | None:
        config = await stored()
        return config if config and config.get("temperature") == 0.9 else None

    second = await eventually(changed, what="the new config")
    assert second["_system"]["config_version"] == 2
    assert second["_system"]["created_at_ms"] == first["_system"]["created_at_ms"]
