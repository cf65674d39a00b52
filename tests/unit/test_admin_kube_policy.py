"""The cluster admin API's Policy access: which Policy is the hive's, the envelopes, pins, the report."""

from __future__ import annotations

import base64
import gc
import hashlib
import time
from typing import Any

import pytest

from fluxbee.admin.errors import AdminError
from fluxbee.admin.kube_policy import STAGED_ANNOTATION, KubePolicies, staged_version
from fluxbee.admin.kube_policy_check import artefact_from_config_map, rule_path
from fluxbee.dataplane.policy.artefact import Artefact
from fluxbee.kube import JSON_PATCH, ApiError


class FakeApi:
    def __init__(self, *policies: dict[str, Any]) -> None:
        self.policies = {p["metadata"]["name"]: p for p in policies}
        self.patches: list[tuple[str, Any, str | None]] = []
        self.json_patches: list[Any] = []
        self.on_patch: Any = None

    async def list(self, plural: str, namespace: str, labels: Any = None) -> list[dict[str, Any]]:
        assert plural == "policies"
        return list(self.policies.values())

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.policies.get(name)

    async def patch(self, plural: str, namespace: str, name: str, body: Any, *, subresource: str | None = None,
                    content_type: str = "") -> dict[str, Any]:
        if content_type == JSON_PATCH:  # the guarded writes: refused while the object moved on
            self.json_patches.append(body)
            if body[0]["value"] != self.policies[name]["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified", method="PATCH", path=name)
            if self.on_patch is not None:
                self.on_patch()
        self.patches.append((name, body, subresource))
        return self.policies[name]


class FakeLink:
    def __init__(self, policy: dict[str, Any] | None) -> None:
        self.policy = policy

    async def router_status(self) -> dict[str, Any]:
        if self.policy is None:
            raise AdminError("ROUTER_UNREACHABLE", "no router")
        return {"policy": self.policy}


def policy(name: str, *, hives: list[str] | None = None, delivered_to: str | None = None, created: str = "1",
           **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"rego": "package router"}
    if hives is not None:
        spec["hives"] = hives
    if delivered_to:
        status["hives"] = [{"hive": delivered_to, "state": "Delivered"}]
    return {"metadata": {"name": name, "creationTimestamp": created, "generation": 1, "resourceVersion": "1"},
            "spec": spec,
            "status": status}


def policies(api: FakeApi) -> KubePolicies:
    return KubePolicies(api, "ns", "demo", "demo-id", "admin-0")  # type: ignore[arg-type]


async def test_the_hives_policy_is_the_delivering_one_then_the_naming_one_then_one_for_all() -> None:
    every, named, other = policy("every", created="0"), policy("named", hives=["demo"]), policy("x", hives=["x"])
    assert (await policies(FakeApi(every, other)).find() or {})["metadata"]["name"] == "every"
    assert (await policies(FakeApi(every, named, other)).find() or {})["metadata"]["name"] == "named"
    delivering = policy("z", hives=["demo"], delivered_to="demo", created="9")
    assert (await policies(FakeApi(every, named, delivering)).find() or {})["metadata"]["name"] == "z"
    assert await policies(FakeApi(other)).find() is None


def test_the_answer_is_the_envelope_pending_or_the_compile_error() -> None:
    kp = policies(FakeApi())
    written = policy("p")
    pending = kp.answer("compile", written, None, time.perf_counter())
    assert (pending["status"], pending["pending_hives"]) == ("sync_pending", ["demo-id"])
    ready = policy("p", delivered_to="demo", deliveredVersion=4, deliveredSha256="ab" * 32, engine="wasm",
                   conditions=[{"type": "Degraded", "status": "False"}])
    out = kp.answer("compile", written, ready, time.perf_counter())
    assert (out["status"], out["version"]) == ("ok", 4)
    assert out["responses"] == [{"hive": "demo-id", "status": "ok", "version": 4, "hash": "sha256:" + "ab" * 32,
                                 "engine": "wasm", "fallback_reason": None, "applied": True}]
    bad = policy("p", error="policy.rego:4:3: boom", errorLine=4, errorColumn=3,
                 conditions=[{"type": "Degraded", "status": "True", "reason": "CompileError",
                              "message": "policy.rego:4:3: boom"}])
    with pytest.raises(AdminError) as caught:
        kp.answer("compile", written, bad, time.perf_counter())
    assert caught.value.code == "COMPILE_ERROR" and caught.value.payload is not None
    assert (caught.value.payload["line"], caught.value.payload["column"]) == (4, 3)


async def test_a_rollback_pins_the_version_before_the_delivered_one_or_says_why_not() -> None:
    kept = [{"version": v} for v in (5, 3, 2)]
    api = FakeApi(policy("p", hives=["demo"], deliveredVersion=5, versions=kept))
    await policies(api).pin(None)
    ops = api.json_patches[-1]
    assert {"op": "add", "path": "/spec", "value": {"rego": "package router", "hives": ["demo"], "pinVersion": 3}} \
        in ops
    with pytest.raises(AdminError) as caught:
        await policies(api).pin(4)
    assert caught.value.code == "NOT_FOUND"
    lone = FakeApi(policy("p", hives=["demo"], deliveredVersion=2, versions=[{"version": 2}]))
    with pytest.raises(AdminError) as caught:
        await policies(lone).pin(None)
    assert caught.value.code == "NO_BACKUP"


