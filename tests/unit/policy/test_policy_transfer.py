"""A compiled artefact carried between two hives' SY.policy: the chunked POLICY_ARTEFACT_GET answers
(:func:`serve_chunk`), the taker's checks (:func:`fetch`) and :meth:`Lifecycle.take`.

The "mother" is a real :class:`Lifecycle` with its own store; the link between the two is a direct
call to its :func:`serve_chunk`, which a test may alter (a tampered chunk, an answer for another
artefact, a cut link) to see that the taker refuses it and writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fluxbee.dataplane.policy import Artefact
from fluxbee.policy_service.lifecycle import CompileRequest, Lifecycle, PolicyServiceError
from fluxbee.policy_service.node import PolicyService
from fluxbee.policy_service.store import PolicyStore, Versioned
from fluxbee.policy_service.transfer import CHUNK_BYTES, MAX_ARTEFACT_BYTES, Announced, fetch, serve_chunk

POLICY = 'package router\n\ntarget := "WF.a@h" if {\n\tinput.meta.action == "a"\n}\n'
OTHER = POLICY.replace("WF.a@h", "WF.b@h")
BIG_DATA = {"blob": [f"entry-{i:06d}-" + "x" * 40 for i in range(4000)]}  # ~200 KB: several chunks


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[int, str]] = []

    async def publish(self, item: Versioned) -> dict[str, Any]:
        self.published.append((item.version, item.artefact.sha256))
        return {"status": "applied"}

    async def router_policy(self) -> dict[str, Any] | None:
        return {"version": self.published[-1][0]} if self.published else None


@pytest.fixture(autouse=True)
def _regorus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("FLUXBEE_OPA", raising=False)


def _lc(root: Path, name: str) -> tuple[Lifecycle, Recorder]:
    rec = Recorder()
    return Lifecycle(PolicyStore(root / name), rec, name), rec


Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _link(mother: Lifecycle, asked: list[int], alter: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
          transit: dict[str, bytes] | None = None) -> Ask:
    async def ask(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body["offset"])
        try:
            reply = serve_chunk(_kept(mother, transit), body)
        except PolicyServiceError as err:
            reply = err.payload()
        return alter(reply) if alter else reply
    return ask


def _kept(lc: Lifecycle, transit: dict[str, bytes] | None = None) -> Callable[[int | None, str | None], bytes | None]:
    def raw(version: int | None, sha256: str | None) -> bytes | None:
        if version is None:
            return (transit or {}).get(sha256 or "")
        item = lc.kept(version)
        return item.artefact.to_bytes() if item is not None else None
    return raw


def _getter(want: Announced, ask: Ask) -> Callable[[], Awaitable[Artefact]]:
    async def get() -> Artefact:
        return await fetch(want, ask)
    return get


def _announce(answer: dict[str, Any]) -> Announced:
    return Announced.parse({k: answer[k] for k in ("version", "sha256", "size", "engine", "origin")})


def test_a_worker_takes_the_mothers_artefact_in_chunks_byte_for_byte(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, rec = _lc(tmp_path, "w")

    async def go() -> None:
        made = await mother.compile(CompileRequest(rego=POLICY, data=BIG_DATA), apply=True)
        assert made["size"] > 2 * CHUNK_BYTES, made["size"]
        asked: list[int] = []
        want = _announce(made)
        out = await worker.take(want, _getter(want, _link(mother, asked)), apply=True)
        assert (out["version"], out["sha256"], out["fetched"], out["applied"]) == (1, made["sha256"], True, True)
        assert asked == list(range(0, made["size"], CHUNK_BYTES))
        current = worker.store.current()
        assert current is not None and current.hash == made["hash"] and rec.published == [(1, current.artefact.sha256)]
        # announced again (the catch-up pull beat the fan-out): done, nothing fetched or published twice
        again = await worker.take(want, _getter(want, _link(mother, asked := [])), apply=True)
        assert again["already_current"] is True and asked == [] and len(rec.published) == 1
        # staged on the mother, staged on the worker; the apply then needs no fetch
        staged = await mother.compile(CompileRequest(rego=OTHER), apply=False)
        want2 = _announce(staged)
        out2 = await worker.take(want2, _getter(want2, _link(mother, [])), apply=False)
        assert (out2["version"], out2["staged"]) == (2, True) and len(rec.published) == 1
        await mother.apply(2)
        applied = await worker.take(want2, _getter(want2, _link(mother, asked := [])), apply=True)
        assert (applied["version"], applied["applied"], applied["fetched"], asked) == (2, True, False, [])
        # a compile-and-apply on the mother leaves nothing staged there, nor on the worker
        await mother.compile(CompileRequest(rego=POLICY.replace("WF.a", "WF.s")), apply=False)
        staged_again = _announce(await mother.compile(CompileRequest(rego=POLICY.replace("WF.a", "WF.c")),
                                                      apply=False))
        await worker.take(staged_again, _getter(staged_again, _link(mother, [])), apply=False)
        assert worker.store.staged() is not None
        now = await mother.compile(CompileRequest(rego=POLICY.replace("WF.a", "WF.d")), apply=True)
        want_now = _announce(now)
        await worker.take(want_now, _getter(want_now, _link(mother, [])), apply=True)
        assert mother.store.staged() is None and worker.store.staged() is None
        # a rollback on the mother is a new version with the old bytes: the worker gets those bytes
        back = await mother.rollback(1)
        want3 = _announce(back)
        assert want3.origin == "rollback:1"
        out3 = await worker.take(want3, _getter(want3, _link(mother, [])), apply=True)
        restored = worker.store.current()
        assert out3["version"] == 6 and restored is not None and restored.artefact == current.artefact
        assert restored.origin == "rollback:1"

    asyncio.run(go())


def _tampered(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("offset") == CHUNK_BYTES:
        raw = bytearray(base64.b64decode(reply["chunk"]))
        raw[10] ^= 0x01
        return {**reply, "chunk": base64.b64encode(bytes(raw)).decode()}
    return reply


@pytest.mark.parametrize(("alter", "code"), [
    (_tampered, "ARTEFACT_MISMATCH"),
    (lambda r: {**r, "sha256": "0" * 64}, "ARTEFACT_MISMATCH"),
    (lambda r: {**r, "offset": r["offset"] + 1}, "ARTEFACT_MISMATCH"),
    (lambda r: {**r, "chunk": r["chunk"][:-8]}, "ARTEFACT_MISMATCH"),
    (lambda r: {**r, "chunk": "not base64!"}, "ARTEFACT_MISMATCH"),
    (lambda r: {"status": "error", "error_code": "VERSION_NOT_FOUND", "error_detail": "gone"}, "ARTEFACT_MISMATCH"),
])
def test_a_bad_chunk_is_refused_and_the_worker_keeps_what_it_had(
        tmp_path: Path, alter: Callable[[dict[str, Any]], dict[str, Any]], code: str) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, rec = _lc(tmp_path, "w")

    async def go() -> None:
        first = await mother.compile(CompileRequest(rego=OTHER), apply=True)
        want1 = _announce(first)
        await worker.take(want1, _getter(want1, _link(mother, [])), apply=True)
        made = await mother.compile(CompileRequest(rego=POLICY, data=BIG_DATA), apply=True)
        want = _announce(made)
        with pytest.raises(PolicyServiceError) as refused:
            await worker.take(want, _getter(want, _link(mother, [], alter)), apply=True)
        assert refused.value.code == code, refused.value.payload()
        assert worker.store.last_version() == 1 and len(rec.published) == 1
        current = worker.store.current()
        assert current is not None and current.hash == first["hash"]
        assert worker.store.staged() is None
        # the next attempt over a sound link takes it
        out = await worker.take(want, _getter(want, _link(mother, [])), apply=True)
        assert out["version"] == 2 and out["sha256"] == made["sha256"]

    asyncio.run(go())


def test_a_cut_link_fails_the_fetch_and_writes_nothing(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, rec = _lc(tmp_path, "w")

    async def go() -> None:
        made = await mother.compile(CompileRequest(rego=POLICY, data=BIG_DATA), apply=True)
        want = _announce(made)
        served = _link(mother, [])

        async def cut(body: dict[str, Any]) -> dict[str, Any]:
            if body["offset"] >= CHUNK_BYTES:
                raise PolicyServiceError("FETCH_FAILED", "no answer")
            return await served(body)

        with pytest.raises(PolicyServiceError) as failed:
            await worker.take(want, _getter(want, cut), apply=True)
        assert failed.value.code == "FETCH_FAILED"
        assert (worker.store.last_version(), worker.store.current(), rec.published) == (0, None, [])

    asyncio.run(go())


def test_versions_only_grow_on_the_taker(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, _ = _lc(tmp_path, "w")

    async def go() -> None:
        await worker.compile(CompileRequest(rego=OTHER, version=5), apply=True)
        made = await mother.compile(CompileRequest(rego=POLICY), apply=True)
        want = _announce(made)
        with pytest.raises(PolicyServiceError) as lower:
            await worker.take(want, _getter(want, _link(mother, asked := [])), apply=True)
        assert lower.value.code == "VERSION_MISMATCH" and asked == []  # refused before fetching

    asyncio.run(go())


def test_the_chunk_answers_refuse_bad_requests(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")

    async def go() -> Versioned:
        await mother.compile(CompileRequest(rego=POLICY), apply=True)
        item = mother.kept(1)
        assert item is not None
        return item

    item = asyncio.run(go())
    raw = item.artefact.to_bytes()
    kept = _kept(mother)
    whole = serve_chunk(kept, {"version": 1, "offset": 0, "length": CHUNK_BYTES})
    assert base64.b64decode(whole["chunk"]) == raw and whole["sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(serve_chunk(kept, {"version": 1, "offset": 3, "length": 5})["chunk"]) == raw[3:8]
    for body, code in [({"version": 1, "offset": len(raw), "length": 10}, "BAD_OFFSET"),
                       ({"version": 1, "offset": 10 ** 12, "length": 10}, "BAD_OFFSET"),
                       ({"version": 1, "offset": -1, "length": 10}, "INVALID_REQUEST"),
                       ({"version": 1, "offset": 0, "length": 0}, "INVALID_REQUEST"),
                       ({"version": 1, "offset": 0, "length": -5}, "INVALID_REQUEST"),
                       ({"version": 1, "offset": 0, "length": CHUNK_BYTES + 1}, "INVALID_REQUEST"),
                       ({"version": 1, "offset": "0", "length": 10}, "INVALID_REQUEST"),
                       ({"version": True, "offset": 0, "length": 10}, "INVALID_REQUEST")]:
        with pytest.raises(PolicyServiceError) as refused:
            serve_chunk(kept, body)
        assert refused.value.code == code, body
    with pytest.raises(PolicyServiceError) as unknown:
        serve_chunk(kept, {"version": 9, "offset": 0, "length": 10})
    assert unknown.value.code == "VERSION_NOT_FOUND"


@pytest.mark.parametrize(("body", "code"), [
    ({"version": 1, "sha256": "ab", "size": 10, "engine": "wasm"}, "INVALID_REQUEST"),
    ({"version": 0, "sha256": "a" * 64, "size": 10, "engine": "wasm"}, "INVALID_REQUEST"),
    ({"version": 1, "sha256": "a" * 64, "size": -1, "engine": "wasm"}, "INVALID_REQUEST"),
    ({"version": 1, "sha256": "a" * 64, "size": 10, "engine": "v8"}, "INVALID_REQUEST"),
    ({"version": 1, "sha256": "A" * 64, "size": 10, "engine": "wasm"}, "INVALID_REQUEST"),
    ({"version": 1, "sha256": "a" * 64, "size": MAX_ARTEFACT_BYTES + 1, "engine": "wasm"}, "ARTEFACT_TOO_LARGE"),
])
def test_an_announcement_that_cannot_be_taken_is_refused(body: dict[str, Any], code: str) -> None:
    with pytest.raises(PolicyServiceError) as refused:
        Announced.parse(body)
    assert refused.value.code == code


def test_an_artefact_that_decodes_to_another_engine_is_refused(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, _ = _lc(tmp_path, "w")

    async def go() -> None:
        made = await mother.compile(CompileRequest(rego=POLICY), apply=True)
        want = Announced.parse({**{k: made[k] for k in ("version", "sha256", "size", "origin")}, "engine": "wasm"})
        with pytest.raises(PolicyServiceError) as refused:
            await worker.take(want, _getter(want, _link(mother, [])), apply=True)
        assert refused.value.code == "ARTEFACT_MISMATCH" and worker.store.current() is None

    asyncio.run(go())


@pytest.mark.parametrize(("sender", "code"), [
    ("SY.admin@w", "INVALID_REQUEST"),  # its own hive's artefacts are compiled here, not taken
    ("SY.admin@x", "FORBIDDEN"),  # neither this hive's admin nor its mother's
    ("WF.tool@m", "FORBIDDEN"),
])
def test_policy_take_is_refused_from_the_wrong_sender(tmp_path: Path, sender: str, code: str) -> None:
    service = PolicyService("w", tmp_path, mother_hive="m")
    worker, rec = _lc(tmp_path, "w")
    service.lifecycle = worker
    body = {"version": 1, "sha256": "a" * 64, "size": 10, "engine": "regorus", "apply": True}
    with pytest.raises(PolicyServiceError) as refused:
        asyncio.run(service.answer("POLICY_TAKE", sender, body))
    assert refused.value.code == code and worker.store.last_version() == 0 and rec.published == []


def test_an_artefact_compiled_for_one_other_hive_is_taken_under_that_hives_next_version(tmp_path: Path) -> None:
    mother, _ = _lc(tmp_path, "m")
    worker, rec = _lc(tmp_path, "w")

    async def go() -> None:
        await worker.compile(CompileRequest(rego=OTHER), apply=True)  # the worker's own version 1
        artefact, _ = await mother.prepare(CompileRequest(rego=POLICY, data=BIG_DATA))
        raw = artefact.to_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        transit = {sha: raw}
        assert mother.store.last_version() == 0  # nothing written on the mother
        want = Announced.parse({"sha256": sha, "size": len(raw), "engine": artefact.engine})
        asked: list[int] = []
        out = await worker.take(want, _getter(want, _link(mother, asked, transit=transit)), apply=True)
        assert (out["version"], out["sha256"], out["applied"]) == (2, sha, True) and len(asked) > 1
        assert rec.published[-1] == (2, artefact.sha256)
        with pytest.raises(PolicyServiceError) as unknown:
            serve_chunk(_kept(mother, transit), {"sha256": "b" * 64, "offset": 0, "length": 10})
        assert unknown.value.code == "VERSION_NOT_FOUND"

    asyncio.run(go())
