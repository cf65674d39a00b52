"""The Helm chart with the real ``helm`` CLI (v4) on the real control plane.

A user installs ``charts/fluxbee`` into a namespace of their own with the values they would give
(an image of theirs: here one that does not exist, kwok's nodes take its Pods to Running anyway),
upgrades it and uninstalls it. The RBAC the chart gives the operator's ServiceAccount is asked of
the real authorizer with ``kubectl auth can-i --as system:serviceaccount:NS:SA``, verb by verb:
everything the operator does (read from operator/ and kopf's own needs) must be allowed, and a few
powers it does not need must not be.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import CHART, apply_crds, helm
from cluster_support import ControlPlane, wait_for
from operator_support import get, install_chart, start_operator

IMAGE = ["--set", "image.repository=example.invalid/fluxbee", "--set", "image.tag=0.0.1"]
RELEASE = "fb"
SA = "fb-fluxbee-operator"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
# Every namespaced kind the chart can create; after uninstall none may be left with the release's label.
CHART_KINDS = "deployments,replicasets,pods,serviceaccounts,roles,rolebindings,secrets,configmaps,services," \
              "hives.fluxbee.io,kopfpeerings.kopf.dev"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    # The CRDs may be there already (the session's other tests apply crds/); helm leaves existing CRDs
    # alone, so apply the chart's own, kopf's peering CRDs included, as `helm install` would on a new cluster.
    apply_crds(control_plane)
    control_plane.kubectl("apply", "-f", str(CHART / "crds"))
    return control_plane


@pytest.fixture
def installed(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    """Release ``fb`` in the test's namespace, uninstalled afterwards if the test did not."""
    yield namespace
    helm(cluster, "uninstall", RELEASE, "-n", namespace, "--ignore-not-found", check=False)


def install(cp: ControlPlane, namespace: str, *values: str) -> str:
    return helm(cp, "install", RELEASE, str(CHART), "-n", namespace, *IMAGE, *values,
                "--wait", "--timeout", "90s").stdout


def can_i(cp: ControlPlane, namespace: str, verb: str, resource: str, where: str | None = None) -> bool:
    """The real authorizer's answer for the chart's operator ServiceAccount in namespace ``where`` (default: its
    own; ``""``: every namespace, and cluster-scoped resources)."""
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--as", f"system:serviceaccount:{namespace}:{SA}"]
    if sub:
        args += ["--subresource", sub]
    args += ["-A"] if where == "" else ["-n", namespace if where is None else where]
    proc = cp.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    if answer not in ("yes", "no"):
        pytest.fail(f"kubectl {' '.join(args)}: {proc.stdout} {proc.stderr}")
    return answer == "yes"


def operator_pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return list(cp.get_json("-n", namespace, "pods", "-l", f"{INSTANCE},app.kubernetes.io/component=operator")["items"])


def test_helm_lint_and_template_pass_and_the_api_server_accepts_every_rendered_object(
    cluster: ControlPlane, namespace: str,
) -> None:
    for values in ([], ["--set", "hive.enabled=true"], ["--set", "operator.replicas=2"],
                   ["--set", "operator.watchReleaseNamespaceOnly=true", "--set", "operator.replicas=2",
                    "--set", "hive.enabled=true"]):
        lint = helm(cluster, "lint", "--strict", str(CHART), *IMAGE, *values)
        assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
        rendered = helm(cluster, "template", RELEASE, str(CHART), "-n", namespace, *IMAGE, *values).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        assert "Deployment" in {d["kind"] for d in docs}
        # Server-side dry run: the real schemas (built-in kinds and our CRDs) and admission judge each object.
        dry = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
        assert dry.returncode == 0, f"{values}: {dry.stderr}"
        assert dry.stdout.count("(server dry run)") == len(docs), dry.stdout


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "release-namespace-only"])
def test_helm_install_runs_the_operator_deployment_on_a_kwok_node(
    cluster: ControlPlane, installed: str, namespaced: bool,
) -> None:
    namespace = installed
    out = install(cluster, namespace, "--set", "hive.enabled=true",
                  "--set", f"operator.watchReleaseNamespaceOnly={str(namespaced).lower()}")
    assert "STATUS: deployed" in out
    [status] = json.loads(helm(cluster, "list", "-n", namespace, "-o", "json").stdout)
    assert (status["name"], status["status"], status["revision"]) == (RELEASE, "deployed", "1")
    deploy = cluster.get_json("-n", namespace, "deployment", SA)
    assert deploy["status"].get("availableReplicas") == 1
    [pod] = operator_pods(cluster, namespace)
    kwok_nodes = {n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]}
    assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] in kwok_nodes
    assert pod["spec"]["serviceAccountName"] == SA
    [container] = pod["spec"]["containers"]
    assert container["image"] == "example.invalid/fluxbee:0.0.1"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("FLUXBEE_WATCH_NAMESPACE") == (namespace if namespaced else None)
    hive = cluster.get_json("-n", namespace, "hive", RELEASE)
    assert hive["spec"]["image"] == "example.invalid/fluxbee:0.0.1"
    role_kind = "role" if namespaced else "clusterrole"
    binding = cluster.get_json(*(["-n", namespace] if namespaced else []), f"{role_kind}binding", SA)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}]


