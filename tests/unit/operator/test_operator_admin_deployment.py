"""The hive's admin API as one Deployment and its Service (pure builders, plain dicts)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fluxbee.admin.kube_history import COMPONENT_LABEL, HIVE_LABEL, PART_OF_LABEL, history_config_map
from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.hive.build import (
    build_admin_deployment,
    build_admin_history,
    build_daemon_set,
    build_services,
    pod_selector,
)
from fluxbee.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="img:1", image_pull_policy="Never")


def hive(**spec: Any) -> Hive:
    return Hive.model_validate({"metadata": {"name": "h", "namespace": "ns"}, "spec": spec})


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def test_the_hive_pods_run_the_router_and_the_identity_replica_and_carry_no_api_token() -> None:
    spec = pod_spec(build_daemon_set(hive(admin={"serviceAccountName": "h-admin"}), "ns", SETTINGS))
    assert [c["name"] for c in spec["containers"]] == ["router", "identity-replica"]
    assert "serviceAccountName" not in spec and spec["automountServiceAccountToken"] is False
    # only the replica's own token, never SY.admin's
    assert [v["name"] for v in spec["volumes"] if v["name"].startswith("credential-")] == [
        "credential-sy-identity-replica"]
    off = pod_spec(build_daemon_set(hive(identity={"enabled": False}), "ns", SETTINGS))
    assert [c["name"] for c in off["containers"]] == ["router"]
    assert not any(v["name"].startswith("credential-") for v in off["volumes"])


def test_the_admin_deployment_has_the_requested_replicas_one_by_default() -> None:
    assert build_admin_deployment(hive(), "ns", SETTINGS)["spec"]["replicas"] == 1
    two = build_admin_deployment(hive(admin={"replicas": 2}), "ns", SETTINGS)
    assert (two["kind"], two["metadata"]["name"], two["metadata"]["namespace"]) == ("Deployment", "h-admin", "ns")
    assert two["spec"]["replicas"] == 2
    with pytest.raises(ValidationError):
        hive(admin={"replicas": -1})


def test_admin_pods_run_beside_a_hive_pod_with_its_sockets_and_host_ipc() -> None:
    deployment = build_admin_deployment(
        hive(nodeSelector={"pool": "hive"}, tolerations=[{"key": "k", "operator": "Exists"}],
             socketDir="/srv/sock", image="own:2", admin={"port": 8181, "serviceAccountName": "h-admin"}),
        "ns", SETTINGS)
    spec = pod_spec(deployment)
    assert spec["hostIPC"] is True
    assert spec["nodeSelector"] == {"pool": "hive"} and spec["tolerations"][0] == {"key": "k", "operator": "Exists"}
    assert spec["serviceAccountName"] == "h-admin" and "automountServiceAccountToken" not in spec
    required = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == [{"labelSelector": {"matchLabels": pod_selector("h")},
                         "topologyKey": "kubernetes.io/hostname"}]
    spread = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["sockets"]["hostPath"] == {"path": "/srv/sock", "type": "DirectoryOrCreate"}
    (admin,) = spec["containers"]
    assert admin["image"] == "own:2" and admin["imagePullPolicy"] == "Never"
    assert admin["command"] == ["fluxbee", "admin", "--listen", "0.0.0.0:8181", "--backend", "kubernetes"]
    assert {"name": "sockets", "mountPath": "/var/run/fluxbee"} in admin["volumeMounts"]
    env = {e["name"]: e for e in admin["env"]}
    assert env["FLUXBEE_HIVE_RESOURCE"]["value"] == "h" and env["FLUXBEE_RUN_DIR"]["value"] == "/var/run/fluxbee"
    assert env["FLUXBEE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "h-admin-token", "key": "token"}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_admin_selector_never_matches_hive_pods_and_the_service_selects_the_admin_pods() -> None:
    deployment = build_admin_deployment(hive(), "ns", SETTINGS)
    selector = deployment["spec"]["selector"]["matchLabels"]
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template.items()
    assert not pod_selector("h").items() <= template.items()  # the DaemonSet and gateway never pick them
    services = {s["metadata"]["name"]: s for s in build_services(hive(), "ns")}
    assert services["h-admin"]["spec"]["selector"] == selector
    assert services["h-admin"]["spec"]["ports"][0]["targetPort"] == "admin"
    assert "h-gateway" not in services  # the gateway's is built with spec.wan (operator/hive/gateway.py)
    daemon_set = build_daemon_set(hive(), "ns", SETTINGS)
    assert not selector.items() <= daemon_set["spec"]["template"]["metadata"]["labels"].items()


def test_an_admin_pod_leaves_a_lost_host_after_30_s_unless_the_hive_says_otherwise() -> None:
    spec = pod_spec(build_admin_deployment(hive(), "ns", SETTINGS))
    assert {(t["key"], t["effect"], t["tolerationSeconds"]) for t in spec["tolerations"]} == {
        ("node.kubernetes.io/not-ready", "NoExecute", 30), ("node.kubernetes.io/unreachable", "NoExecute", 30)}
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
           "tolerationSeconds": 5}
    spec = pod_spec(build_admin_deployment(hive(tolerations=[own]), "ns", SETTINGS))
    assert [t for t in spec["tolerations"] if t["key"] == "node.kubernetes.io/unreachable"] == [own]


def test_the_operator_makes_the_history_config_map_as_the_admin_api_would_and_never_its_data() -> None:
    cm = build_admin_history(hive(), "ns")
    assert cm["metadata"]["name"] == history_config_map("h") == "h-admin-history"
    assert "data" not in cm  # the admin replicas own the entries; a reconcile must not reset them
    labels = cm["metadata"]["labels"]
    assert labels == {HIVE_LABEL: "h", COMPONENT_LABEL: "admin-history", PART_OF_LABEL: "fluxbee"}
    assert L.MANAGED_BY not in labels  # its writes must not wake the Hive's reconcile
