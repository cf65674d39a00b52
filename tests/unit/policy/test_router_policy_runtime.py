"""The router's policy runtime without a router: cache, audit ring, decisions pages, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fluxbee.dataplane.policy import Artefact, load
from fluxbee.dataplane.router import policy as rp

SOURCE = """package router

target := input.meta.context.to if input.meta.context.to
target := "AI.other" if input.meta.context.clash
"""


def runtime(tmp_path: Path) -> rp.PolicyRuntime:
    router: Any = SimpleNamespace(settings=SimpleNamespace(hive_id="u", run_dir=tmp_path), name="RT.gateway@u",
                                  stopped=asyncio.Event(),
                                  l3=SimpleNamespace(region_name=f"/fluxbee-identity-none-{tmp_path.name}"))
    rt = rp.PolicyRuntime(router)
    artefact = Artefact(source=SOURCE, wasm=None, sha256=Artefact.digest(SOURCE, None))
    rt.current = rp.Loaded(7, "ab" * 32, artefact, load(artefact, None), (1, 3), {}, {})
    return rt


def test_repeats_are_cache_hits_and_the_cache_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(tmp_path)
    meta = b'{"type":"user","context":{"to":"AI.a"}}'
    first = rt.evaluate("src-1", "IO.x@u", meta)
    again = rt.evaluate("src-1", "IO.x@u", meta)
    assert first is not None and again is not None
    assert (first.target, first.cached, again.target, again.cached) == ("AI.a", False, "AI.a", True)
    assert again.digest == first.digest and len(first.digest) == 16
    assert (rt.cache_hits, rt.cache_misses) == (1, 1)
    other_sender = rt.evaluate("src-2", "IO.x@u", meta)
    assert other_sender is not None and not other_sender.cached, "the sender is part of the input"
    monkeypatch.setattr(rp, "CACHE_ENTRIES", 3)
    for i in range(10):
        rt.evaluate("src-1", "IO.x@u", b'{"context":{"to":"AI.n%d"}}' % i)
    assert len(rt.cache) == 3


def test_evaluation_errors_and_bad_metas_are_verdicts_not_exceptions(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    clash = rt.evaluate("s", "IO.x@u", b'{"context":{"to":"AI.a","clash":true}}')
    assert clash is not None and clash.error is not None and clash.target is None
    bad = rt.evaluate("s", "IO.x@u", b"[1,2]")
    assert bad is not None and bad.error is not None and "JSON object" in bad.error
    rt.current = None
    assert rt.evaluate("s", "IO.x@u", b"{}") is None


def test_decisions_are_paged_oldest_first_and_bad_requests_refused(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    verdict = rp.Verdict("AI.a", None, "regorus", "0" * 16)
    for i in range(rp.AUDIT_ENTRIES + 5):
        rt.record(verdict, "routed", "", f"AI.a@u#{i}")
    assert len(rt.audit) == rp.AUDIT_ENTRIES, "a bounded ring: the oldest go"
    page = rt.decisions({"limit": 2, "after": 10})
    assert [d["seq"] for d in page["decisions"]] == [11, 12] and page["next_after"] == 12
    assert page["decisions"][0]["policy_version"] == 7 and page["decisions"][0]["identity_version"] == 3
    assert rt.decisions(None)["decisions"][0]["seq"] == 6, "the first five fell out of the ring"
    assert rt.decisions({"after": rt.seq})["decisions"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": True}, [1], "x"):
        with pytest.raises(ValueError):
            rt.decisions(bad)
    text = rt.prometheus()
    assert f'fluxbee_router_policy_decisions_total{{result="routed"}} {rp.AUDIT_ENTRIES + 5}' in text
    assert "fluxbee_router_policy_version 7" in text


async def test_reload_refuses_malformed_payloads_before_touching_the_region(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    for payload, needle in ((None, "{version, hash}"), ({"version": 0, "hash": "sha256:" + "a" * 64}, "positive"),
                            ({"version": 2, "hash": "md5:x"}, "SHA-256"), ({"version": 2}, "hash")):
        answer = await rt.reload(payload)
        assert answer["status"] == "error" and answer["error_code"] == rp.INVALID_REQUEST, answer
        assert needle in answer["error_detail"]
    missing = await rt.reload({"version": 8, "hash": "sha256:" + "a" * 64})
    assert missing["error_code"] == rp.NO_POLICY_REGION and rt.current is not None and rt.current.version == 7
