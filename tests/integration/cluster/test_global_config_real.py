"""Global routes and VPN rules between a mother and a worker hive in a cluster, on the real control plane.

The two hives are conftest.py's ``pair`` (hive_pair.py: two namespaces with the chart, the real operator
and the cluster admin API each, and two local routers linked over loopback mutual TLS).

What is read back: the Hives' ``spec.routes``/``spec.vpns`` and the global document (key
``global-config.json`` of ``<hive>-admin-history``), with kubectl as the cluster admin.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hive_pair import (
    FOLLOWER,
    GLOBAL_KEY,
    Hive,
    Pair,
    prefixes,
    start_hive_admin,
    vpn_ids,
)
from operator_support import AdminApi, get, start_admin


def ok(answer: tuple[int, Any], code: int = 200) -> dict[str, Any]:
    status, doc = answer
    assert status == code, doc
    payload: dict[str, Any] = doc["payload"]
    return payload


def test_a_global_change_on_the_mother_reaches_the_workers_hive_spec_with_its_version(pair: Pair) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None
    put = ok(m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.global.one", "action": "DROP"}],
                                                    "vpns": [{"pattern": "WF.red", "vpn_id": 7}]}))
    version = put["global_version"]
    assert version == 1 and put["status"] == "ok" and put["pending"] == []
    assert put["hives"] == [{"hive": "worker", "status": "ok", "version": version, "applied": True}]
    # applied and recorded on both sides: the Hives' specs and each hive's global document
    for hive in (m, w):
        spec = pair.spec(hive)
        assert (prefixes(spec), vpn_ids(spec)) == (["WF.global.one"], [7]), hive.name
        doc = pair.doc(hive)
        assert doc is not None and doc["version"] == version
        assert pair.marked(hive) == version
        assert [r["prefix"] for r in doc["routes"]] == ["WF.global.one"]
        assert [v["vpn_id"] for v in doc["vpns"]] == [7]
    # a later change of one list keeps the other one, and numbers on
    put = ok(m.admin.call("PUT", "/config/vpns", {"vpns": [{"pattern": "WF.blue", "vpn_id": 8}]}))
    assert put["global_version"] == version + 1 and put["hives"][0]["applied"] is True
    spec = pair.spec(w)
    assert (prefixes(spec), vpn_ids(spec)) == (["WF.global.one"], [8])
    assert pair.version(w) == version + 1


def test_versions_never_go_back(pair: Pair) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None and w.admin is not None
    held = pair.version(m)
    assert held >= 1 and pair.version(w) == held
    before_m, before_w = pair.spec(m), pair.spec(w)
    for stale in (1, held):  # an explicit version must be above the one held
        code, doc = m.admin.call("PUT", "/config/routes", {"routes": [], "version": stale})
        assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH"), doc
    assert pair.version(m) == held and pair.spec(m) == before_m and pair.spec(w) == before_w
    # an explicit version above it is taken, and the next one numbers on from there
    jump = held + 10
    assert ok(m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.jump", "action": "DROP"}],
                                                     "version": jump}))["global_version"] == jump
    assert ok(m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.after", "action": "DROP"}]}))[
        "global_version"] == jump + 1
    assert pair.version(w) == jump + 1 and prefixes(pair.spec(w)) == ["WF.after"]


def test_a_worker_down_during_a_change_catches_up_when_it_returns(pair: Pair, tmp_path: Path) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None and w.admin is not None
    # A second replica of the worker's admin API whose router is out of reach: it cannot ask the
    # mother, so it must not take the turn to follow while the first one is away.
    (tmp_path / "spare-run").mkdir()
    spare = start_admin(pair.cp, w.release, w.name, tmp_path / "spare", tmp_path / "spare-run")
    try:
        _catch_up(pair, m, w)
    finally:
        spare.process.stop()


def _follower_lease(pair: Pair, hive: Hive) -> dict[str, Any]:
    cm = get(pair.cp, hive.ns, "configmap", f"{hive.name}-admin-history") or {}
    lease: dict[str, Any] = json.loads(((cm.get("metadata") or {}).get("annotations") or {}).get(FOLLOWER, "{}"))
    return lease


def _catch_up(pair: Pair, m: Hive, w: Hive) -> None:
    assert m.admin is not None and w.admin is not None
    w.admin.process.wait_for("the worker's admin API to follow the mother",
                             lambda: _follower_lease(pair, w).get("holder"), timeout=30)
    w.admin.process.stop()
    w.admin = None
    put = ok(m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.while.away", "action": "DROP"}]}),
             code=202)
    version = put["global_version"]
    assert put["status"] == "sync_pending" and put["pending"] == ["worker"]
    assert pair.version(m) == version and pair.version(w) == version - 1
    assert prefixes(pair.spec(w)) != ["WF.while.away"]
    # the turn to follow the mother was the stopped replica's: wait until it has run out, and long
    # enough after it for the spare replica to have taken it if it would (it asks every 3 s)
    lease = _follower_lease(pair, w)
    time.sleep(max(0.0, float(lease["until"]) + 4.0 - time.time()))
    w.admin = start_hive_admin(pair.cp, w, "admin-again")
    # nobody pushes again: the returning worker asks its mother (every 3 s) and applies what it missed
    w.admin.process.wait_for("the worker to catch up with the mother's global config",
                             lambda: pair.version(w) == pair.marked(w) == version, timeout=30)
    assert prefixes(pair.spec(w)) == ["WF.while.away"] and pair.marked(w) == version


def test_two_mother_replicas_racing_number_every_change_once_and_lose_none(pair: Pair, tmp_path: Path) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None
    # A second replica of the mother's admin API (its own socket directory, with no router in it:
    # it pushes to nobody, and the worker catches up by pulling).
    (tmp_path / "second-run").mkdir()
    other = start_admin(pair.cp, m.release, m.name, tmp_path / "second", tmp_path / "second-run")
    base = pair.version(m)
    answers: list[tuple[str, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def writer(admin: AdminApi, who: str, kind: str) -> None:
        for i in range(4):
            name = f"WF.{who}.{kind}.{i}"
            body = ({"routes": [{"prefix": name, "action": "DROP"}]} if kind == "routes"
                    else {"vpns": [{"pattern": name, "vpn_id": 100 + i}]})
            code, doc = admin.call("PUT", f"/config/{kind}", body)
            with lock:
                answers.append((name, code, doc))

    try:
        threads = [threading.Thread(target=writer, args=args) for args in
                   ((m.admin, "one", "routes"), (other, "two", "routes"), (m.admin, "one", "vpns"),
                    (other, "two", "vpns"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 16
        assert all(code in (200, 202) for _, code, _ in answers), [(n, c, d) for n, c, d in answers if c >= 300]
        versions = sorted(doc["payload"]["global_version"] for _, _, doc in answers)
        # every change got its own version, none skipped: 16 changes, 16 consecutive versions
        assert versions == list(range(base + 1, base + 17))
        by_version = {doc["payload"]["global_version"]: name for name, _, doc in answers}
        last_route = by_version[max(v for v, n in by_version.items() if ".routes." in n)]
        last_vpn = by_version[max(v for v, n in by_version.items() if ".vpns." in n)]
        # no change lost: the document holds the newest of each list, and so do both Hive specs
        doc = pair.doc(m)
        assert doc is not None and doc["version"] == base + 16
        assert [r["prefix"] for r in doc["routes"]] == [last_route]
        assert [v["pattern"] for v in doc["vpns"]] == [last_vpn]
        spec = pair.spec(m)
        assert prefixes(spec) == [last_route] and [v["pattern"] for v in spec["vpns"]] == [last_vpn]
        assert pair.marked(m) == base + 16
        m.operator.wait_for("the worker to reach the last version",
                            lambda: pair.version(w) == pair.marked(w) == base + 16, timeout=30)
        spec = pair.spec(w)
        assert prefixes(spec) == [last_route] and [v["pattern"] for v in spec["vpns"]] == [last_vpn]
        assert pair.marked(w) == base + 16
    finally:
        other.process.stop()


def test_a_damaged_global_document_is_a_clear_error_not_a_reset(pair: Pair) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None and w.admin is not None
    held, spec = pair.version(m), pair.spec(m)
    cm = f"{m.name}-admin-history"
    good = (get(pair.cp, m.ns, "configmap", cm) or {})["data"][GLOBAL_KEY]
    pair.cp.kubectl("-n", m.ns, "patch", "configmap", cm, "--type", "merge", "-p",
                    json.dumps({"data": {GLOBAL_KEY: '{"version": "seven"'}}))
    code, doc = m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.never", "action": "DROP"}]})
    assert (code, doc["error_code"]) == (503, "STATE_READ_FAILED"), doc
    assert cm in doc["error_detail"] and GLOBAL_KEY in doc["error_detail"] and "damaged" in doc["error_detail"]
    assert pair.spec(m) == spec  # nothing applied
    # the worker asking meanwhile gets the error, not a version 0 to go back to
    assert pair.version(w) == held
    pair.cp.kubectl("-n", m.ns, "patch", "configmap", cm, "--type", "merge", "-p",
                    json.dumps({"data": {GLOBAL_KEY: good}}))
    assert ok(m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.mended", "action": "DROP"}]}))[
        "global_version"] == held + 1

    # a damaged document on the worker: it refuses the push (the mother says so) and keeps it as it is
    wcm = f"{w.name}-admin-history"
    pair.cp.kubectl("-n", w.ns, "patch", "configmap", wcm, "--type", "merge", "-p",
                    json.dumps({"data": {GLOBAL_KEY: "[]"}}))
    code, doc = m.admin.call("PUT", "/config/routes", {"routes": [{"prefix": "WF.refused", "action": "DROP"}]})
    assert (code, doc["error_code"]) == (502, "CONFIG_BROADCAST_FAILED"), doc
    assert "worker (STATE_READ_FAILED" in doc["error_detail"] and doc["payload"]["global_version"] == held + 2
    assert (get(pair.cp, w.ns, "configmap", wcm) or {})["data"][GLOBAL_KEY] == "[]"
    assert prefixes(pair.spec(w)) == ["WF.mended"]
    # removing the key is how a user starts it again: the worker then takes the mother's whole config
    pair.cp.kubectl("-n", w.ns, "patch", "configmap", wcm, "--type", "json", "-p",
                    json.dumps([{"op": "remove", "path": f"/data/{GLOBAL_KEY}"}]))
    w.admin.process.wait_for("the worker to take the mother's config again", lambda: pair.version(w) == held + 2,
                             timeout=30)
    assert prefixes(pair.spec(w)) == ["WF.refused"]


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'{"routes": "WF.x"}', b'{"routes": [{"prefix": "WF.x"}]}',
    b'{"routes": [{"prefix": "WF.x", "action": "BOUNCE"}]}', b'{"routes": [], "version": 0}',
    b'{"routes": [], "version": -3}', b'{"routes": [], "version": "9"}', b'{"routes": [], "extra": 1}',
    b'{"vpns": [{"pattern": "WF.x", "vpn_id": -1}]}'])
def test_a_bad_body_is_refused_and_nothing_is_written(pair: Pair, body: bytes) -> None:
    m, w = pair.mother, pair.worker
    assert m.admin is not None
    before = [(pair.doc(h), pair.spec(h)) for h in (m, w)]
    code, doc = m.admin.call("PUT", "/config/routes", raw=body)
    assert code in (400, 422) and doc["status"] == "error", (code, doc)
    assert [(pair.doc(h), pair.spec(h)) for h in (m, w)] == before
