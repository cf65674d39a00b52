"""Module / Degree digests and Policy compile results reach status through the real operator."""

from __future__ import annotations

import hashlib
from typing import Any

from operator_kmock_support import NS, Cluster, OperatorHandle, eventually

from fluxbee.dataplane.policy import OpaNotFound, find_opa
from fluxbee.identity import degrees as dg


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def phase(cluster: Cluster, plural: str, name: str, want: str) -> Any:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.api.get(plural, NS, name)
        status = (obj or {}).get("status") or {}
        return status if status.get("phase") == want else None

    return eventually(probe, what=f"{plural}/{name} {want}")


async def test_module_and_degree_digests_follow_content(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await cluster.api.create("degrees", NS, doc("Degree", "l1", {
        "version": "1", "modules": [{"name": "tone", "version": "1"}],
    }))
    status = await phase(cluster, "degrees", "l1", "Degraded")
    assert status["conditions"][2]["reason"] == "ModuleNotFound"

    await cluster.api.create("modules", NS, doc("Module", "tone", {"version": "1", "content": "Be kind."}))
    sha = hashlib.sha256(b"Be kind.").hexdigest()
    module = await phase(cluster, "modules", "tone", "Ready")
    assert module["sha256"] == sha and module["size"] == 8
    assert module["signature"] == "CoveredByDegree" and module["pinnedBy"] == ["l1"]

    degree = await phase(cluster, "degrees", "l1", "Ready")  # woken by the module
    # the identity service's encoding, so agents, SY.identity and the operator agree
    assert degree["digest"] == dg.degree_digest([dg.PinnedModule("tone", "1", sha)])
    assert degree["graduations"] == "0/0"

    await cluster.api.patch("modules", NS, "tone", {"spec": {"version": "2", "content": "Be brief."}})
    degree = await phase(cluster, "degrees", "l1", "Degraded")
    assert degree["conditions"][2]["reason"] == "ModuleVersionMismatch"


async def test_policy_compile_errors_are_reported_in_status(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    good = "package router\n\ndefault target := \"AI.support.l1\"\n"
    await cluster.api.create("policies", NS, doc("Policy", "ok", {"rego": good, "hives": []}))
    await cluster.api.create("policies", NS, doc("Policy", "bad", {"rego": "package router\ntarget := if {",
                                                                   "hives": []}))

    ok = await phase(cluster, "policies", "ok", "Ready")
    assert (ok["compiledVersion"], ok["deliveredVersion"]) == (1, 1)
    try:  # the engine status names is the one this machine can compile for
        find_opa()
    except OpaNotFound:
        assert (ok["engine"], ok["compiler"]) == ("regorus", "regorus") and "opa" in ok["fallbackReason"]
    else:
        assert ok["engine"] == "wasm" and ok["compiler"].startswith("opa ") and "fallbackReason" not in ok
    bad = await phase(cluster, "policies", "bad", "Degraded")
    assert bad["conditions"][2]["reason"] == "CompileError"
    assert bad["errorLine"] == 2 and ":2:" in bad["error"] and "Stack backtrace" not in bad["error"]
    assert "compiledVersion" not in bad and "deliveredVersion" not in bad  # nothing compiled, nothing delivered

    await cluster.api.patch("policies", NS, "bad", {"spec": {"rego": good}})
    fixed = await phase(cluster, "policies", "bad", "Ready")
    assert fixed["observedGeneration"] == 2 and "error" not in fixed and fixed["deliveredVersion"] == 1
