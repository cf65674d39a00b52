"""``Policy`` resources on the real control plane, reconciled by ``fluxbee operator`` as the chart runs it.

The operator is logged in with the chart's ServiceAccount token and finds ``opa`` where a user's
PATH has it (the tool folder of the control plane holds the pinned one), so it compiles to
WebAssembly.  Checked through the API server only: the Policy's status, the immutable version
ConfigMaps (their binaryData hashes to the recorded sha256 and decodes as a verified artefact), the
hive's policy ConfigMap and the DaemonSet mounting it into every router; bad Rego (Degraded with
line and column, nothing delivered, the running version untouched); a new version; a rollback by
``spec.pinVersion``; pruning to ``keepVersions``; a second Policy for a taken hive; deletion (the
garbage collector removes what the Policy made).  The in-pod half is test_policy_router_mount.py.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cluster_support import ControlPlane
from operator_support import (
    FluxbeeProcess,
    apply,
    condition,
    get,
    objects,
    reconciled,
)

from fluxbee.dataplane.policy import Artefact

RULES = 'package router\n\ntarget := "WF.{name}@pol" if {{\n\tinput.meta.action == "route"\n}}\n'
BAD = 'package router\n\ntarget := "x" if {\n\tinput.meta.action ==\n}\n'
VERSIONS = "fluxbee.io/policy=route,app.kubernetes.io/component=policy-version"


def hive() -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": "pol"},
            "spec": {"hiveId": "pol"}}


def policy(rego: str, name: str = "route", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Policy", "metadata": {"name": name},
            "spec": {"rego": rego, **spec}}


def artefact_of(cm: dict[str, Any]) -> tuple[bytes, Artefact]:
    raw = base64.b64decode(cm["binaryData"]["artefact"])
    assert hashlib.sha256(raw).hexdigest() == cm["data"]["sha256"]
    return raw, Artefact.from_bytes(raw)  # verifies the module against its own digest too


def delivered_at(cp: ControlPlane, ns: str, version: int) -> Any:
    def probe() -> dict[str, Any] | None:
        obj = reconciled(cp, ns, "policy", "route", "Ready")()
        return obj if obj and obj["status"].get("deliveredVersion") == version else None

    return probe


def test_a_policy_is_compiled_stored_per_version_delivered_pinned_back_and_deleted(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    engine = "wasm" if (cp.bin / "opa").exists() else "regorus"
    apply(cp, ns, [hive(), policy(RULES.format(name="a"), keepVersions=2)])

    # version 1: compiled, stored, delivered to the hive, mounted by its routers
    status = operator.wait_for("version 1 delivered", delivered_at(cp, ns, 1), timeout=90)["status"]
    # (a field set to null by the operator's merge patch is absent)
    assert (status["compiledVersion"], status["engine"], status.get("pinnedVersion")) == (1, engine, None)
    assert "error" not in status and "errorLine" not in status
    assert (engine == "wasm") == status["compiler"].startswith("opa ")
    stored = get(cp, ns, "configmap", "route-policy-v1")
    assert stored is not None and stored["immutable"] is True
    assert stored["metadata"]["ownerReferences"][0]["kind"] == "Policy"
    raw1, art1 = artefact_of(stored)
    assert art1.engine == engine and 'WF.a@pol' in art1.source
    assert status["deliveredSha256"] == hashlib.sha256(raw1).hexdigest()
    assert status["versions"] == [{"version": 1, "sha256": status["deliveredSha256"], "engine": engine,
                                   "configMap": "route-policy-v1", "sourceSha256": stored["data"]["sourceSha256"]}]
    hive_cm = get(cp, ns, "configmap", "pol-policy")
    assert hive_cm is not None and hive_cm["data"]["version"] == "1"
    assert artefact_of(hive_cm)[0] == raw1
    assert status["hives"] == [{"hive": "pol", "configMap": "pol-policy", "version": 1,
                                "sha256": status["deliveredSha256"], "state": "Delivered", "message": ""}]
    ds = operator.wait_for("the hive DaemonSet", lambda: get(cp, ns, "daemonset", "pol-hive"))
    pod = ds["spec"]["template"]["spec"]
    assert {"name": "policy", "configMap": {"name": "pol-policy", "optional": True, "defaultMode": 420}} in \
        pod["volumes"]
    router = next(c for c in pod["containers"] if c["name"] == "router")
    assert {"name": "policy", "mountPath": "/etc/fluxbee/policy", "readOnly": True} in router["volumeMounts"]
    assert router["command"][router["command"].index("--policy-dir") + 1] == "/etc/fluxbee/policy"

    # bad Rego: Degraded with line and column, no version taken, version 1 stays delivered
    apply(cp, ns, policy(BAD, keepVersions=2))
    bad = operator.wait_for("the compile error", reconciled(cp, ns, "policy", "route", "Degraded"), timeout=90)
    st = bad["status"]
    assert condition(bad, "Degraded")["reason"] == "CompileError"
    assert isinstance(st["errorLine"], int) and st["errorLine"] >= 4 and isinstance(st["errorColumn"], int)
    assert f":{st['errorLine']}:{st['errorColumn']}:" in condition(bad, "Degraded")["message"]
    assert (st["compiledVersion"], st["deliveredVersion"]) == (1, 1)
    assert [c["metadata"]["name"] for c in objects(cp, ns, "configmaps", VERSIONS)] == ["route-policy-v1"]
    assert artefact_of(get(cp, ns, "configmap", "pol-policy") or {})[0] == raw1

    # versions 2 and 3: each delivered; keepVersions=2 prunes version 1
    apply(cp, ns, policy(RULES.format(name="b"), keepVersions=2))
    status = operator.wait_for("version 2 delivered", delivered_at(cp, ns, 2), timeout=90)["status"]
    assert "error" not in status and "errorLine" not in status
    raw2, art2 = artefact_of(get(cp, ns, "configmap", "pol-policy") or {})
    assert 'WF.b@pol' in art2.source and raw2 != raw1
    apply(cp, ns, policy(RULES.format(name="c"), keepVersions=2))
    status = operator.wait_for("version 3 delivered", delivered_at(cp, ns, 3), timeout=90)["status"]
    assert [v["version"] for v in status["versions"]] == [3, 2]
    assert [c["metadata"]["name"] for c in objects(cp, ns, "configmaps", VERSIONS)] == [
        "route-policy-v2", "route-policy-v3"]

    # rollback: pin version 2; the hive's ConfigMap holds version 2's artefact again
    apply(cp, ns, policy(RULES.format(name="c"), keepVersions=2, pinVersion=2))
    pinned = operator.wait_for("version 2 pinned", delivered_at(cp, ns, 2), timeout=90)
    status = pinned["status"]
    assert (status["pinnedVersion"], status["compiledVersion"]) == (2, 3)
    assert condition(pinned, "Ready")["message"].endswith("(pinned; newest compiled: 3)")
    hive_cm = get(cp, ns, "configmap", "pol-policy") or {}
    assert hive_cm["data"]["version"] == "2" and artefact_of(hive_cm)[0] == raw2
    # a pin on a version no longer kept changes nothing
    apply(cp, ns, policy(RULES.format(name="c"), keepVersions=2, pinVersion=1))
    gone = operator.wait_for("the unknown pin refused",
                             reconciled(cp, ns, "policy", "route", "Degraded"), timeout=90)
    assert condition(gone, "Degraded")["reason"] == "PinnedVersionNotStored"
    assert (get(cp, ns, "configmap", "pol-policy") or {})["data"]["version"] == "2"

    # a second Policy for the same hive does not take it
    apply(cp, ns, policy(RULES.format(name="z"), name="other", hives=["pol"]))
    other = operator.wait_for("the second Policy refused the hive",
                              reconciled(cp, ns, "policy", "other", "Degraded"), timeout=90)
    assert condition(other, "Degraded")["reason"] == "HiveTaken"
    assert other["status"]["hives"][0]["state"] == "Taken"
    assert (get(cp, ns, "configmap", "pol-policy") or {})["data"]["policy"] == "route"

    # deletion: the garbage collector removes the versions and the hive's copy
    cp.kubectl("-n", ns, "delete", "policy", "route", "other", "--wait=true", "--timeout=60s")
    operator.wait_for("the Policy's ConfigMaps collected",
                      lambda: not objects(cp, ns, "configmaps", "fluxbee.io/policy"), timeout=90)
    operator.check_alive()


def test_a_policy_for_every_hive_reaches_a_hive_created_later_and_a_deleted_copy_comes_back(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, policy(RULES.format(name="a")))
    status = operator.wait_for("version 1 compiled, no hive yet", delivered_at(cp, ns, 1), timeout=90)["status"]
    assert "hives" not in status or status["hives"] == []
    assert condition(get(cp, ns, "policy", "route") or {}, "Ready")["message"].endswith(
        "no hive (none in the namespace)")

    apply(cp, ns, hive())  # the Hive's reconcile wakes the Policies of its namespace
    hive_cm = operator.wait_for("the new hive's policy ConfigMap", lambda: get(cp, ns, "configmap", "pol-policy"),
                                timeout=90)
    assert hive_cm["data"]["version"] == "1" and hive_cm["data"]["policy"] == "route"

    cp.kubectl("-n", ns, "delete", "configmap", "pol-policy")  # by hand: the operator puts it back
    back = operator.wait_for("the hive's policy ConfigMap put back",
                             lambda: get(cp, ns, "configmap", "pol-policy"), timeout=90)
    assert back["metadata"]["uid"] != hive_cm["metadata"]["uid"] and back["data"]["version"] == "1"

    # naming no hive withdraws the copy; the version stays stored
    apply(cp, ns, policy(RULES.format(name="a"), hives=[]))
    operator.wait_for("the copy withdrawn", lambda: get(cp, ns, "configmap", "pol-policy") is None, timeout=90)
    done = operator.wait_for("the Policy reconciled", reconciled(cp, ns, "policy", "route", "Ready"))
    st = done["status"]
    assert (st["deliveredVersion"], st["compiledVersion"]) == (1, 1)
    assert condition(done, "Ready")["message"].endswith("no hive (spec.hives is empty)")
    assert get(cp, ns, "configmap", "route-policy-v1") is not None