async def test_the_router_report_is_written_once_per_change_and_never_without_a_router() -> None:
    api = FakeApi(policy("p", hives=["demo"]))
    kp = policies(api)
    await kp.report(FakeLink(None))  # type: ignore[arg-type]
    assert api.patches == []
    running = {"version": 2, "hash": "sha256:" + "cd" * 32, "engine": "regorus", "status": "loaded", "error": None}
    await kp.report(FakeLink(running))  # type: ignore[arg-type]
    await kp.report(FakeLink(running))  # type: ignore[arg-type]
    assert len(api.patches) == 1
    name, body, sub = api.patches[0]
    entry = body["status"]["applied"]["demo"]
    assert (name, sub, entry["version"], entry["sha256"], entry["reportedBy"]) == ("p", "status", 2, "cd" * 32,
                                                                                    "admin-0")
    refused = {**running, "status": "error", "error": {"code": "HASH_MISMATCH", "detail": "bytes differ"}}
    await kp.report(FakeLink(refused))  # type: ignore[arg-type]
    assert api.patches[-1][1]["status"]["applied"]["demo"]["error"] == "HASH_MISMATCH: bytes differ"


def staged_policy(*, staged: bool = True, compiled: int = 3, delivered: int = 1, generation: int = 7,
                  observed: int = 7, degraded: str | None = None) -> dict[str, Any]:
    obj = policy("p", hives=["demo"], delivered_to="demo", compiledVersion=compiled, deliveredVersion=delivered,
                 observedGeneration=observed, versions=[{"version": v, "sha256": f"{v}" * 64, "engine": "regorus",
                                                         "configMap": f"p-policy-v{v}"} for v in (compiled, 2, 1)
                                                        if v <= compiled],
                 conditions=[{"type": "Degraded", "status": "True" if degraded else "False",
                              "reason": degraded or ""}])
    obj["metadata"].update(generation=generation, resourceVersion="100",
                           annotations={"other": "kept", **({STAGED_ANNOTATION: "true"} if staged else {})})
    obj["spec"]["pinVersion"] = delivered
    return obj


def test_a_version_is_staged_only_when_marked_reconciled_compiled_and_not_delivered() -> None:
    assert staged_version(staged_policy()) == 3
    assert staged_version(staged_policy(staged=False)) is None
    assert staged_version(staged_policy(observed=6)) is None  # the operator has not compiled it yet
    assert staged_version(staged_policy(degraded="CompileError")) is None
    assert staged_version(staged_policy(compiled=1)) is None  # the same Rego as the delivered one
    assert staged_version(staged_policy(degraded="HiveTaken")) == 3


async def test_staging_pins_the_delivered_version_in_one_guarded_write() -> None:
    api = FakeApi(staged_policy(staged=False, compiled=2, delivered=2))
    before, _ = await policies(api).stage("package router\n", "router/target", {"k": 1})
    (ops,) = api.json_patches
    assert ops[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "100"}
    spec = next(op["value"] for op in ops if op["path"] == "/spec")
    assert (spec["rego"], spec["pinVersion"], spec["entrypoint"], spec["data"]) == (
        "package router\n", 2, "data.router.target", {"k": 1})
    assert {"op": "add", "path": "/metadata/annotations/fluxbee.io~1policy-staged", "value": "true"} in ops
    assert all(op["path"] != "/metadata/annotations" for op in ops)  # the other annotations stay
    assert before["spec"]["rego"] == "package router"
    fresh = policy("new", hives=["demo"])  # nothing delivered yet: nothing to stage beside
    with pytest.raises(AdminError) as caught:
        await policies(FakeApi(fresh)).stage("package router\n", None, None)
    assert caught.value.code == "INVALID_REQUEST"


async def test_apply_delivers_only_the_staged_version() -> None:
    with pytest.raises(AdminError) as caught:
        await policies(FakeApi(staged_policy(staged=False))).apply_staged(None)
    assert caught.value.code == "NOTHING_STAGED"
    api = FakeApi(staged_policy())
    with pytest.raises(AdminError) as caught:
        await policies(api).apply_staged(2)
    assert caught.value.code == "VERSION_MISMATCH"
    assert api.json_patches == []
    await policies(api).apply_staged(3)
    (ops,) = api.json_patches
    spec = next(op["value"] for op in ops if op["path"] == "/spec")
    assert "pinVersion" not in spec and spec["rego"] == "package router"
    assert {"op": "remove", "path": "/metadata/annotations/fluxbee.io~1policy-staged"} in ops


