"""The admin API in a real cluster: one Deployment with its Service, and a history every replica reads.

The operator runs as ``fluxbee operator --namespace NS`` (a subprocess with the control plane's admin
kubeconfig, nothing else); the CRDs are applied with the real kubectl; the real Deployment,
ReplicaSet, DaemonSet and garbage-collector controllers and the real scheduler do the rest, and kwok
takes the Pods to Running.  The admin processes are ``fluxbee admin --backend kubernetes`` subprocesses
against the same API server.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane, wait_for
from hive_harness import stop_process

REPO = Path(__file__).resolve().parents[3]
TOKEN = "admin-deployment-test-token"
RUNTIME = """
apiVersion: fluxbee.io/v1alpha1
kind: Runtime
metadata: {name: wf.echo}
spec: {version: 0.1.0, command: [fluxbee, node, echo]}
"""


@contextmanager
def fluxbee(tmp_path: Path, log_name: str, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``fluxbee ARGS`` as a user starts it (from a directory outside the repo), stopped with SIGTERM."""
    log = (tmp_path / log_name).open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fluxbee", *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, "fluxbee operator", strict=False, timeout=20)
        log.close()


@pytest.fixture
def crds(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", str(REPO / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/hives.fluxbee.io",
                          "crd/runtimes.fluxbee.io", "crd/fluxnodes.fluxbee.io")


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str, crds: None, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "operator.log"
    with fluxbee(tmp_path, log.name, control_plane.env, "operator", "--namespace", namespace) as proc:
        yield log
        assert proc.poll() is None, f"the operator exited:\n{log.read_text(errors='replace')[-3000:]}"


def apply_hive(control_plane: ControlPlane, namespace: str, spec: str = "{}") -> None:
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=f"""
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {{name: demo}}
spec: {spec}
""")


