"""The cluster admin API's Policy access: which Policy is the hive's, the envelopes, pins, the report."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fluxbee.admin.errors import AdminError
from fluxbee.admin.kube_policy import KubePolicies


class FakeApi:
    def __init__(self, *policies: dict[str, Any]) -> None:
        self.policies = {p["metadata"]["name"]: p for p in policies}
        self.patches: list[tuple[str, Any, str | None]] = []

    async def list(self, plural: str, namespace: str, labels: Any = None) -> list[dict[str, Any]]:
        assert plural == "policies"
        return list(self.policies.values())

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.policies.get(name)

    async def patch(self, plural: str, namespace: str, name: str, body: Any, *, subresource: str | None = None,
                    content_type: str = "") -> dict[str, Any]:
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
    return {"metadata": {"name": name, "creationTimestamp": created, "generation": 1}, "spec": spec,
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
    assert api.patches[-1][1] == {"spec": {"pinVersion": 3}}
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
