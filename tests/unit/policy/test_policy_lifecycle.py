"""SY.policy's rules without a socket: versions, staging, rollback, check, and its files (regorus only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fluxbee.policy_service.lifecycle import CompileRequest, Lifecycle, PolicyServiceError
from fluxbee.policy_service.store import PolicyStore, StoreError, Versioned, write_atomic

POLICY = 'package router\n\ntarget := "WF.a@h" if {\n\tinput.meta.action == "a"\n}\n'
OTHER = POLICY.replace("WF.a@h", "WF.b@h")
BAD = 'package router\n\ntarget := "x" if {\n\tinput.meta.action ==\n}\n'


class Recorder:
    """A publisher that keeps what it was given and answers like a router that took it."""

    def __init__(self) -> None:
        self.published: list[tuple[int, str]] = []

    async def publish(self, item: Versioned) -> dict[str, Any]:
        self.published.append((item.version, item.artefact.source))
        return {"status": "applied"}

    async def router_policy(self) -> dict[str, Any] | None:
        return {"version": self.published[-1][0]} if self.published else None


@pytest.fixture(autouse=True)
def _regorus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no opa: the regorus artefact, fast and the same rules
    monkeypatch.delenv("FLUXBEE_OPA", raising=False)


def _lc(tmp_path: Path) -> tuple[Lifecycle, Recorder]:
    rec = Recorder()
    return Lifecycle(PolicyStore(tmp_path / "policy"), rec, "h"), rec


def test_versions_grow_and_a_failed_compile_or_a_check_takes_none(tmp_path: Path) -> None:
    lc, rec = _lc(tmp_path)

    async def go() -> None:
        first = await lc.compile(CompileRequest(rego=POLICY), apply=False)
        assert (first["version"], first["staged"], rec.published) == (1, True, [])
        with pytest.raises(PolicyServiceError) as bad:
            await lc.compile(CompileRequest(rego=BAD), apply=False)
        assert bad.value.code == "COMPILE_ERROR" and bad.value.extra["line"] == 5, bad.value.payload()
        checked = await lc.check(OTHER, "request", {"meta": {"action": "a"}}, None, "router/target")
        assert checked["decision"]["target"] == "WF.b@h"
        assert lc.store.last_version() == 1  # neither the failure nor the check took one
        applied = await lc.apply(None)
        assert applied["version"] == 1 and applied["router"] == {"status": "applied"}
        assert (await lc.describe(with_source=False))["staged"] is None
        second = await lc.compile(CompileRequest(rego=OTHER), apply=True)
        assert second["version"] == 2 and rec.published == [(1, POLICY), (2, OTHER)]
        with pytest.raises(PolicyServiceError) as nothing:
            await lc.apply(None)
        assert nothing.value.code == "NOTHING_STAGED"
        with pytest.raises(PolicyServiceError) as pinned:  # a mother's version must be above ours
            await lc.compile(CompileRequest(rego=POLICY, version=2), apply=False)
        assert pinned.value.code == "VERSION_MISMATCH"
        assert (await lc.compile(CompileRequest(rego=POLICY, version=7), apply=False))["version"] == 7

    asyncio.run(go())
    assert PolicyStore(tmp_path / "policy").last_version() == 7  # a new store (a restart) continues from there


def test_a_retried_pinned_compile_and_apply_of_the_current_policy_is_done_not_refused(tmp_path: Path) -> None:
    lc, rec = _lc(tmp_path)

    async def go() -> None:
        first = await lc.compile(CompileRequest(rego=POLICY, version=4), apply=True)
        assert first["version"] == 4 and rec.published == [(4, POLICY)]
        again = await lc.compile(CompileRequest(rego=POLICY, version=4), apply=True)
        assert (again["status"], again["version"], again["already_current"]) == ("ok", 4, True)
        assert again["router"]["status"] == "applied" and rec.published == [(4, POLICY)], "nothing published twice"
        with pytest.raises(PolicyServiceError) as other:  # the same version with another policy: refused
            await lc.compile(CompileRequest(rego=OTHER, version=4), apply=True)
        assert other.value.code == "VERSION_MISMATCH"
        with pytest.raises(PolicyServiceError) as staged_only:  # and a stage-only request still needs a new one
            await lc.compile(CompileRequest(rego=POLICY, version=4), apply=False)
        assert staged_only.value.code == "VERSION_MISMATCH"

    asyncio.run(go())


def test_rollback_restores_an_earlier_artefact_as_a_new_version(tmp_path: Path) -> None:
    lc, rec = _lc(tmp_path)

    async def go() -> None:
        with pytest.raises(PolicyServiceError) as none:
            await lc.rollback(None)
        assert none.value.code == "NO_BACKUP"
        await lc.compile(CompileRequest(rego=POLICY), apply=True)
        await lc.compile(CompileRequest(rego=OTHER), apply=True)
        back = await lc.rollback(None)
        assert (back["version"], back["restored_version"]) == (3, 1)
        assert rec.published[-1] == (3, POLICY)
        current = lc.store.current()
        assert current is not None and current.origin == "rollback:1"
        pinned = await lc.rollback(2)
        assert (pinned["version"], pinned["restored_version"], rec.published[-1]) == (4, 2, (4, OTHER))
        with pytest.raises(PolicyServiceError) as missing:
            await lc.rollback(40)
        assert missing.value.code == "NO_BACKUP" and missing.value.extra["applied_versions"] == [1, 2, 3, 4]
        decided = await lc.check(None, "current", {"meta": {"action": "a"}}, None, "router/target")
        assert decided["against"] == "current:4" and decided["decision"]["target"] == "WF.b@h"

    asyncio.run(go())


def test_corrupt_or_tampered_files_are_refused_not_loaded(tmp_path: Path) -> None:
    lc, _ = _lc(tmp_path)
    asyncio.run(lc.compile(CompileRequest(rego=POLICY), apply=True))
    current = tmp_path / "policy" / "current.json"
    doc = json.loads(current.read_text())
    doc["artefact"]["source"] = OTHER  # the digest no longer matches
    current.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="hash mismatch"):
        lc.store.current()
    current.write_text("{not json")
    with pytest.raises(StoreError):
        lc.store.current()
    (tmp_path / "policy" / "version").write_text("seven")
    with pytest.raises(StoreError, match="not a version number"):
        PolicyStore(tmp_path / "policy").last_version()


def test_an_atomic_write_that_fails_leaves_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"old")

    def broken(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]
