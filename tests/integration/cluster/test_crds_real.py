"""The fluxbee.io CRDs on a real API server: applied with kubectl, validated by the real schema and CEL.

Everything goes through the real ``kubectl`` as a user types it: ``kubectl apply -f crds/``, then
objects created in a namespace of the test's own. The API server does the validating (structural
schema, defaults, pruning, ``x-kubernetes-validations``), so a rule that the emulator accepted but
the real server cannot compile, or a message that reads differently, shows here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import API, REPO, apply_crds, create, explain, readme_resources, table
from cluster_support import ControlPlane

ILK = "ilk:6f1c2a52-7b0e-4c39-9d64-0a1f3c5e8b21"
SHA = "a" * 64


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> ControlPlane:
    apply_crds(control_plane)
    return control_plane


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


HIVE = obj("Hive", "demo", {})
NODE = obj("FluxNode", "echo", {"hive": "demo", "nodeName": "AI.echo.a", "runtime": "fluxbee.echo"})
RUNTIME = obj("Runtime", "fluxbee.echo", {"version": "0.1.0", "command": ["fluxbee", "node", "echo"]})
MODULE = obj("Module", "tone", {"version": "1", "content": "Be kind."})
DEGREE = obj("Degree", "support-l1", {"version": "1", "modules": [{"name": "tone", "version": "1"}]})
POLICY = obj("Policy", "route", {"rego": "package router\n"})


def edited(base: dict[str, Any], name: str | None = None, **spec: Any) -> dict[str, Any]:
    """``base`` with ``spec`` keys replaced (a value of None removes the key)."""
    doc = copy.deepcopy(base)
    if name is not None:
        doc["metadata"]["name"] = name
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


# (object, what the API server's refusal must say). The messages are the real server's wording for
# schema errors, and the CRDs' own for CEL rules.
REFUSED = [
    pytest.param(edited(HIVE, gatewayPort="nine"), ['spec.gatewayPort: Invalid value: "string"',
                                                    "must be of type integer"], id="hive-port-type"),
    pytest.param(edited(HIVE, gatewayPort=70000), ["spec.gatewayPort", "less than or equal to 65535"],
                 id="hive-port-range"),
    pytest.param(edited(HIVE, wan={"listen": "0.0.0.0:70000"}), ["spec.wan.listen", "should match"],
                 id="hive-wan-listen-port"),
    pytest.param(edited(HIVE, wan={"uplinks": [{"address": "a.example:9000", "service": "b-gateway"}]}),
                 ["an uplink names exactly one of address or service"], id="hive-wan-uplink-both"),
    pytest.param(edited(HIVE, wan={"uplinks": [{"address": "a.example:9000", "port": 9000}]}),
                 ["namespace and port go with service, not with address"], id="hive-wan-uplink-port"),
    pytest.param(edited(HIVE, wan={"authorizedHives": ["a", "a"]}),
                 ['spec.wan.authorizedHives[1]: Duplicate value: "a"'], id="hive-wan-authorized-twice"),
    pytest.param(edited(HIVE, wan={"authorizedHives": ["no.dots"]}), ["spec.wan.authorizedHives[0]", "should match"],
                 id="hive-wan-authorized-pattern"),
    pytest.param(edited(HIVE, identity={"database": {"mode": "url"}}), ["database mode url needs urlSecret"],
                 id="hive-identity-url-without-secret"),
    pytest.param(edited(HIVE, role="queen"), ['spec.role: Unsupported value: "queen"', '"motherbee", "worker"'],
                 id="hive-role-enum"),
    pytest.param(edited(HIVE, routes=[{"prefix": "AI.sales.", "action": "FORWARD"}]),
                 ["a FORWARD route needs nextHopHive"], id="hive-forward-without-hop"),
    pytest.param(edited(HIVE, routes=[{"prefix": "AI.x.", "action": "REDIRECT", "nextHopHive": "b"}]),
                 ['spec.routes[0].action: Unsupported value: "REDIRECT"'], id="hive-route-action-enum"),
    pytest.param(edited(HIVE, routes=[{"action": "DROP"}]), ["spec.routes[0].prefix: Required value"],
                 id="hive-route-prefix-required"),
    pytest.param(edited(HIVE, routerName="AI.gateway"), ["the router's L2 name must be of type RT"],
                 id="hive-router-not-rt"),
    pytest.param(edited(HIVE, name="my.hive"), ["without spec.hiveId the name is the hive id"],
                 id="hive-dotted-name"),
    pytest.param(edited(HIVE, hiveId="bad.id"), ["spec.hiveId", "should match"], id="hive-id-pattern"),
    pytest.param(edited(HIVE, routes=[{"prefix": "AI.", "nextHopHive": "no.dots"}]),
                 ["spec.routes[0].nextHopHive", "should match"], id="hive-next-hop-pattern"),
    pytest.param(edited(HIVE, vpns=[{"pattern": "WF."}]), ["spec.vpns[0].vpnId: Required value"],
                 id="hive-vpn-id-required"),
    pytest.param(edited(HIVE, socketDir="relative/dir"), ["spec.socketDir", "should match"],
                 id="hive-socket-dir-pattern"),
    pytest.param({k: v for k, v in HIVE.items() if k != "spec"}, ["spec: Required value"], id="hive-spec-required"),
    pytest.param(edited(NODE, runtime=None), ["spec.runtime: Required value"], id="node-runtime-required"),
    pytest.param(edited(NODE, nodeName="XX.echo"), ["nodeName must be TYPE.field[.field…][@hive]"],
                 id="node-name-type"),
    pytest.param(edited(NODE, nodeName="AI"), ["nodeName must be TYPE.field"], id="node-name-one-field"),
    pytest.param(edited(NODE, replicas=-1), ["spec.replicas", "greater than or equal to 0"],
                 id="node-replicas-negative"),
    pytest.param(edited(NODE, replicas="two"), ['spec.replicas: Invalid value: "string"'], id="node-replicas-type"),
    pytest.param(edited(NODE, config={"_system": {"hive_id": "other"}}),
                 ["config may not set `_system`: it is filled in by the hive"], id="node-config-system"),
    pytest.param(edited(NODE, tenantId="acme"), ["tenantId must be tnt:<uuid>"], id="node-tenant"),
    pytest.param(edited(NODE, degree={"name": "d", "version": "1", "graduation": {"digest": SHA, "signature": "s"}}),
                 ["degree needs agentIlk: a graduation binds a degree to an ILK"], id="node-degree-without-ilk"),
    pytest.param(edited(NODE, agentIlk="ilk:nope"), ["spec.agentIlk", "should match"], id="node-ilk-pattern"),
    pytest.param(edited(NODE, agentIlk=ILK, degree={"name": "d", "version": "1",
                                                    "graduation": {"digest": "short", "signature": "s"}}),
                 ["spec.degree.graduation.digest", "should match"], id="node-graduation-digest"),
    pytest.param(edited(NODE, env={"A": 1}), ['spec.env.A: Invalid value: "integer"'], id="node-env-type"),
    pytest.param(edited(RUNTIME, name="my-runtime"), ["a runtime name must match"], id="runtime-name"),
    pytest.param(edited(RUNTIME, runtimeBase="fluxbee.echo"),
                 ["full_runtime packages have no runtimeBase; config_only and workflow need one"],
                 id="runtime-full-with-base"),
    pytest.param(edited(RUNTIME, type="config_only"),
                 ["full_runtime packages have no runtimeBase; config_only and workflow need one"],
                 id="runtime-config-only-without-base"),
    pytest.param(edited(RUNTIME, type="workflow", command=None, runtimeBase="fluxbee.echo"),
                 ["a workflow package needs a flow"], id="runtime-workflow-without-flow"),
    pytest.param(edited(RUNTIME, command=None), ["a full_runtime package needs a command or an image"],
                 id="runtime-full-without-entry-point"),
    pytest.param(edited(RUNTIME, type="binary"), ['spec.type: Unsupported value: "binary"'], id="runtime-type-enum"),
    pytest.param(edited(RUNTIME, version="1 0"), ["spec.version", "should match"], id="runtime-version-pattern"),
    pytest.param(edited(RUNTIME, version="current"), ["version `current` is reserved"], id="runtime-version-current"),
    pytest.param(edited(RUNTIME, command="fluxbee node echo"), ['spec.command: Invalid value: "string"'],
                 id="runtime-command-type"),
    pytest.param(edited(MODULE, content=None), ["spec.content: Required value"], id="module-content-required"),
    pytest.param(edited(MODULE, version="v" * 65), ["spec.version", "Too long", "64"], id="module-version-length"),
    pytest.param(edited(DEGREE, modules=[]), ["spec.modules", "should have at least 1 items"],
                 id="degree-no-modules"),
    pytest.param(edited(DEGREE, modules=[{"name": "tone", "version": "1"}, {"name": "tone", "version": "2"}]),
                 ["a degree pins each module at most once"], id="degree-module-twice"),
    pytest.param(edited(DEGREE, modules=[{"name": "tone", "version": "1", "sha256": "abc"}]),
                 ["spec.modules[0].sha256", "should match"], id="degree-sha-pattern"),
    pytest.param(edited(POLICY, rego=None), ["spec.rego: Required value"], id="policy-rego-required"),
    pytest.param(edited(POLICY, entrypoint="router.target"), ["spec.entrypoint", "should match"],
                 id="policy-entrypoint-pattern"),
]


@pytest.mark.parametrize(("doc", "says"), REFUSED)
def test_the_api_server_refuses_a_bad_object_with_the_expected_message(
    crds: ControlPlane, namespace: str, doc: dict[str, Any], says: list[str],
) -> None:
    proc = create(crds, namespace, doc)
    assert proc.returncode != 0, f"the API server accepted {json.dumps(doc)}"
    for fragment in says:
        assert fragment in proc.stderr, f"{fragment!r} not in: {proc.stderr}"
    assert crds.get_json("-n", namespace, "fluxbee")["items"] == []


def test_every_crd_applies_with_kubectl_and_is_established(control_plane: ControlPlane) -> None:
    names = apply_crds(control_plane)
    for name in names:
        conditions = {c["type"]: c["status"] for c in control_plane.get_json("crd", name)["status"]["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}, name
    again = control_plane.kubectl("apply", "-f", str(REPO / "crds")).stdout
    assert again.count("unchanged") == len(names), again


def test_the_chart_carries_the_same_crd_files_as_the_crds_folder() -> None:
    for path in (REPO / "crds").glob("*.yaml"):
        assert (REPO / "charts" / "fluxbee" / "crds" / path.name).read_bytes() == path.read_bytes(), path.name


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = [(path.name, doc) for path in sorted((REPO / "examples").glob("*.yaml"))
           for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    out += [("README.md", doc) for doc in readme_resources()]
    return out


def _contains(stored: Any, given: Any) -> bool:
    """Everything in ``given`` is in ``stored`` (which may hold defaults besides)."""
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(k in stored and _contains(stored[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(stored, list) and len(stored) == len(given) and all(
            _contains(s, g) for s, g in zip(stored, given, strict=True))
    return bool(stored == given)


def test_the_examples_and_the_readme_objects_are_accepted_and_kept_whole(
    crds: ControlPlane, namespace: str, tmp_path: Path,
) -> None:
    docs = _documents()
    assert {d["kind"] for _, d in docs} == {"Hive", "FluxNode", "Runtime", "Module", "Degree", "Policy"}
    seen: set[tuple[str, str]] = set()
    for where, doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:  # the README's hive and the example's may share a name: apply each in turn
            crds.kubectl("-n", namespace, "delete", doc["kind"].lower(), doc["metadata"]["name"])
        seen.add(key)
        proc = crds.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(doc), check=False)
        assert proc.returncode == 0, f"{where}: {doc['kind']} {doc['metadata']['name']}: {proc.stderr}"
        stored = crds.get_json("-n", namespace, doc["kind"].lower(), doc["metadata"]["name"])
        assert _contains(stored["spec"], doc["spec"]), f"{where}: the API server dropped or changed a field: " \
            f"{doc['spec']} → {stored['spec']}"


def test_the_schema_defaults_are_written_by_the_api_server(crds: ControlPlane, namespace: str) -> None:
    for doc in (HIVE, NODE, RUNTIME, POLICY, edited(HIVE, name="routed", routes=[{"prefix": "AI.", "action": "DROP"}],
                                                   vpns=[{"pattern": "WF.", "vpnId": 3}])):
        crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(doc))
    hive = crds.get_json("-n", namespace, "hive", "demo")["spec"]
    assert hive == {"role": "motherbee", "routerName": "RT.gateway", "routerScheduling": "batch", "routerBusyPollUs": 0,
                    "gatewayPort": 9000, "meshPort": 9001}
    routed = crds.get_json("-n", namespace, "hive", "routed")["spec"]
    assert routed["routes"] == [{"prefix": "AI.", "action": "DROP", "matchKind": "PREFIX", "metric": 0,
                                 "priority": 100}]
    assert routed["vpns"] == [{"pattern": "WF.", "vpnId": 3, "matchKind": "PREFIX", "priority": 100}]
    node = crds.get_json("-n", namespace, "fluxnode", "echo")["spec"]
    assert (node["replicas"], node["runtimeVersion"]) == (1, "current")
    assert crds.get_json("-n", namespace, "runtime", "fluxbee.echo")["spec"]["type"] == "full_runtime"
    assert crds.get_json("-n", namespace, "policy", "route")["spec"]["entrypoint"] == "data.router.target"


def test_unknown_fields_are_refused_by_kubectl_and_pruned_without_validation_but_config_keeps_them(
    crds: ControlPlane, namespace: str,
) -> None:
    doc = edited(NODE, colour="blue", config={"model": {"name": "small", "layers": [1, 2]}})
    strict = create(crds, namespace, doc)
    assert strict.returncode != 0
    assert 'unknown field "spec.colour"' in strict.stderr
    crds.kubectl("-n", namespace, "create", "-f", "-", "--validate=false", input=json.dumps(doc))
    spec = crds.get_json("-n", namespace, "fluxnode", "echo")["spec"]
    assert "colour" not in spec
    assert spec["config"] == {"model": {"name": "small", "layers": [1, 2]}}


@pytest.mark.parametrize(("doc", "change", "says"), [
    pytest.param(edited(HIVE, hiveId="alpha"), {"hiveId": "beta"}, "spec.hiveId is immutable", id="hive-id"),
    pytest.param(HIVE, {"hiveId": "beta"}, "spec.hiveId is immutable", id="hive-id-added"),
    pytest.param(NODE, {"nodeName": "AI.echo.b"}, "spec.nodeName is immutable", id="node-name"),
    pytest.param(NODE, {"hive": "other"}, "spec.hive is immutable", id="node-hive"),
    pytest.param(RUNTIME, {"type": "config_only", "command": None, "runtimeBase": "fluxbee.base"},
                 "spec.type is immutable", id="runtime-type"),
])
def test_an_immutable_field_cannot_be_changed_after_creation(
    crds: ControlPlane, namespace: str, doc: dict[str, Any], change: dict[str, Any], says: str,
) -> None:
    crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(doc))
    kind, name = doc["kind"].lower(), doc["metadata"]["name"]
    before = crds.get_json("-n", namespace, kind, name)["spec"]
    proc = crds.kubectl("-n", namespace, "patch", kind, name, "--type=merge", "-p", json.dumps({"spec": change}),
                        check=False)
    assert proc.returncode != 0, f"the change {change} was accepted"
    assert says in proc.stderr
    assert crds.get_json("-n", namespace, kind, name)["spec"] == before
    allowed = crds.kubectl("-n", namespace, "label", kind, name, "touched=yes")  # other edits still go through
    assert "labeled" in allowed.stdout


STATUS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]] = {
    "hives": ("demo", HIVE, {"hiveId": "demo", "desiredPods": 3, "readyPods": 2, "phase": "Reconciling"},
              {"HIVE-ID": "demo", "ROLE": "motherbee", "DESIRED": "3", "READY": "2", "PHASE": "Reconciling"}),
    "fluxnodes": ("echo", edited(NODE, replicas=2),
                  {"runtimeVersion": "0.1.0", "readyReplicas": 1, "replicas": 2, "phase": "Degraded",
                   "conditions": [{"type": "Degraded", "status": "True", "reason": "PodsNotReady",
                                   "message": "1 of 2 Pods ready"}]},
                  {"NODE-NAME": "AI.echo.a", "HIVE": "demo", "RUNTIME": "fluxbee.echo", "VERSION": "0.1.0",
                   "REPLICAS": "2", "READY": "1", "PHASE": "Degraded"}),
    "runtimes": ("fluxbee.echo", RUNTIME, {"phase": "Ready", "image": "example.invalid/echo:1"},
                 {"TYPE": "full_runtime", "VERSION": "0.1.0", "BASE": "", "PHASE": "Ready"}),
    "modules": ("tone", MODULE, {"phase": "Ready", "sha256": SHA, "signature": "NotPinned"},
                {"VERSION": "1", "SIGNATURE": "NotPinned", "PHASE": "Ready"}),
    "degrees": ("support-l1", DEGREE, {"phase": "Ready", "digest": SHA, "graduations": "1/1"},
                {"VERSION": "1", "GRADUATIONS": "1/1", "PHASE": "Ready"}),
    "policies": ("route", POLICY, {"phase": "Degraded", "sha256": SHA, "error": "1:1: unexpected token",
                                   "conditions": [{"type": "Degraded", "status": "True", "reason": "RegoInvalid",
                                                   "message": "1:1: unexpected token"}]},
                 {"ENTRYPOINT": "data.router.target", "PHASE": "Degraded"}),
}


@pytest.mark.parametrize("plural", list(STATUS))
def test_kubectl_get_shows_the_status_set_through_the_status_subresource(
    crds: ControlPlane, namespace: str, plural: str,
) -> None:
    name, doc, status, columns = STATUS[plural]
    crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(doc))
    # Through the main resource a status is ignored (the status subresource owns it) ...
    crds.kubectl("-n", namespace, "patch", plural, name, "--type=merge", "-p", json.dumps({"status": status}))
    assert "status" not in crds.get_json("-n", namespace, plural, name)
    # ... and through the subresource the spec is ignored.
    crds.kubectl("-n", namespace, "patch", plural, name, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status, "spec": {"zzz": 1}}))
    stored = crds.get_json("-n", namespace, plural, name)
    assert stored["status"] == status and "zzz" not in stored["spec"]
    [row] = table(crds.kubectl("-n", namespace, "get", plural, name).stdout)
    assert {k: row[k] for k in columns} == columns and row["NAME"] == name
    if "conditions" in status:
        [wide] = table(crds.kubectl("-n", namespace, "get", plural, name, "-o", "wide").stdout)
        assert wide["MESSAGE"] == status["conditions"][0]["message"]


def test_a_status_outside_its_schema_is_refused(crds: ControlPlane, namespace: str) -> None:
    crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(HIVE))
    for status, says in (({"phase": "Happy"}, 'status.phase: Unsupported value: "Happy"'),
                         ({"readyPods": -1}, "status.readyPods"),
                         ({"conditions": [{"type": "Ready"}]}, "status.conditions[0].status: Required value")):
        proc = crds.kubectl("-n", namespace, "patch", "hive", "demo", "--subresource=status", "--type=merge",
                            "-p", json.dumps({"status": status}), check=False)
        assert proc.returncode != 0 and says in proc.stderr, (status, proc.stderr)


def test_short_names_and_the_fluxbee_category_find_every_kind(crds: ControlPlane, namespace: str) -> None:
    for doc in (HIVE, NODE, RUNTIME, MODULE, DEGREE, POLICY):
        crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(doc))
    for short, kind, name in (("hv", "Hive", "demo"), ("fn", "FluxNode", "echo"), ("fnode", "FluxNode", "echo"),
                              ("frt", "Runtime", "fluxbee.echo"), ("fmod", "Module", "tone"),
                              ("deg", "Degree", "support-l1"), ("fpol", "Policy", "route")):
        [item] = crds.get_json("-n", namespace, short)["items"]
        assert (item["kind"], item["metadata"]["name"]) == (kind, name), short
    every = crds.get_json("-n", namespace, "fluxbee")["items"]
    assert sorted(i["kind"] for i in every) == ["Degree", "FluxNode", "Hive", "Module", "Policy", "Runtime"]


def test_kubectl_get_nodes_still_means_the_kubernetes_nodes(crds: ControlPlane, namespace: str) -> None:
    crds.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(NODE))
    for word in ("nodes", "node", "no"):
        items = crds.get_json(word)["items"]
        assert len(items) == 3 and {(i["apiVersion"], i["kind"]) for i in items} == {("v1", "Node")}, word
    [item] = crds.get_json("-n", namespace, "fluxnodes")["items"]
    assert item["kind"] == "FluxNode"


@pytest.mark.parametrize(("field", "says"), [
    ("hive.spec.routes", "Static routes."),
    ("hive.spec.routerScheduling", "CPU scheduling class of the router"),
    ("fluxnode.spec.degree", "Pods start only if its graduation verifies"),
    ("fluxnode.spec.config._system", "Reserved: filled in by the hive"),
    ("fluxnode.status.readyReplicas", "Pods that are ready."),
    ("runtime.spec.type", "Package type: full_runtime, config_only or workflow."),
    ("module.spec.content", "The prompt fragment (UTF-8 text)."),
    ("degree.spec.modules.sha256", "Expected sha256 of the module content"),
    ("policy.spec.entrypoint", "Rule queried for each routing decision."),
])
def test_kubectl_explain_shows_the_field_descriptions(crds: ControlPlane, field: str, says: str) -> None:
    text = explain(crds, field)
    assert says in " ".join(text.split()), text