async def test_a_status_write_in_between_is_retried_a_spec_change_is_a_conflict() -> None:
    obj = staged_policy()
    api = FakeApi(obj)
    read = staged_policy()  # what the admin read: the operator has written its status since
    obj["metadata"]["resourceVersion"] = "101"
    api.policies["p"] = obj
    kp = policies(api)
    await kp._replace(read, {"rego": "x"}, False, "testing")
    assert [ops[0]["value"] for ops in api.json_patches] == ["100", "101"]
    obj["metadata"].update(resourceVersion="102", generation=8)  # another replica changed the spec
    with pytest.raises(AdminError) as caught:
        await kp._replace(read, {"rego": "y"}, False, "testing")
    assert caught.value.code == "VERSION_CONFLICT"


def _stored_cm(blob: bytes, *, recorded: str | None = None, raw: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "p-policy-v3"},
            "data": {"version": "3", "sha256": recorded or hashlib.sha256(blob).hexdigest()},
            "binaryData": {"artefact": raw if raw is not None else base64.b64encode(blob).decode()}}


def test_a_stored_artefact_is_used_only_when_both_hashes_match() -> None:
    rego = 'package router\n\ntarget := "a"\n'
    artefact = Artefact(source=rego, wasm=None, sha256=Artefact.digest(rego, None))
    blob = artefact.to_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    assert artefact_from_config_map(_stored_cm(blob), expected_sha256=digest).source == rego
    bad: list[tuple[dict[str, Any], str | None]] = [
        (_stored_cm(blob), "0" * 64),  # not the version the Policy's status names
        (_stored_cm(blob, recorded="1" * 64), None),  # bytes changed after the operator stored them
        (_stored_cm(blob, raw="%%%"), None),  # not base64
        ({"metadata": {"name": "x"}, "data": {}}, None),  # not a stored version
    ]
    tampered = Artefact(source=rego + "# changed\n", wasm=None, sha256=artefact.sha256).to_bytes()
    bad.append((_stored_cm(tampered), None))  # the artefact no longer matches its own digest
    for cm, expected in bad:
        with pytest.raises(AdminError) as caught:
            artefact_from_config_map(cm, expected_sha256=expected)
        assert caught.value.code == "POLICY_LOAD_ERROR"


async def test_check_validates_and_evaluates_without_writing() -> None:
    # The checker's thread collects garbage after a failure; regorus engines that earlier tests left in
    # reference cycles (made on this thread) must be freed here, on their own thread, first.
    gc.collect()
    api = FakeApi(staged_policy())
    kp = policies(api)
    try:
        out = await kp.check('package router\n\ntarget := "WF.x@demo" if input.meta.action == "go"\n', None, None,
                             {"meta": {"action": "go"}}, None)
        assert (out["against"], out["decision"]["target"], out["engine"]) == ("request", "WF.x@demo", "regorus")
        with pytest.raises(AdminError) as caught:
            await kp.check("package router\n\ntarget := \n", None, None, None, None)
        assert caught.value.code == "COMPILE_ERROR" and caught.value.payload is not None
        assert isinstance(caught.value.payload["line"], int)
        with pytest.raises(AdminError) as caught:  # the staged version's ConfigMap is not there
            await kp.check(None, None, None, None, "staged")
        assert caught.value.code == "POLICY_LOAD_ERROR"
        assert api.patches == []
    finally:
        kp.checker.close()


def test_entry_points_read_either_spelling() -> None:
    assert (rule_path(None), rule_path("data.router.allow"), rule_path("router/x")) == (
        "router/target", "router/allow", "router/x")


async def test_compile_and_apply_replaces_the_spec_in_one_write_and_drops_a_staging() -> None:
    obj = staged_policy()
    obj["spec"]["data"] = {"old": True}
    api = FakeApi(obj)
    await policies(api).write("package router\n", None, {"new": 1})
    (ops,) = api.json_patches
    spec = next(op["value"] for op in ops if op["path"] == "/spec")
    assert spec == {"rego": "package router\n", "hives": ["demo"], "data": {"new": 1}}  # unpinned, data replaced
    assert {"op": "remove", "path": "/metadata/annotations/fluxbee.io~1policy-staged"} in ops


async def test_the_policy_read_shows_the_delivered_source_not_a_staged_spec() -> None:
    rego = 'package router\n\ntarget := "a"\n'
    artefact = Artefact(source=rego, wasm=None, sha256=Artefact.digest(rego, None), data={"d": 1})
    blob = artefact.to_bytes()
    obj = staged_policy()  # spec: the staged Rego; version 1 delivered
    for entry in obj["status"]["versions"]:
        if entry["version"] == 1:
            entry["sha256"] = hashlib.sha256(blob).hexdigest()
    api = FakeApi(obj)
    api.policies["p-policy-v1"] = _stored_cm(blob)  # the fake's get serves every kind by name
    out = await policies(api).describe(with_source=True)
    assert (out["rego"], out["data"], out["entrypoint"]) == (rego, {"d": 1}, "router/target")
    assert (out["current"]["version"], out["staged"]["version"]) == (1, 3)
    api.policies["p-policy-v1"]["binaryData"]["artefact"] = base64.b64encode(blob + b"x").decode()
    with pytest.raises(AdminError) as caught:  # a changed artefact is reported, not shown
        await policies(api).describe(with_source=True)
    assert caught.value.code == "POLICY_LOAD_ERROR"
