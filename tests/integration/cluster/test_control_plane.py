"""The local control plane itself: the contract of hack/cluster-up.sh that the other tests build on."""

from __future__ import annotations

from pathlib import Path

from cluster_support import ControlPlane, wait_for


def test_the_control_plane_has_three_ready_nodes_and_runs_a_daemonset_on_each(
    control_plane: ControlPlane, namespace: str,
) -> None:
    nodes = control_plane.get_json("nodes")["items"]
    assert len(nodes) == 3
    assert all(c["status"] == "True" for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready")
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input="""
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec: {containers: [{name: c, image: example.invalid/probe:1}]}
""")

    def running_on() -> set[str] | None:
        pods = control_plane.get_json("-n", namespace, "pods", "-l", "app=probe")["items"]
        hosts = {p["spec"].get("nodeName") for p in pods if p["status"].get("phase") == "Running"}
        return hosts if len(hosts) == 3 else None

    assert wait_for("a Running probe Pod on each node", running_on) == {n["metadata"]["name"] for n in nodes}


def test_rbac_is_enforced_for_a_service_account_without_roles(
    control_plane: ControlPlane, namespace: str, tmp_path: Path,
) -> None:
    control_plane.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    token = control_plane.kubectl("-n", namespace, "create", "token", "nobody").stdout.strip()
    config = control_plane.token_kubeconfig(token, tmp_path / "nobody.kubeconfig", namespace)
    denied = control_plane.kubectl("--kubeconfig", str(config), "get", "pods", check=False)
    assert denied.returncode != 0
    assert f'User "system:serviceaccount:{namespace}:nobody" cannot list resource "pods"' in denied.stderr
    control_plane.kubectl("-n", namespace, "create", "rolebinding", "view", "--clusterrole", "view",
                          f"--serviceaccount={namespace}:nobody")
    # The authorizer sees new bindings through its informer: allow it a moment.
    wait_for("the view binding to take effect", lambda: control_plane.kubectl(
        "--kubeconfig", str(config), "get", "pods", check=False).returncode == 0, timeout=20)