# What the operator does (operator/*/handlers.py, operator/children.py, operator/context.py, kopf):
# it watches and patches (finalizers, kopf's annotations) the six kinds and patches their status;
# creates, patches, deletes, lists and watches the children it owns; creates and patches secrets
# but never watches them; posts events; updates its owners' finalizers (blockOwnerDeletion on the
# children's ownerReferences, needed where OwnerReferencesPermissionEnforcement is on).
OPERATOR_NEEDS = [
    *((verb, f"{kind}.fluxbee.io") for kind in ("hives", "fluxnodes", "runtimes", "modules", "degrees", "policies")
      for verb in ("get", "list", "watch", "patch")),
    *((verb, f"{kind}.fluxbee.io/status") for kind in ("hives", "fluxnodes", "runtimes", "modules", "degrees",
                                                        "policies") for verb in ("get", "patch")),
    *((verb, f"{kind}.fluxbee.io/finalizers") for kind in ("hives", "fluxnodes", "policies")
      for verb in ("update",)),
    *((verb, kind) for kind in ("pods", "configmaps", "services", "daemonsets.apps", "deployments.apps",
                                "statefulsets.apps")
      for verb in ("get", "list", "watch", "create", "patch", "delete")),
    *((verb, "secrets") for verb in ("get", "list", "create", "patch", "delete")),
    ("create", "events"), ("create", "events.events.k8s.io"),
]
# Powers it has no use for: none of them may be granted.
OPERATOR_MUST_NOT = [
    ("create", "hives.fluxbee.io"), ("delete", "fluxnodes.fluxbee.io"), ("update", "hives.fluxbee.io"),
    ("watch", "secrets"), ("create", "pods/exec"), ("create", "pods/portforward"),
    ("create", "serviceaccounts/token"), ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"), ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"), ("escalate", "roles.rbac.authorization.k8s.io"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
]
CLUSTER_MUST_NOT = [
    ("update", "nodes"), ("patch", "nodes"), ("delete", "nodes"), ("create", "namespaces"),
    ("delete", "namespaces"), ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
]


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "release-namespace-only"])
def test_the_operator_service_account_may_do_what_the_operator_does_and_no_more(
    cluster: ControlPlane, installed: str, namespaced: bool,
) -> None:
    namespace = installed
    install(cluster, namespace, "--set", "operator.replicas=2",
            "--set", f"operator.watchReleaseNamespaceOnly={str(namespaced).lower()}")
    # The authorizer learns new bindings through its informers: wait for the first one to show.
    wait_for("the operator's RBAC to take effect", lambda: can_i(cluster, namespace, "watch", "hives.fluxbee.io"),
             timeout=20)
    peering = "kopfpeerings.kopf.dev" if namespaced else "clusterkopfpeerings.kopf.dev"  # kopf's, with 2 replicas
    needs = [*OPERATOR_NEEDS, *((verb, peering) for verb in ("get", "list", "watch", "patch"))]
    denied = [(v, r) for v, r in needs if not can_i(cluster, namespace, v, r, None if namespaced else "")]
    assert denied == [], f"the operator needs these and may not: {denied}"
    granted = [(v, r) for v, r in OPERATOR_MUST_NOT if can_i(cluster, namespace, v, r)]
    granted += [(v, r) for v, r in CLUSTER_MUST_NOT if can_i(cluster, namespace, v, r, "")]
    assert granted == [], f"the operator may do these and has no use for them: {granted}"
    # Cluster-wide it serves every namespace; confined to its own, it can touch no other.
    other = "kube-system"
    elsewhere = [(v, r) for v, r in (("get", "secrets"), ("create", "pods"), ("patch", "hives.fluxbee.io"),
                                     ("list", "fluxnodes.fluxbee.io")) if can_i(cluster, namespace, v, r, other)]
    assert elsewhere == ([] if namespaced else [("get", "secrets"), ("create", "pods"), ("patch", "hives.fluxbee.io"),
                                                 ("list", "fluxnodes.fluxbee.io")])