def pods(control_plane: ControlPlane, namespace: str, component: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = control_plane.get_json(
        "-n", namespace, "pods", "-l", f"fluxbee.io/hive=demo,app.kubernetes.io/component={component}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def running(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in items if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]


def kwok_nodes(control_plane: ControlPlane) -> set[str]:
    return {n["metadata"]["name"] for n in control_plane.get_json("nodes")["items"]
            if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"}


def test_a_hive_runs_one_admin_deployment_beside_its_hive_pods_and_it_comes_back_and_goes_with_the_hive(
    control_plane: ControlPlane, namespace: str, operator: Path,
) -> None:
    apply_hive(control_plane, namespace)
    hive_pods = wait_for("a Running hive pod on each of the 3 nodes",
                         lambda: (r if len(r := running(pods(control_plane, namespace, "hive"))) == 3 else None))
    assert all([c["name"] for c in p["spec"]["containers"]] == ["router", "identity-replica"] for p in hive_pods)

    def one_running_admin() -> dict[str, Any] | None:
        found = running(pods(control_plane, namespace, "admin"))
        return found[0] if len(found) == 1 else None

    admin = wait_for("one Running admin pod", one_running_admin)
    assert admin["spec"]["nodeName"] in kwok_nodes(control_plane)
    assert admin["spec"]["nodeName"] in {p["spec"]["nodeName"] for p in hive_pods}
    assert admin["spec"]["hostIPC"] is True and [c["name"] for c in admin["spec"]["containers"]] == ["admin"]
    deployments = control_plane.get_json("-n", namespace, "deployments", "-l", "app.kubernetes.io/component=admin")[
        "items"]
    assert [d["metadata"]["name"] for d in deployments] == ["demo-admin"]
    owner = deployments[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Hive", "demo")
    service = control_plane.get_json("-n", namespace, "service", "demo-admin")
    assert service["spec"]["selector"] == deployments[0]["spec"]["selector"]["matchLabels"]

    def service_endpoints() -> set[str] | None:  # the real EndpointSlice controller follows the selector
        slices = control_plane.get_json("-n", namespace, "endpointslices", "-l",
                                        "kubernetes.io/service-name=demo-admin")["items"]
        names = {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or [] if e.get("targetRef")}
        return names or None

    assert wait_for("the admin Service's endpoints", service_endpoints) == {admin["metadata"]["name"]}

    control_plane.kubectl("-n", namespace, "delete", "pod", admin["metadata"]["name"], "--wait=false")
    replaced = wait_for("a new Running admin pod", lambda: (
        p if (p := one_running_admin()) and p["metadata"]["uid"] != admin["metadata"]["uid"] else None))
    assert replaced["spec"]["nodeName"] in {p["spec"]["nodeName"] for p in hive_pods}
    (deployment,) = control_plane.get_json("-n", namespace, "deployments", "-l",
                                           "app.kubernetes.io/component=admin")["items"]
    # reconciles after every pod event compare the Deployment with what the API server stored and
    # find nothing to patch (a spec patch would bump the generation and roll the pods)
    assert (deployment["metadata"]["name"], deployment["metadata"]["generation"]) == ("demo-admin", 1)
    assert {t["key"]: t.get("tolerationSeconds") for t in replaced["spec"]["tolerations"]} == {
        "node.kubernetes.io/not-ready": 30, "node.kubernetes.io/unreachable": 30}

    control_plane.kubectl("-n", namespace, "delete", "hive", "demo", "--wait=false")

    def all_gone() -> bool:
        left = [control_plane.get_json("-n", namespace, kind)["items"]
                for kind in ("hives", "deployments", "daemonsets")]
        svc = control_plane.kubectl("-n", namespace, "get", "service", "demo-admin", check=False)
        return left == [[], [], []] and svc.returncode != 0 and not pods(control_plane, namespace, "admin")

    wait_for("the Hive, its admin Deployment, Service and pods gone", all_gone, timeout=90)


def test_admin_replicas_spread_over_hosts_that_run_the_hive_and_go_with_the_admin_api_disabled(
    control_plane: ControlPlane, namespace: str, operator: Path,
) -> None:
    control_plane.kubectl("label", "node", "kwok-node-0", "kwok-node-1", f"{namespace}=hive")
    try:
        apply_hive(control_plane, namespace, f"{{nodeSelector: {{{namespace}: hive}}, admin: {{replicas: 2}}}}")
        admins = wait_for("2 Running admin pods", lambda: (
            r if len(r := running(pods(control_plane, namespace, "admin"))) == 2 else None))
        assert {p["spec"]["nodeName"] for p in admins} == {"kwok-node-0", "kwok-node-1"}
        control_plane.kubectl("-n", namespace, "patch", "hive", "demo", "--type=merge",
                              "-p", '{"spec": {"admin": {"replicas": 1}}}')
        wait_for("1 admin pod left", lambda: len(pods(control_plane, namespace, "admin")) == 1)
        control_plane.kubectl("-n", namespace, "patch", "hive", "demo", "--type=merge",
                              "-p", '{"spec": {"admin": {"enabled": false}}}')

        def admin_gone() -> bool:
            left = [control_plane.kubectl("-n", namespace, "get", kind, "demo-admin", check=False).returncode
                    for kind in ("deployment", "service")]
            return left == [1, 1] and not pods(control_plane, namespace, "admin")

        wait_for("no admin Deployment, Service nor pod", admin_gone)
        # the history outlives a disabled admin API (it goes with the Hive)
        control_plane.kubectl("-n", namespace, "get", "configmap", "demo-admin-history")
    finally:
        control_plane.kubectl("label", "node", "kwok-node-0", "kwok-node-1", f"{namespace}-")


def call(url: str, method: str = "GET", body: Any = None) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def serving(proc: subprocess.Popen[bytes], log: Path) -> str | None:
    """The URL the admin process prints once it serves (the test fails at once if it exited)."""
    if proc.poll() is not None:
        pytest.fail(f"{log.name}: fluxbee admin exited ({proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
    found = re.search(r"admin API on (http://\S+)", log.read_text(errors="replace"))
    return found.group(1) if found else None


def test_two_admin_processes_writing_history_at_once_both_see_every_entry_and_keep_every_route(
    control_plane: ControlPlane, namespace: str, crds: None, tmp_path: Path,
) -> None:
    apply_hive(control_plane, namespace)
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=RUNTIME)
    env = {**control_plane.env, "FLUXBEE_ADMIN_TOKEN": TOKEN}
    args = ("admin", "--backend", "kubernetes", "--namespace", namespace, "--hive", "demo",
            "--run-dir", str(tmp_path / "no-router"))
    with fluxbee(tmp_path, "admin-a.log", env, *args, "--listen", f"127.0.0.1:{free_port()}") as a, \
            fluxbee(tmp_path, "admin-b.log", env, *args, "--listen", f"127.0.0.1:{free_port()}") as b:
        urls = [wait_for(f"{log} serving", lambda proc=proc, log=log: serving(proc, tmp_path / log), timeout=30)
                for proc, log in ((a, "admin-a.log"), (b, "admin-b.log"))]
        per_process = 12
        names = [f"WF.w{i}.{side}" for side in ("a", "b") for i in range(per_process)]

        def spawn(name: str) -> str:
            url = urls[0] if name.endswith(".a") else urls[1]
            answer = call(f"{url}/hives/demo/nodes", "POST", {"node_name": name, "runtime": "wf.echo"})
            assert answer["status"] == "ok", answer
            return name

        def add_route(prefix: str) -> str:  # each edit reads the Hive's routes and writes them back
            url = urls[0] if prefix.endswith(".a.") else urls[1]
            answer = call(f"{url}/routes?hive=demo", "POST", {"prefix": prefix, "action": "DROP"})
            assert answer["status"] == "ok", answer
            return prefix

        prefixes = [f"AI.r{i}.{side}." for side in ("a", "b") for i in range(6)]
        with ThreadPoolExecutor(max_workers=8) as pool:  # both processes append at the same moments
            assert sorted(pool.map(spawn, names)) == sorted(names)
            assert sorted(pool.map(add_route, prefixes)) == sorted(prefixes)

        for url in urls:
            entries = call(f"{url}/hives/demo/deployments?limit=500&category=node")["payload"]["entries"]
            spawned = [e["detail"]["node_name"] for e in entries if e["action"] == "run_node"]
            assert sorted(spawned) == sorted(f"{n}@demo" for n in names), f"{url} lost entries"
            assert all(e["result"] == "ok" for e in entries)
            routes = call(f"{url}/hives/demo/deployments?limit=500&category=routes")["payload"]["entries"]
            assert sorted(e["detail"]["prefix"] for e in routes) == sorted(prefixes)
    kept = control_plane.get_json("-n", namespace, "hive", "demo")["spec"]["routes"]
    assert sorted(r["prefix"] for r in kept) == sorted(prefixes), "an admin replica's route edit was lost"
    history = control_plane.get_json("-n", namespace, "configmap", "demo-admin-history")
    lines = history["data"]["deployments.jsonl"].splitlines()
    assert len(lines) == len(names) + len(prefixes) == len({json.loads(x)["deployment_id"] for x in lines})
    owner = history["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Hive", "demo")


def lease(control_plane: ControlPlane, namespace: str) -> dict[str, Any] | None:
    found = control_plane.kubectl("-n", namespace, "get", "configmap", "demo-admin-history", "-o",
                                  r"jsonpath={.metadata.annotations.fluxbee\.io/drift-monitor}", check=False)
    return json.loads(found.stdout) if found.returncode == 0 and found.stdout.strip() else None


def test_of_two_admin_processes_one_records_drift_and_the_other_takes_over_when_it_stops(
    control_plane: ControlPlane, namespace: str, crds: None, tmp_path: Path,
) -> None:
    apply_hive(control_plane, namespace)
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=RUNTIME + """---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: bad}
spec: {hive: demo, nodeName: WF.bad, runtime: wf.echo}
""")
    args = ("admin", "--backend", "kubernetes", "--namespace", namespace, "--hive", "demo",
            "--run-dir", str(tmp_path / "no-router"))
    env = {**control_plane.env, "FLUXBEE_ADMIN_TOKEN": TOKEN}
    with fluxbee(tmp_path, "admin-a.log", {**env, "POD_NAME": "admin-a"}, *args,
                 "--listen", f"127.0.0.1:{free_port()}") as a, \
            fluxbee(tmp_path, "admin-b.log", {**env, "POD_NAME": "admin-b"}, *args,
                    "--listen", f"127.0.0.1:{free_port()}") as b:
        procs = {"admin-a": a, "admin-b": b}
        urls = {name: wait_for(f"{name} serving", lambda p=p, name=name: serving(p, tmp_path / f"{name}.log"),
                               timeout=30) for name, p in procs.items()}
        # No operator here to make the history ConfigMap: the first change makes it.
        assert call(f"{urls['admin-a']}/hives/demo/nodes", "POST",
                    {"node_name": "WF.first", "runtime": "wf.echo"})["status"] == "ok"
        first = wait_for("a drift monitor holding the lease", lambda: lease(control_plane, namespace))
        leader = first["holder"]
        other = "admin-b" if leader == "admin-a" else "admin-a"
        control_plane.kubectl("-n", namespace, "patch", "fluxnode", "bad", "--subresource=status", "--type=merge",
                              "-p", '{"status": {"phase": "Degraded"}}')

        def failed_alerts(url: str) -> list[dict[str, Any]] | None:
            entries: list[dict[str, Any]] = call(f"{url}/hives/demo/drift-alerts?kind=node_failed")["payload"][
                "entries"]
            return entries or None

        wait_for("a node_failed alert", lambda: failed_alerts(urls[other]), timeout=30)
        # Both monitors see the failing node on every pass; a renewal of the lease (≥5 s of passes
        # later) shows the leader is still the only one recording it.
        wait_for("the lease renewed", lambda: (x if (x := lease(control_plane, namespace)) and
                                               x["until"] > first["until"] else None), timeout=30)
        alerts = failed_alerts(urls[other]) or []
        assert [e["detail"]["node_name"] for e in alerts] == ["WF.bad@demo"], alerts
        assert lease(control_plane, namespace)["holder"] == leader  # type: ignore[index]

        procs[leader].send_signal(signal.SIGTERM)
        assert procs[leader].wait(20) == 0
        wait_for(f"{other} taking the lease over", lambda: (
            lease(control_plane, namespace) or {}).get("holder") == other, timeout=40)
        # The new monitor starts from what it sees, as after a restart: the still-failing node again.
        wait_for("the node_failed alert recorded by the new monitor",
                 lambda: len(failed_alerts(urls[other]) or []) == 2, timeout=20)


def chart_admin_env(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The chart's hive objects (``helm template | kubectl apply``, no operator Deployment) and the
    environment of an admin process logged in with a token of the chart's admin ServiceAccount."""
    rendered = subprocess.run(
        [str(control_plane.bin / "helm"), "template", "demo", str(REPO / "charts" / "fluxbee"),
         "--namespace", namespace, "--set", "hive.enabled=true", "--set", "operator.enabled=false"],
        capture_output=True, text=True, env=control_plane.env, timeout=60, check=True).stdout
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=rendered)
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=RUNTIME)
    token = control_plane.kubectl("-n", namespace, "create", "token", "demo-admin").stdout.strip()
    kubeconfig = control_plane.token_kubeconfig(token, tmp_path / "admin.kubeconfig", namespace)
    return {**control_plane.env, "KUBECONFIG": str(kubeconfig), "FLUXBEE_ADMIN_TOKEN": TOKEN}, kubeconfig


def test_without_a_history_config_map_the_charts_admin_makes_no_change_it_cannot_record(
    control_plane: ControlPlane, namespace: str, crds: None, tmp_path: Path,
) -> None:
    env, _ = chart_admin_env(control_plane, namespace, tmp_path)  # no operator: nobody made the ConfigMap
    with fluxbee(tmp_path, "admin.log", env, "admin", "--backend", "kubernetes", "--hive", "demo",
                 "--run-dir", str(tmp_path / "no-router"), "--listen", f"127.0.0.1:{free_port()}") as proc:
        url = wait_for("the admin API serving", lambda: serving(proc, tmp_path / "admin.log"), timeout=30)
        with pytest.raises(urllib.error.HTTPError) as refused:
            call(f"{url}/hives/demo/nodes", "POST", {"node_name": "WF.unrecorded", "runtime": "wf.echo"})
        answer = json.loads(refused.value.read())
    assert (refused.value.code, answer["error_code"]) == (503, "STATE_WRITE_FAILED"), answer
    assert "creating it failed" in answer["error_detail"] and "403" in answer["error_detail"], answer
    assert control_plane.get_json("-n", namespace, "fluxnodes")["items"] == []  # nothing was changed


def test_the_charts_admin_service_account_may_keep_the_history_and_change_no_other_config_map(
    control_plane: ControlPlane, namespace: str, operator: Path, tmp_path: Path,
) -> None:
    """The admin API logged in as the chart's ServiceAccount (its Role really enforced by the API
    server) appends to the history ConfigMap the operator made, and may create or change no other."""
    env, kubeconfig = chart_admin_env(control_plane, namespace, tmp_path)
    control_plane.kubectl("-n", namespace, "create", "configmap", "someone-elses", "--from-literal=k=v")
    wait_for("the operator's history ConfigMap", lambda: control_plane.kubectl(
        "-n", namespace, "get", "configmap", "demo-admin-history", check=False).returncode == 0)
    with fluxbee(tmp_path, "admin.log", env, "admin", "--backend", "kubernetes", "--hive", "demo",
                 "--run-dir", str(tmp_path / "no-router"), "--listen", f"127.0.0.1:{free_port()}") as proc:
        url = wait_for("the admin API serving", lambda: serving(proc, tmp_path / "admin.log"), timeout=30)
        answer = call(f"{url}/hives/demo/nodes", "POST", {"node_name": "WF.rbac", "runtime": "wf.echo"})
        assert answer["status"] == "ok", answer
        entries = call(f"{url}/hives/demo/deployments")["payload"]["entries"]
        assert [(e["action"], e["result"]) for e in entries] == [("run_node", "ok")]
    history = control_plane.get_json("-n", namespace, "configmap", "demo-admin-history")
    assert json.loads(history["data"]["deployments.jsonl"])["detail"]["node_name"] == "WF.rbac@demo"
    refused = control_plane.kubectl("--kubeconfig", str(kubeconfig), "-n", namespace, "patch", "configmap",
                                    "someone-elses", "--type=merge", "-p", '{"data": {"k": "x"}}', check=False)
    assert refused.returncode != 0 and "cannot patch resource" in refused.stderr
    refused = control_plane.kubectl("--kubeconfig", str(kubeconfig), "-n", namespace, "create", "configmap",
                                    "new-one", check=False)
    assert refused.returncode != 0 and "cannot create resource" in refused.stderr
