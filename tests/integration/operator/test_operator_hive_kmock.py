"""Hive → DaemonSet, ConfigMap, Services, against the real kopf operator and the emulator."""

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
    router, admin = pod["containers"]
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
    assert admin["command"] == [
        "fluxbee", "admin", "--listen", "0.0.0.0:8080", "--backend", "kubernetes"
    ]
    selector = ds["spec"]["selector"]["matchLabels"]
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
    assert gateway["spec"]["selector"] == selector == admin_svc["spec"]["selector"]
    assert gateway["spec"]["ports"][0]["port"] == 9000
    assert admin_svc["spec"]["ports"][0]["targetPort"] == "admin"
    assert await _get(cluster, "secrets", "demo-admin-token") is not None

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