def test_helm_upgrade_rolls_the_operator_to_the_new_values(cluster: ControlPlane, installed: str) -> None:
    namespace = installed
    install(cluster, namespace, "--set", "hive.enabled=true")
    token = cluster.get_json("-n", namespace, "secret", f"{RELEASE}-admin-token")["data"]["token"]
    up = helm(cluster, "upgrade", RELEASE, str(CHART), "-n", namespace,
              "--set", "image.repository=example.invalid/fluxbee", "--set", "image.tag=0.0.2",
              "--set", "operator.replicas=2", "--set", "hive.enabled=true", "--set", "hive.gatewayPort=9100",
              "--wait", "--timeout", "90s")
    assert "has been upgraded" in up.stdout
    [status] = json.loads(helm(cluster, "list", "-n", namespace, "-o", "json").stdout)
    assert (status["status"], status["revision"]) == ("deployed", "2")

    def rolled() -> list[dict[str, Any]] | None:
        pods = [p for p in operator_pods(cluster, namespace) if "deletionTimestamp" not in p["metadata"]]
        new = [p for p in pods if p["spec"]["containers"][0]["image"] == "example.invalid/fluxbee:0.0.2"
               and p["status"].get("phase") == "Running"]
        return new if len(new) == len(pods) == 2 else None

    assert len(wait_for("two operator Pods of the new image, Running", rolled)) == 2
    env = {e["name"]: e.get("value") for e in rolled()[0]["spec"]["containers"][0]["env"]}  # type: ignore[index]
    assert env["FLUXBEE_OPERATOR_PEERING"] == SA
    assert cluster.get_json("clusterkopfpeering", SA)["metadata"]["name"] == SA
    hive = cluster.get_json("-n", namespace, "hive", RELEASE)["spec"]
    assert (hive["gatewayPort"], hive["image"]) == (9100, "example.invalid/fluxbee:0.0.2")
    # The generated admin token survives the upgrade (the chart looks the Secret up instead of re-rolling it).
    assert cluster.get_json("-n", namespace, "secret", f"{RELEASE}-admin-token")["data"]["token"] == token


def test_helm_uninstall_leaves_only_the_crds_and_the_kept_admin_token(cluster: ControlPlane, installed: str) -> None:
    namespace = installed
    install(cluster, namespace, "--set", "hive.enabled=true", "--set", "operator.replicas=2")
    assert cluster.get_json("-n", namespace, CHART_KINDS, "-l", INSTANCE)["items"]
    out = helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "90s")
    assert f'release "{RELEASE}" uninstalled' in out.stdout

    def leftovers() -> list[str] | None:
        items = cluster.get_json("-n", namespace, CHART_KINDS, "-l", INSTANCE)["items"]
        names = sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items)
        return names if names == [f"Secret/{RELEASE}-admin-token"] else None

    assert wait_for("only the kept admin token Secret to remain", leftovers, timeout=60)
    assert cluster.get_json("clusterroles,clusterrolebindings,clusterkopfpeerings", "-l", INSTANCE)["items"] == []
    assert helm(cluster, "list", "-n", namespace, "-q").stdout.strip() == ""
    crds = {c["metadata"]["name"] for c in cluster.get_json("crd")["items"]}
    assert {"hives.fluxbee.io", "fluxnodes.fluxbee.io", "clusterkopfpeerings.kopf.dev"} <= crds
    # Installed again, it takes the kept token instead of making a new one.
    kept = cluster.get_json("-n", namespace, "secret", f"{RELEASE}-admin-token")["data"]["token"]
    install(cluster, namespace, "--set", "hive.enabled=true")
    assert cluster.get_json("-n", namespace, "secret", f"{RELEASE}-admin-token")["data"]["token"] == kept


def test_helm_uninstall_removes_a_hive_the_operator_reconciled_even_though_the_operator_goes_first(
    cluster: ControlPlane, installed: str, tmp_path: Path,
) -> None:
    """`helm uninstall` deletes the operator and the chart's Hive in one step: nothing the operator
    put on the Hive (a finalizer) may then keep it Terminating for good."""
    namespace = installed
    release = install_chart(cluster, namespace, hive=RELEASE)  # the operator Deployment scaled to 0
    operator = start_operator(cluster, release, tmp_path)
    try:
        operator.wait_for("the operator to reconcile the chart's Hive",
                          lambda: get(cluster, namespace, "daemonsets", f"{RELEASE}-hive"), timeout=60)
    finally:
        operator.stop()  # gone first, as when helm deletes its Deployment
    hive = cluster.get_json("-n", namespace, "hive", RELEASE)
    assert not hive["metadata"].get("finalizers"), hive["metadata"]
    # helm's --wait waits until everything it deleted is gone, and fails at the deadline.
    out = helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "30s", check=False)
    assert out.returncode == 0, f"the Hive is left Terminating: {out.stderr.strip()}"
    assert cluster.kubectl("-n", namespace, "get", "hive", RELEASE, check=False).returncode != 0
