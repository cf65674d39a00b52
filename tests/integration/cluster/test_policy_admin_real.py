"""The cluster admin API's ``/opa/*`` routes on the Policy resource, and the applied version it reports.

Compile-and-apply, rollback, staging (a new stored version while the hive's ConfigMap keeps the
delivered one), apply of the staged version, ``check`` against given Rego and the staged/current
artefact, and their refusals; the resourceVersion guard on spec writes, against the API server.

Real control plane, the chart's operator and admin ServiceAccounts, ``fluxbee operator`` and
``fluxbee admin --backend kubernetes`` as subprocesses, and a real router on loopback run with
``--policy-dir`` (kwok runs no containers: the test plays kubelet, projecting the hive's policy
ConfigMap into that directory).  The admin API reaches the router as SY.admin, as in a hive pod.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane
from hive_harness import RouterProc
from operator_support import AdminApi, FluxbeeProcess, get, install_chart, start_admin, start_operator
from test_policy_router_mount import config_map_files, project

from fluxbee.admin.errors import AdminError
from fluxbee.admin.kube_policy import STAGED_ANNOTATION, KubePolicies
from fluxbee.dataplane.env import NODE_CREDENTIAL_FILE
from fluxbee.dataplane.names import API_VERSION
from fluxbee.kube import KubeClient, KubeConfig

RULES = 'package router\n\ntarget := "WF.{name}@demo" if {{\n\tinput.meta.action == "route"\n}}\n'
BAD = 'package router\n\ntarget := "x" if {\n\tinput.meta.action ==\n}\n'


def test_opa_routes_write_stage_apply_check_the_policy_and_read_the_router_applied_version(
        control_plane: ControlPlane, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cp, ns = control_plane, namespace
    release = install_chart(cp, ns, hive="demo")
    operator: FluxbeeProcess | None = None
    admin: AdminApi | None = None
    run_dir = Path(tempfile.mkdtemp(prefix="fbq", dir="/tmp"))  # short: the socket path has a length limit
    policy_dir = run_dir / "policy"
    router = RouterProc(run_dir, hive_id="demo", extra=("--policy-dir", str(policy_dir)))
    monkeypatch.setenv(NODE_CREDENTIAL_FILE.name, str(router.credential_file))
    try:
        operator = start_operator(cp, release, tmp_path)
        operator.wait_for("the hive's admin history ConfigMap", lambda: get(cp, ns, "configmap", "demo-admin-history"))
        admin = start_admin(cp, release, "demo", tmp_path, run_dir, router.credential_file)
        api = admin

        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            return api.call(method, path, body)

        operator.wait_for("the admin API connected to the router",
                          lambda: call("GET", "/hive/status")[1]["payload"]["router_connected"])

        # no Policy yet: the status read says so
        code, doc = call("GET", "/opa/status")
        assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc

        # compile and apply: the admin API creates Policy/demo and answers with the operator's result
        code, doc = call("POST", "/opa/policy", {"rego": RULES.format(name="a")})
        assert code == 200, doc
        out = doc["payload"]
        assert (out["status"], out["version"], out["pending_hives"], out["policy"]) == ("ok", 1, [], "demo")
        (response,) = out["responses"]
        assert response["hive"] == "demo" and response["applied"] is True and response["engine"] in ("wasm", "regorus")
        pol = get(cp, ns, "policy", "demo") or {}
        assert pol["spec"]["hives"] == ["demo"] and pol["status"]["deliveredVersion"] == 1
        assert response["hash"] == f"sha256:{pol['status']['deliveredSha256']}"

        # kubelet's part: the hive's ConfigMap lands in the router's policy directory
        project(policy_dir, config_map_files(get(cp, ns, "configmap", "demo-policy") or {}))

        def applied(version: int) -> dict[str, Any] | None:
            api.process.check_alive()
            entry = (((get(cp, ns, "policy", "demo") or {}).get("status") or {}).get("applied") or {}).get("demo")
            return entry if entry and entry.get("version") == version else None

        entry = operator.wait_for("the router's version 1 reported", lambda: applied(1), timeout=60)
        assert entry["sha256"] == pol["status"]["deliveredSha256"] and entry["state"] == "loaded"
        status = call("GET", "/opa/status")[1]["payload"]
        assert status["current"]["version"] == 1
        assert (status["router"]["status"], status["router"]["version"]) == ("loaded", 1)
        assert status["router"]["hash"] == response["hash"]
        assert call("GET", "/opa/policy")[1]["payload"]["rego"] == RULES.format(name="a")
        # the CLI a user points at the cluster's admin API says the same
        cli = subprocess.run([sys.executable, "-m", "fluxbee", "policy", "--url", api.base, "status"],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                  "FLUXBEE_ADMIN_TOKEN": api.token or ""})
        assert cli.returncode == 0, cli.stderr
        assert "router:  loaded version 1" in cli.stdout, cli.stdout

        # bad Rego: COMPILE_ERROR with line and column, version 1 stays delivered
        code, doc = call("POST", "/opa/policy", {"rego": BAD})
        assert (code, doc["error_code"]) == (422, "COMPILE_ERROR"), doc
        assert isinstance(doc["payload"]["line"], int) and isinstance(doc["payload"]["column"], int)
        assert (get(cp, ns, "configmap", "demo-policy") or {})["data"]["version"] == "1"

        # a new version, then a rollback to the one before it
        code, doc = call("POST", "/opa/policy", {"rego": RULES.format(name="b")})
        assert code == 200 and doc["payload"]["version"] == 2, doc
        code, doc = call("POST", "/opa/policy/rollback", {})
        assert code == 200 and doc["payload"]["version"] == 1, doc
        assert (get(cp, ns, "policy", "demo") or {})["spec"]["pinVersion"] == 1
        code, doc = call("POST", "/opa/policy/rollback", {"version": 99})
        assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc
        # staging, applying and checking (version 1 delivered, pinned; version 2 stored)
        def policy() -> dict[str, Any]:
            return get(cp, ns, "policy", "demo") or {}

        def hive_config_map() -> tuple[Any, Any]:
            cm = get(cp, ns, "configmap", "demo-policy") or {}
            return cm["data"], cm["binaryData"]

        delivered_cm = hive_config_map()
        code, doc = call("POST", "/opa/policy/apply", {})
        assert (code, doc["error_code"]) == (409, "NOTHING_STAGED"), doc
        route = {"meta": {"action": "route"}}
        code, doc = call("POST", "/opa/policy/check", {"rego": BAD, "input": route})
        assert (code, doc["error_code"]) == (422, "COMPILE_ERROR"), doc
        assert isinstance(doc["payload"]["line"], int) and isinstance(doc["payload"]["column"], int)
        code, doc = call("POST", "/opa/policy/check", {"rego": RULES.format(name="q"), "input": route})
        assert code == 200, doc
        assert (doc["payload"]["against"], doc["payload"]["decision"]["target"]) == ("request", "WF.q@demo")
        assert call("POST", "/opa/policy/check", {"input": route})[1]["error_code"] == "NOTHING_STAGED"

        # compile stages version 3: compiled and stored, the hive keeps running version 1
        code, doc = call("POST", "/opa/policy/compile", {"rego": RULES.format(name="c")})
        assert code == 200, doc
        (staged,) = doc["payload"]["responses"]
        assert (doc["payload"]["version"], staged["staged"], staged["applied"]) == (3, True, False), doc
        st = policy()["status"]
        assert (st["compiledVersion"], st["deliveredVersion"]) == (3, 1)
        assert staged["hash"] == "sha256:" + next(v["sha256"] for v in st["versions"] if v["version"] == 3)
        assert hive_config_map() == delivered_cm
        described = call("GET", "/opa/policy")[1]["payload"]
        assert (described["current"]["version"], described["staged"]["version"]) == (1, 3), described
        assert described["rego"] == RULES.format(name="a")  # the delivered version's source, not the staged one

        # check against the staged and the current policy: evaluated, no version taken, nothing delivered
        code, doc = call("POST", "/opa/policy/check", {"input": route})
        assert code == 200, doc
        assert (doc["payload"]["against"], doc["payload"]["decision"]["target"]) == ("staged:3", "WF.c@demo")
        code, doc = call("POST", "/hives/demo/opa/policy/check", {"input": route, "against": "current"})
        assert code == 200, doc
        assert (doc["payload"]["against"], doc["payload"]["decision"]["target"]) == ("current:1", "WF.a@demo")
        # the CLI's check against the cluster's admin API says the same
        input_file = tmp_path / "input.json"
        input_file.write_text(json.dumps(route))
        cli = subprocess.run([sys.executable, "-m", "fluxbee", "policy", "--url", api.base, "--json", "check",
                              "--input", str(input_file), "--against", "staged"],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                  "FLUXBEE_ADMIN_TOKEN": api.token or ""})
        assert cli.returncode == 0, cli.stderr
        checked = json.loads(cli.stdout)
        assert (checked["against"], checked["decision"]["target"]) == ("staged:3", "WF.c@demo"), checked
        assert policy()["status"]["compiledVersion"] == 3 and hive_config_map() == delivered_cm

        # bad Rego staged: COMPILE_ERROR with line and column; the spec is put back, version 3 stays staged
        code, doc = call("POST", "/opa/policy/compile", {"rego": BAD})
        assert (code, doc["error_code"]) == (422, "COMPILE_ERROR"), doc
        assert isinstance(doc["payload"]["line"], int) and isinstance(doc["payload"]["column"], int)
        operator.wait_for("the staged spec put back", lambda: (call("GET", "/opa/policy")[1]["payload"]
                                                               .get("staged") or {}).get("version") == 3)
        assert policy()["spec"]["rego"] == RULES.format(name="c") and hive_config_map() == delivered_cm

        # apply: another version is refused, the staged one is delivered
        code, doc = call("POST", "/hives/demo/opa/policy/apply", {"version": 2})
        assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH"), doc
        assert doc["payload"]["staged_version"] == 3
        code, doc = call("POST", "/opa/policy/apply", {"version": 3})
        assert code == 200 and doc["payload"]["version"] == 3, doc
        assert doc["payload"]["responses"][0]["applied"] is True
        assert hive_config_map()[0]["version"] == "3" and "pinVersion" not in policy()["spec"]
        described = call("GET", "/opa/policy")[1]["payload"]
        assert described["staged"] is None and described["rego"] == RULES.format(name="c"), described
        code, doc = call("POST", "/opa/policy/apply", {})
        assert (code, doc["error_code"]) == (409, "NOTHING_STAGED"), doc
        operator.check_alive()
    finally:
        try:
            if admin is not None:
                admin.process.stop()
            if operator is not None:
                operator.stop()
        finally:
            assert router.stop() == 0
            shutil.rmtree(run_dir, ignore_errors=True)


async def test_a_spec_write_carries_the_resource_version_read(control_plane: ControlPlane, namespace: str) -> None:
    """The API server's own answer to a stale write: a status change in between is retried, a spec
    change in between is VERSION_CONFLICT and leaves the other writer's spec as it was."""
    cp, ns = control_plane, namespace
    install_chart(cp, ns)
    manifest = {"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": "p", "namespace": ns},
                "spec": {"rego": RULES.format(name="a"), "hives": ["demo"]}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    async with KubeClient(KubeConfig.from_kubeconfig_files([cp.kubeconfig])) as api:
        kp = KubePolicies(api, ns, "demo", "demo", "test")
        read = await api.get("policies", ns, "p")
        assert read is not None
        await api.patch("policies", ns, "p", {"status": {"phase": "Ready"}}, subresource="status")
        written = await kp._replace(read, {**read["spec"], "pinVersion": 1}, True, "testing")
        assert written["spec"]["pinVersion"] == 1
        assert written["metadata"]["annotations"][STAGED_ANNOTATION] == "true"
        await api.patch("policies", ns, "p", {"spec": {"rego": RULES.format(name="other")}})
        with pytest.raises(AdminError) as caught:
            await kp._replace(written, {**written["spec"], "rego": RULES.format(name="mine")}, False, "testing")
        assert caught.value.code == "VERSION_CONFLICT"
        now = await api.get("policies", ns, "p") or {}
        assert now["spec"]["rego"] == RULES.format(name="other")
        assert now["metadata"]["annotations"][STAGED_ANNOTATION] == "true"
