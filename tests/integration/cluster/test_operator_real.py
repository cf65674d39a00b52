"""``fluxbee operator`` on the real control plane, logged in as the chart's ServiceAccount.

Each test installs charts/fluxbee with the real helm CLI into its own namespace and runs the
operator as a user would (``fluxbee operator --namespace NS``, a kubeconfig holding only a token
of the chart's operator ServiceAccount): the API server's RBAC, schema and CEL validation, the
scheduler, the DaemonSet controller, the garbage collector and kwok's kubelets are the real ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane, wait_for
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from operator_support import (
    FluxbeeProcess,
    Release,
    apply,
    condition,
    get,
    install_chart,
    objects,
    reconciled,
    running_pods,
    start_operator,
)

from fluxbee.identity import degrees as dg

HIVE_PODS = "fluxbee.io/hive=demo,app.kubernetes.io/component=hive"
FINALIZER = "fluxbee.io/cleanup"


def hive(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": "demo"},
            "spec": {"routes": [{"prefix": "AI.sales.", "action": "FORWARD", "nextHopHive": "sales"}], **spec}}


RUNTIME: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime", "metadata": {"name": "fluxbee.echo"},
    "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"], "configTemplate": {"reply_prefix": "echo: "}},
}


def fluxnode(name: str = "echo", replicas: int = 3, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": name},
            "spec": {"hive": "demo", "nodeName": "AI.echo.a", "runtime": "fluxbee.echo", "replicas": replicas,
                     "config": {"reply_prefix": "a: "}, **spec}}


def node_pods(cp: ControlPlane, ns: str, name: str = "echo") -> list[dict[str, Any]]:
    return objects(cp, ns, "pods", f"fluxbee.io/fluxnode={name}")


def n_running(op: FluxbeeProcess, cp: ControlPlane, ns: str, selector: str, n: int,
              what: str) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        pods = running_pods(cp, ns, selector)
        everything = objects(cp, ns, "pods", selector)
        return pods if len(pods) == n and len(everything) == n else None

    return op.wait_for(f"{n} Running {what}", probe, timeout=60)


def uids(items: list[dict[str, Any]]) -> dict[str, str]:
    return {i["metadata"]["name"]: i["metadata"]["uid"] for i in items}


def test_a_hive_and_a_fluxnode_become_running_pods_on_every_node_and_ready_at_their_generation(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, [hive(nodeSelector={"type": "kwok"}), RUNTIME,
                   fluxnode(replicas=3, resources={"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}})])

    # The real DaemonSet controller puts one hive pod on each of the 3 nodes; kwok runs them.
    hive_pods = n_running(operator, cp, ns, HIVE_PODS, 3, "hive pods")
    nodes = {n["metadata"]["name"] for n in cp.get_json("nodes")["items"]}
    assert {p["spec"]["nodeName"] for p in hive_pods} == nodes
    ds = get(cp, ns, "daemonset", "demo-hive")
    assert ds is not None
    owner = ds["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Hive", "demo", True)
    assert hive_pods[0]["metadata"]["ownerReferences"][0]["name"] == "demo-hive"  # the controller's, not ours
    template = ds["spec"]["template"]["spec"]
    assert template["hostIPC"] is True and template["nodeSelector"] == {"type": "kwok"}
    volumes = {v["name"]: v for v in template["volumes"]}
    # one host directory per hive (two hives on a host must not share sockets)
    assert volumes["sockets"]["hostPath"] == {"path": f"/var/run/fluxbee/{ns}/demo", "type": "DirectoryOrCreate"}
    assert volumes["hive-config"]["configMap"]["name"] == "demo-hive-config"
    assert volumes["claims"]["configMap"]["name"] == "demo-claims"
    router = next(c for c in template["containers"] if c["command"][:2] == ["fluxbee", "router"])
    assert router["command"][router["command"].index("--claims-dir") + 1] == "/etc/fluxbee/claims"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/var/run/fluxbee", "/etc/fluxbee/hive", "/etc/fluxbee/claims"} <= {
        m["mountPath"] for m in router["volumeMounts"]}
    config = get(cp, ns, "configmap", "demo-hive-config")
    assert config is not None and "AI.sales." in config["data"]["hive.yaml"]
    claims = get(cp, ns, "configmap", "demo-claims")
    assert claims is not None and claims["metadata"]["ownerReferences"][0]["name"] == "demo"
    # No spec.wan: no gateway (nothing would listen behind it), but the routers mesh.
    assert get(cp, ns, "service", "demo-gateway") is None
    mesh = get(cp, ns, "service", "demo-mesh")
    assert mesh is not None and mesh["spec"]["clusterIP"] == "None"

    status = operator.wait_for("the Hive Ready at generation 1", reconciled(cp, ns, "hive", "demo", "Ready"))["status"]
    assert (status["desiredPods"], status["readyPods"], status["observedGeneration"]) == (3, 3, 1)
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Ready", "True"), ("Reconciling", "False"), ("Degraded", "False")]

    # The FluxNode: 3 Pods the scheduler placed next to a hive pod, Running, and the node Ready.
    pods = n_running(operator, cp, ns, "fluxbee.io/fluxnode=echo", 3, "node pods")
    assert [p["metadata"]["name"] for p in pods] == ["echo-0", "echo-1", "echo-2"]
    assert {p["spec"]["nodeName"] for p in pods} <= nodes
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "FluxNode" for p in pods)
    spec = pods[0]["spec"]
    assert spec["hostIPC"] is True and spec["nodeSelector"] == {"type": "kwok"}
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert affinity["labelSelector"]["matchLabels"] == {"fluxbee.io/hive": "demo",
                                                        "app.kubernetes.io/component": "hive"}
    assert affinity["topologyKey"] == "kubernetes.io/hostname"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["sockets"]["hostPath"]["path"] == f"/var/run/fluxbee/{ns}/demo"  # the hive's own directory
    assert volumes["node-config"]["configMap"]["name"] == "echo-node-config"
    assert volumes["credential"]["secret"]["secretName"] == "echo-credential"
    (container,) = spec["containers"]
    assert container["command"] == ["fluxbee", "node", "echo"]
    # (the API server defaults a request to its limit: the memory request is its own)
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLUXBEE_NODE_NAME"] == "AI.echo.a@demo" and env["FLUXBEE_RUN_DIR"] == "/var/run/fluxbee"
    assert env["FLUXBEE_NODE_CONFIG"] == "/etc/fluxbee/node/config.json"
    node_config = get(cp, ns, "configmap", "echo-node-config")
    assert node_config is not None
    effective = json.loads(node_config["data"]["config.json"])
    assert effective["reply_prefix"] == "a: " and effective["_system"]["node_name"] == "AI.echo.a@demo"
    assert effective["_system"]["runtime_version"] == "0.1.0" and effective["_system"]["config_version"] == 1
    node = operator.wait_for("the FluxNode Ready", reconciled(cp, ns, "fluxnode", "echo", "Ready"))
    assert (node["status"]["replicas"], node["status"]["readyReplicas"]) == (3, 3)
    assert condition(node, "Ready")["observedGeneration"] == node["metadata"]["generation"] == 1
    assert condition(node, "Degraded")["status"] == "False"
    assert node["metadata"]["finalizers"] == [FINALIZER]
    # what kubectl users see (the CRD's printer columns filled by the status)
    row = cp.kubectl("-n", ns, "get", "fluxnode", "echo", "--no-headers").stdout.split()
    assert row[:7] == ["echo", "AI.echo.a", "demo", "fluxbee.echo", "0.1.0", "3", "3"] and "Ready" in row


def test_a_deleted_pod_comes_back_and_spec_changes_are_rolled_out(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, [hive(), RUNTIME, fluxnode(replicas=2)])
    old = n_running(operator, cp, ns, "fluxbee.io/fluxnode=echo", 2, "node pods")
    operator.wait_for("the FluxNode Ready", reconciled(cp, ns, "fluxnode", "echo", "Ready"))

    cp.kubectl("-n", ns, "delete", "pod", "echo-1", "--wait=false")

    def echo_1_back() -> bool:
        pods = uids(running_pods(cp, ns, "fluxbee.io/fluxnode=echo"))
        return "echo-1" in pods and pods["echo-1"] != old[1]["metadata"]["uid"]

    operator.wait_for("echo-1 recreated and Running", echo_1_back)

    # The hive's children are put back too: a deleted DaemonSet and Service, a hand-edited ConfigMap.
    ds = get(cp, ns, "daemonset", "demo-hive")
    assert ds is not None
    cp.kubectl("-n", ns, "delete", "daemonset", "demo-hive", "--wait=false")
    cp.kubectl("-n", ns, "delete", "service", "demo-mesh", "--wait=false")
    cp.kubectl("-n", ns, "patch", "configmap", "demo-hive-config", "--type=merge",
               "-p", '{"data": {"hive.yaml": "hive_id: hacked\\n"}}')
    operator.wait_for("the DaemonSet, Service and ConfigMap repaired", lambda: (
        (get(cp, ns, "daemonset", "demo-hive") or {"metadata": {"uid": ds["metadata"]["uid"]}})["metadata"]["uid"]
        != ds["metadata"]["uid"] and get(cp, ns, "service", "demo-mesh") is not None
        and "hive_id: demo" in (get(cp, ns, "configmap", "demo-hive-config") or {"data": {"hive.yaml": ""}})
        ["data"]["hive.yaml"]))
    hive_pods = n_running(operator, cp, ns, HIVE_PODS, 3, "hive pods of the new DaemonSet")

    # Routes and VPNs change the hive's ConfigMap in place: the pod template stays, no pod restarts.
    cp.kubectl("-n", ns, "patch", "hive", "demo", "--type=merge",
               "-p", '{"spec": {"vpns": [{"pattern": "WF.", "vpnId": 3}]}}')
    operator.wait_for("the hive ConfigMap with the VPN", lambda: "vpn_id: 3" in (
        get(cp, ns, "configmap", "demo-hive-config") or {"data": {"hive.yaml": ""}})["data"]["hive.yaml"])
    operator.wait_for("the Hive reconciled at generation 2", reconciled(cp, ns, "hive", "demo", "Ready"))
    assert uids(running_pods(cp, ns, HIVE_PODS)) == uids(hive_pods)

    # A config and replicas change: every Pod replaced (they run the new config), one more Pod.
    before = uids(objects(cp, ns, "pods", "fluxbee.io/fluxnode=echo"))
    cp.kubectl("-n", ns, "patch", "fluxnode", "echo", "--type=merge",
               "-p", json.dumps({"spec": {"replicas": 3, "config": {"reply_prefix": "b: "}}}))

    def replaced() -> bool:
        pods = uids(running_pods(cp, ns, "fluxbee.io/fluxnode=echo"))
        return len(pods) == 3 and not set(pods.values()) & set(before.values())

    operator.wait_for("3 Running Pods, all new", replaced)
    node_config = get(cp, ns, "configmap", "echo-node-config")
    assert node_config is not None
    stored = json.loads(node_config["data"]["config.json"])
    assert stored["reply_prefix"] == "b: " and stored["_system"]["config_version"] == 2
    node = operator.wait_for("the FluxNode Ready at generation 2", reconciled(cp, ns, "fluxnode", "echo", "Ready"))
    assert node["status"]["observedGeneration"] == 2 and node["status"]["readyReplicas"] == 3

    cp.kubectl("-n", ns, "patch", "fluxnode", "echo", "--type=merge", "-p", '{"spec": {"replicas": 1}}')
    assert [p["metadata"]["name"] for p in n_running(operator, cp, ns, "fluxbee.io/fluxnode=echo", 1,
                                                     "node pod")] == ["echo-0"]

    # A Hive change that reaches the pod template: the DaemonSet controller rolls the hive pods.
    n_running(operator, cp, ns, HIVE_PODS, 3, "hive pods")
    cp.kubectl("-n", ns, "patch", "hive", "demo", "--type=merge", "-p", '{"spec": {"image": "example.invalid/fb:2"}}')

    def rolled() -> bool:
        pods = running_pods(cp, ns, HIVE_PODS)
        return len(pods) == 3 and all(c["image"] == "example.invalid/fb:2" for p in pods
                                      for c in p["spec"]["containers"])

    operator.wait_for("3 hive pods with the new image", rolled)
    ds = get(cp, ns, "daemonset", "demo-hive")
    assert ds is not None and {c["image"] for c in ds["spec"]["template"]["spec"]["containers"]} == {
        "example.invalid/fb:2"}
    operator.wait_for("the Hive Ready at generation 3", reconciled(cp, ns, "hive", "demo", "Ready"))


def test_deleting_a_fluxnode_or_a_hive_removes_what_it_owns(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, [hive(), RUNTIME, fluxnode(replicas=2), fluxnode("other", replicas=1, nodeName="AI.other")])
    n_running(operator, cp, ns, "fluxbee.io/fluxnode=echo", 2, "node pods")
    n_running(operator, cp, ns, "fluxbee.io/fluxnode=other", 1, "node pod")
    hive_pods = n_running(operator, cp, ns, HIVE_PODS, 3, "hive pods")
    claims = get(cp, ns, "configmap", "demo-claims")
    assert claims is not None and {"AI.echo.a", "AI.other"} <= set(claims["data"])
    assert get(cp, ns, "secret", "echo-credential") is not None

    # The FluxNode: its Pods, ConfigMap, credential Secret and its claim go; the finalizer lets go.
    cp.kubectl("-n", ns, "delete", "fluxnode", "echo", "--wait=false")

    def node_gone() -> bool:
        claims = get(cp, ns, "configmap", "demo-claims") or {}
        return (get(cp, ns, "fluxnode", "echo") is None and node_pods(cp, ns) == []
                and get(cp, ns, "configmap", "echo-node-config") is None
                and get(cp, ns, "secret", "echo-credential") is None
                and "AI.echo.a" not in claims.get("data", {}))

    operator.wait_for("the FluxNode and its Pods, ConfigMap, Secret and claim gone", node_gone)
    claims = get(cp, ns, "configmap", "demo-claims")
    assert claims is not None and "AI.other" in claims["data"]  # the other node's claim stays

    # The Hive: its DaemonSet, ConfigMaps, Services and Secrets go; the garbage collector takes
    # the DaemonSet's pods (they are the controller's, owned by the DaemonSet); its node stops.
    hive_obj = get(cp, ns, "hive", "demo")
    # No finalizer on a Hive (what it makes is owned by it): an uninstalled operator cannot strand it.
    assert hive_obj is not None and not hive_obj["metadata"].get("finalizers")
    children = [(kind, c["metadata"]["name"]) for kind in ("daemonset", "configmap", "service", "secret")
                for c in objects(cp, ns, kind, "fluxbee.io/hive=demo,app.kubernetes.io/component=hive")]
    assert ("daemonset", "demo-hive") in children and ("configmap", "demo-claims") in children
    assert all(any(r["uid"] == hive_obj["metadata"]["uid"] for r in (get(cp, ns, kind, name) or {})
                   .get("metadata", {}).get("ownerReferences", [])) for kind, name in children)
    cp.kubectl("-n", ns, "delete", "hive", "demo", "--wait=false")

    def hive_gone() -> list[str] | None:  # what is left, for the failure message
        left = [f"{k}/{n}" for k, n in children if get(cp, ns, k, n) is not None]
        left += [p["metadata"]["name"] for p in objects(cp, ns, "pods", HIVE_PODS)]
        left += [p["metadata"]["name"] for p in node_pods(cp, ns, "other")]
        return None if left or get(cp, ns, "hive", "demo") is not None else left + ["nothing left"]

    operator.wait_for("the Hive, its children, its hive pods and its node's Pods gone", hive_gone)
    assert {p["metadata"]["uid"] for p in hive_pods}.isdisjoint(
        {p["metadata"]["uid"] for p in objects(cp, ns, "pods")})

    def other_degraded() -> dict[str, Any] | None:
        node = get(cp, ns, "fluxnode", "other")
        return node if node and (node.get("status") or {}).get("phase") == "Degraded" else None

    assert condition(operator.wait_for("the orphaned node Degraded", other_degraded),
                     "Degraded")["reason"] == "HiveNotFound"

    # The Hive comes back: its node starts again.
    apply(cp, ns, hive())
    n_running(operator, cp, ns, "fluxbee.io/fluxnode=other", 1, "node pod of the returned hive")


def test_a_restarted_operator_creates_no_duplicates_and_still_repairs(
        control_plane: ControlPlane, release: Release, namespace: str, tmp_path: Path) -> None:
    cp, ns = control_plane, namespace
    first = start_operator(cp, release, tmp_path, label="first")
    try:
        apply(cp, ns, [hive(), RUNTIME, fluxnode(replicas=3)])
        n_running(first, cp, ns, "fluxbee.io/fluxnode=echo", 3, "node pods")
        n_running(first, cp, ns, HIVE_PODS, 3, "hive pods")
        first.wait_for("the FluxNode Ready", reconciled(cp, ns, "fluxnode", "echo", "Ready"))
        first.wait_for("the Hive Ready", reconciled(cp, ns, "hive", "demo", "Ready"))
    finally:
        first.stop()
    kinds = ("pods", "daemonsets", "configmaps", "services", "secrets")
    before = {kind: uids(objects(cp, ns, kind)) for kind in kinds}
    # While it is down its status is wiped: the restarted operator must write it again.
    cp.kubectl("-n", ns, "patch", "fluxnode", "echo", "--subresource=status", "--type=merge",
               "-p", '{"status": {"phase": "Pending", "observedGeneration": 0}}')

    second = start_operator(cp, release, tmp_path, label="second")
    try:
        second.wait_for("the FluxNode Ready again", reconciled(cp, ns, "fluxnode", "echo", "Ready"))
        after = {kind: uids(objects(cp, ns, kind)) for kind in kinds}
        assert after == before
        cp.kubectl("-n", ns, "delete", "pod", "echo-0", "--wait=false")

        def repaired() -> bool:
            pods = uids(running_pods(cp, ns, "fluxbee.io/fluxnode=echo"))
            return len(pods) == 3 and pods.get("echo-0") not in (None, before["pods"]["echo-0"])

        second.wait_for("echo-0 recreated by the restarted operator", repaired)
    finally:
        second.stop()


def test_of_two_peered_operators_one_reconciles_and_the_other_takes_over_when_it_stops(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp, ns = control_plane, namespace
    release = install_chart(cp, ns, peers=2)
    peering = get(cp, ns, "kopfpeering", release.peering)
    assert peering is not None, "the chart installs the KopfPeering its replicas share"
    active = start_operator(cp, release, tmp_path, "--peering", release.peering, "--priority", "200", label="active")
    standby: FluxbeeProcess | None = None
    try:
        def peers(n: int) -> Callable[[], bool]:
            def probe() -> bool:
                obj = get(cp, ns, "kopfpeering", release.peering) or {}
                return len(obj.get("status") or {}) == n
            return probe

        # kopf starts paused and says when it resumes: the higher priority at once (alone in the
        # peering), the lower one never while the other keeps its entry alive.
        active.wait_for("the first operator in the KopfPeering's status", peers(1))
        active.wait_for("the first operator to resume", lambda: "Resuming operations" in active.output())
        standby = start_operator(cp, release, tmp_path, "--peering", release.peering, "--priority", "100",
                                 label="standby")
        standby.wait_for("both operators in the KopfPeering's status", peers(2))
        apply(cp, ns, [hive(), RUNTIME, fluxnode(replicas=1)])
        active.wait_for("the FluxNode Ready", reconciled(cp, ns, "fluxnode", "echo", "Ready"))
        assert "reconcile-fluxnodes-create" in active.output()
        assert "reconcile-" not in standby.output() and "child-" not in standby.output()
        assert "Resuming operations" not in standby.output()

        active.stop()
        standby.wait_for("the standby to resume", lambda: "Resuming operations" in standby.output(), timeout=30)
        cp.kubectl("-n", ns, "patch", "fluxnode", "echo", "--type=merge", "-p", '{"spec": {"replicas": 2}}')
        n_running(standby, cp, ns, "fluxbee.io/fluxnode=echo", 2, "node pods")
        standby.wait_for("the FluxNode Ready at generation 2 by the former standby",
                         reconciled(cp, ns, "fluxnode", "echo", "Ready"))
        assert "reconcile-fluxnodes-update" in standby.output()
    finally:
        active.stop()
        if standby is not None:
            standby.stop()


def test_invalid_specs_are_refused_by_the_api_server_or_end_degraded_with_a_reason(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    # The identity key graduations are verified with, supplied by the user before the Hive exists.
    # (On a mother hive the operator publishes SY.identity's own key into this ConfigMap when it is
    # absent: applied after the Hive, kubectl's create could meet the operator's copy made between
    # its read and its write, and fail with AlreadyExists.)
    key = Ed25519PrivateKey.generate()
    user_pem = dg.public_pem(key.public_key()).decode()
    apply(cp, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fluxbee-identity-key"},
                   "data": {"ed25519.pub": user_pem}})
    apply(cp, ns, [hive(), RUNTIME])
    # Refused by the API server: the CRD's schema and CEL rules.
    for bad, says in (
        (fluxnode(nodeName="echo.a"), "nodeName must be TYPE.field"),
        (fluxnode(config={"_system": {"node_name": "x"}}), "config may not set `_system`"),
        (fluxnode(replicas=-1), "spec.replicas"),
        (fluxnode(tenantId="acme"), "tenantId must be tnt:<uuid>"),
    ):
        refused = apply(cp, ns, bad, check=False)
        assert refused.returncode != 0 and says in refused.stderr, (bad["spec"], refused.stderr)
    apply(cp, ns, fluxnode(replicas=1))
    refused = cp.kubectl("-n", ns, "patch", "fluxnode", "echo", "--type=merge", "-p", '{"spec": {"hive": "x"}}',
                         check=False)
    assert refused.returncode != 0 and "spec.hive is immutable" in refused.stderr
    assert get(cp, ns, "fluxnode", "x") is None

    # Accepted, but not runnable: Degraded with the reason, and no Pods.
    texts = {"tone": "Be kind."}
    digest = dg.degree_digest([dg.PinnedModule(n, "1", dg.module_digest(t)) for n, t in texts.items()])
    ilk = "ilk:6f1c2a52-7b0e-4c39-9d64-0a1f3c5e8b21"

    def graduated(name: str, signer: Ed25519PrivateKey) -> dict[str, Any]:
        grad = dg.sign_graduation(signer, ilk, "support", "2026.1", digest)
        return fluxnode(name, replicas=1, nodeName=f"AI.{name}", agentIlk=ilk, degree={
            "name": "support", "version": "2026.1",
            "graduation": {"digest": grad.digest, "signature": grad.signature, "keyId": grad.key_id,
                           "ilkId": grad.ilk_id}})

    apply(cp, ns, [
        {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Module", "metadata": {"name": "tone"},
         "spec": {"version": "1", "content": texts["tone"]}},
        {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Degree", "metadata": {"name": "support"},
         "spec": {"version": "2026.1", "modules": [{"name": "tone", "version": "1"}]}},
        fluxnode("lost", replicas=1, nodeName="AI.lost", runtime="ai.missing"),
        fluxnode("future", replicas=1, nodeName="AI.future", runtimeVersion="9.9.9"),
        graduated("forged", Ed25519PrivateKey.generate()),
        graduated("graduate", key),
    ])
    for name, reason in (("lost", "RuntimeNotFound"), ("future", "RuntimeVersionNotAvailable"),
                         ("forged", dg.SIGNATURE_INVALID)):
        node = operator.wait_for(f"{name} Degraded", reconciled(cp, ns, "fluxnode", name, "Degraded"))
        degraded = condition(node, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", reason), (name, node["status"])
        assert degraded["message"] and condition(node, "Ready")["status"] == "False"
        assert node_pods(cp, ns, name) == []
    # …while a graduation signed with the identity key gets its Pod.
    n_running(operator, cp, ns, "fluxbee.io/fluxnode=graduate", 1, "graduate's pod")
    node = operator.wait_for("graduate Ready", reconciled(cp, ns, "fluxnode", "graduate", "Ready"))
    assert node["status"]["graduation"] == "Verified"
    # The mother hive's SY.identity got its own key (the Deployment is made after the key check),
    # and the operator left the user's public key in place.
    operator.wait_for("SY.identity's Deployment", lambda: get(cp, ns, "deployment", "demo-identity"))
    signing = get(cp, ns, "secret", "demo-identity-key")
    published = get(cp, ns, "configmap", "fluxbee-identity-key")
    assert signing is not None and published is not None
    assert published["data"] == {"ed25519.pub": user_pem}
    assert base64.b64decode(signing["data"]["signing.key.pub"]).decode() != user_pem

    # The missing Runtime appears: the waiting node starts without being touched.
    apply(cp, ns, {**RUNTIME, "metadata": {"name": "ai.missing"}})
    n_running(operator, cp, ns, "fluxbee.io/fluxnode=lost", 1, "lost's pod")


def test_a_permission_the_chart_does_not_grant_shows_in_the_operators_log_and_fails_the_run(
        control_plane: ControlPlane, release: Release, namespace: str, tmp_path: Path) -> None:
    """The check every test here relies on: take one right out of the chart's Role (creating
    Secrets) and the refusal is in the log, the Hive never gets its children, and stopping the
    operator fails the test that ran it."""
    cp, ns = control_plane, namespace
    role = cp.get_json("-n", ns, "role", release.operator_account)
    rules = [{**r, "verbs": [v for v in r["verbs"] if v != "create"]} if r.get("resources") == ["secrets"] else r
             for r in role["rules"]]
    assert rules != role["rules"]
    cp.kubectl("-n", ns, "patch", "role", release.operator_account, "--type=merge",
               "-p", json.dumps({"rules": rules}))
    account = f"system:serviceaccount:{ns}:{release.operator_account}"
    wait_for("the authorizer to see the narrower Role", lambda: cp.kubectl(
        "-n", ns, "auth", "can-i", "create", "secrets", "--as", account, check=False).stdout.strip() == "no")
    operator = start_operator(cp, release, tmp_path)
    try:
        apply(cp, ns, hive())
        operator.wait_for("the refusal in the operator's log", lambda: 'cannot create resource "secrets"' in
                          operator.output())
        assert get(cp, ns, "daemonset", "demo-hive") is None
    finally:
        with pytest.raises(pytest.fail.Exception, match="refused by the API server"):
            operator.stop()
