"""Hive → DaemonSet, ConfigMap, Services, admin Deployment, against the real kopf operator and the emulator."""

from __future__ import annotations

from typing import Any

import yaml
from operator_kmock_support import IMAGE, NS, Cluster, OperatorHandle, eventually

HIVE: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1",
    "kind": "Hive",
    "metadata": {"name": "demo", "namespace": NS},
    "spec": {
        "nodeSelector": {"fluxbee.io/hive": "true"},
        "routes": [{"prefix": "AI.sales.", "action": "FORWARD", "nextHopHive": "sales"}],
    },
}


async def _get(cluster: Cluster, plural: str, name: str) -> dict[str, Any] | None:
    return await cluster.api.get(plural, NS, name)


async def test_hive_becomes_daemonset_configmap_and_services(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await cluster.api.create("hives", NS, HIVE)

    ds = await eventually(lambda: _get(cluster, "daemonsets", "demo-hive"), what="DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostIPC"] is True
    assert pod["nodeSelector"] == {"fluxbee.io/hive": "true"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # one host directory per hive (two hives on a host must not share sockets)
    assert volumes["sockets"]["hostPath"] == {"path": f"/var/run/fluxbee/{NS}/demo", "type": "DirectoryOrCreate"}
    assert volumes["hive-config"]["configMap"]["name"] == "demo-hive-config"
    (router,) = pod["containers"]  # the admin API is its own Deployment
    assert router["image"] == IMAGE
    assert router["command"][:2] == ["fluxbee", "router"]
    assert "--config" in router["command"] and "0.0.0.0:9090" in router["command"]
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {m["mountPath"] for m in router["volumeMounts"]} == {
        "/var/run/fluxbee", "/etc/fluxbee/hive", "/etc/fluxbee/claims"
    }
    assert volumes["claims"]["configMap"]["name"] == "demo-claims"
    flag = router["command"].index("--claims-dir")
    assert router["command"][flag + 1] == "/etc/fluxbee/claims"
    admin_deployment = await eventually(lambda: _get(cluster, "deployments", "demo-admin"), what="admin")
    admin_pod = admin_deployment["spec"]["template"]["spec"]
    (admin,) = admin_pod["containers"]
    assert admin["command"] == [
        "fluxbee", "admin", "--listen", "0.0.0.0:8080", "--backend", "kubernetes"
    ]
    assert admin_deployment["spec"]["replicas"] == 1 and admin_pod["hostIPC"] is True
    assert admin_pod["nodeSelector"] == {"fluxbee.io/hive": "true"}
    selector = ds["spec"]["selector"]["matchLabels"]
    affinity = admin_pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["labelSelector"]["matchLabels"] == selector
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    owner = ds["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Hive", "demo", True)

    cm = await eventually(lambda: _get(cluster, "configmaps", "demo-hive-config"), what="ConfigMap")
    config = yaml.safe_load(cm["data"]["hive.yaml"])
    assert config["hive_id"] == "demo" and config["router_name"] == "RT.gateway"
    assert config["routes"][0]["prefix"] == "AI.sales."
    assert config["routes"][0]["next_hop_hive"] == "sales"

    gateway = await eventually(lambda: _get(cluster, "services", "demo-gateway"), what="gateway")
    admin_svc = await eventually(lambda: _get(cluster, "services", "demo-admin"), what="admin svc")
    assert gateway["spec"]["selector"] == selector
    assert admin_svc["spec"]["selector"] == admin_deployment["spec"]["selector"]["matchLabels"] != selector
    assert gateway["spec"]["ports"][0]["port"] == 9000
    assert admin_svc["spec"]["ports"][0]["targetPort"] == "admin"
    assert await _get(cluster, "secrets", "demo-admin-token") is not None
    history = await eventually(lambda: _get(cluster, "configmaps", "demo-admin-history"), what="history")
    assert "app.kubernetes.io/managed-by" not in history["metadata"]["labels"]  # its writes wake no reconcile
    assert history["metadata"]["ownerReferences"][0]["name"] == "demo"

    async def reconciling() -> dict[str, Any] | None:
        hive = await _get(cluster, "hives", "demo")
        status = (hive or {}).get("status") or {}
        return status if status.get("observedGeneration") == 1 else None

    status = await eventually(reconciling, what="Hive status")
    assert status["phase"] == "Reconciling"  # no DaemonSet controller here: no pods yet
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Reconciling", "Degraded"}

    # The DaemonSet controller reports its pods: the hive becomes Ready.
    await cluster.api.patch(
        "daemonsets", NS, "demo-hive",
        {"status": {"desiredNumberScheduled": 2, "numberReady": 2}}, subresource="status",
    )

    async def ready() -> dict[str, Any] | None:
        hive = await _get(cluster, "hives", "demo")
        status = (hive or {}).get("status") or {}
        return status if status.get("phase") == "Ready" else None

    status = await eventually(ready, what="Hive Ready")
    assert (status["desiredPods"], status["readyPods"]) == (2, 2)


async def test_the_admin_deployment_is_repaired_scaled_removed_with_the_admin_api_and_on_hive_deletion(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    """What the emulator shows and a real cluster hides: without the garbage collector (off here),
    the operator itself deletes the admin Deployment with the Hive."""
    await cluster.api.create("hives", NS, HIVE)
    await eventually(lambda: _get(cluster, "deployments", "demo-admin"), 30, what="admin Deployment")
    await cluster.api.delete("deployments", NS, "demo-admin")

    async def replicas(n: int) -> dict[str, Any] | None:
        d = await _get(cluster, "deployments", "demo-admin")
        return d if d is not None and d["spec"]["replicas"] == n else None

    await eventually(lambda: replicas(1), 30, what="the deleted admin Deployment back")
    await cluster.api.patch("hives", NS, "demo", {"spec": {"admin": {"replicas": 3}}})
    await eventually(lambda: replicas(3), 30, what="3 admin replicas")

    await cluster.api.patch("hives", NS, "demo", {"spec": {"admin": {"enabled": False}}})

    async def admin_gone() -> bool | None:
        gone = (await _get(cluster, "deployments", "demo-admin") is None
                and await _get(cluster, "services", "demo-admin") is None)
        return True if gone else None

    await eventually(admin_gone, 30, what="no admin Deployment nor Service")
    await cluster.api.patch("hives", NS, "demo", {"spec": {"admin": {"enabled": True}}})
    await eventually(lambda: replicas(3), 30, what="the admin Deployment again")
    await cluster.api.delete("hives", NS, "demo")

    async def all_gone() -> bool | None:
        left = [await _get(cluster, "deployments", "demo-admin"), await _get(cluster, "daemonsets", "demo-hive"),
                await _get(cluster, "hives", "demo")]
        return True if left == [None, None, None] else None

    await eventually(all_gone, 30, what="the Hive and its admin Deployment gone")
