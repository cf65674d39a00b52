"""The ``dst: null`` fast lane and the general path make the same decisions, and audit all of them.

Two routers with the same UUID, nodes and policy get the same frames: one through
``Conn.data_received`` (a whole read: the fast path, whose ``dst: null`` frames with a cached verdict
go through the lane, :mod:`fluxbee.dataplane.router.nullroute`), the other frame by frame through the
general path. What each node receives (routing.dst stamped with the chosen node included), the
counters, the turns of capability round robin, and the decisions counted and audited must be equal;
and the lane must actually have taken the repeated frames. Every test runs with the C splicer and
with the pure-Python one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_router_fastpath import NODES, Hive, body, build_hive, frame, general_feed

from fluxbee.dataplane import _native, fastpath, nullpath, wire
from fluxbee.dataplane.policy import compile_policy, load
from fluxbee.dataplane.router import nullroute
from fluxbee.dataplane.router import policy as rp
from fluxbee.dataplane.router.l3 import NO_ILK, NO_REGION
from fluxbee.models import VpnSpec

POLICY = """package router

default allow := true

allow := false if input.meta.action == "forbidden"

target := input.meta.context.to if input.meta.context.to

target := "WF.other" if input.meta.context.clash
"""
CAP = "cap.sink"  # held by identities handled by WF.sink (two connections), WF.other and WF.third (not connected)
THIRD = "00000000-0000-4000-8000-000000000009"
ILK = f"ilk:{uuid.UUID(int=7)}"  # handled by WF.other


@pytest.fixture(autouse=True, params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        if _native.speedups is None:
            pytest.skip(f"the C extension is not in use: {_native.IMPLEMENTATION}")
        s = _native.speedups
        pairs = [(fastpath, "scan", s.scan), (fastpath, "extend", s.extend), (nullpath, "scan_null", s.scan_null),
                 (nullpath, "splice_null", s.splice_null), (nullpath, "extend_null", s.extend_null)]
    else:
        pairs = [(fastpath, "scan", fastpath.scan_py), (fastpath, "extend", fastpath.extend_py),
                 (nullpath, "scan_null", nullpath.scan_null_py), (nullpath, "splice_null", nullpath.splice_null_py),
                 (nullpath, "extend_null", nullpath.extend_null_py)]
    for module, name, fn in pairs:
        monkeypatch.setattr(module, name, fn)
    monkeypatch.setattr(wire, "_split", _native.speedups.split if request.param == "c" else None)
    return str(request.param)


def loaded(version: int = 1, source: str = POLICY, identity: tuple[int, int] = (1, 1)) -> rp.Loaded:
    artefact = compile_policy(source, use_opa=False)
    return rp.Loaded(version, f"{version:064x}", artefact, load(artefact, None), identity,
                     {ILK: "WF.other@prod"}, {CAP: ("WF.sink", "WF.other", "WF.third")})


def hives(tmp: Path, **config: Any) -> tuple[Hive, Hive]:
    out = []
    for name in ("fast", "general"):
        hive = build_hive(tmp / name, **config)
        hive.router.policy.install(loaded())
        out.append(hive)
    return out[0], out[1]


def null(context: dict[str, Any] | None = None, payload: Any = "x", **meta: Any) -> bytes:
    return body(None, payload, meta={"type": "user", **({"context": context} if context else {}), **meta})


def audited(hive: Hive) -> tuple[Counter[tuple[Any, ...]], dict[str, int]]:
    """Decisions by (version, result, resolved), summing aggregates, and the decision counters."""
    page = hive.router.policy.decisions({"limit": 1000})
    by: Counter[tuple[Any, ...]] = Counter()
    for d in page["decisions"]:
        by[d["policy_version"], d["result"], d["resolved"]] += d["count"]
    return by, page["policy"]["decisions"]


def compare(fast: Hive, general: Hive) -> None:
    assert fast.received() == general.received()
    assert fast.router.counters.snapshot() == general.router.counters.snapshot()
    assert fast.router.policy.turns == general.router.policy.turns
    assert audited(fast) == audited(general)
    assert fast.router.l3.counts == general.router.l3.counts
    f, g = fast.router.policy.describe()["cache"], general.router.policy.describe()["cache"]
    assert (f["hits"], f["misses"]) == (g["hits"], g["misses"])


FRAMES: dict[str, list[bytes]] = {
    "a name, repeated (one run)": [null({"to": "WF.other"}, i) for i in range(8)],
    "a capability, in turn over three connections": [null({"to": CAP}, i) for i in range(9)],
    "an ILK's handler": [null({"to": ILK}, i) for i in range(4)],
    "name@*": [null({"to": "WF.other@*"}, i) for i in range(3)],
    "to itself": [null({"to": "WF.client"}, i) for i in range(3)],
    "interleaved metas": [null({"to": t}, i) for i in range(4) for t in ("WF.other", CAP, "WF.sink")],
    "an action the policy allows and one it denies": [null({"to": "WF.other"}, i, action=a)
                                                        for i in range(3) for a in ("chat", "forbidden")],
    "evaluation error": [null({"to": "WF.sink", "clash": True}, i) for i in range(3)],
    "no target": [null({"nothing": 1}, i) for i in range(3)],
    "unknown name": [null({"to": "WF.nobody"}, i) for i in range(3)],
    "a name in another hive": [null({"to": "WF.x@east"}, i) for i in range(3)],
    "src_ilk without an identity region": [null({"to": "WF.other"}, i, src_ilk=ILK) for i in range(3)],
    "system message": [body(None, i, meta={"type": "system", "msg": "NODE_STATUS_GET"}) for i in range(2)],
    "meta of the wrong type": [body(None, 1, meta={"type": 5}), null({"to": "WF.other"})],
    "ttl 0 and a spoofed src": [body(None, ttl=0), body(None, src=NODES["WF.other"]), null({"to": "WF.other"})],
}


@pytest.mark.parametrize("name", list(FRAMES))
async def test_the_lane_and_the_general_path_agree(tmp_path: Path, name: str) -> None:
    fast, general = hives(tmp_path)
    frames = FRAMES[name]
    fast.conns["WF.client"].data_received(b"".join(frame(b) for b in frames))
    general_feed(general, frames)
    compare(fast, general)


async def test_repeated_decisions_take_the_lane_and_are_audited_as_aggregates(tmp_path: Path) -> None:
    fast, general = hives(tmp_path)
    frames = [null({"to": CAP}, i) for i in range(30)] + [null({"to": "WF.other"}, i) for i in range(30)]
    for chunk in (frames[:1], frames[1:31], frames[31:]):  # separate reads: the first decision is cached first
        fast.conns["WF.client"].data_received(b"".join(frame(b) for b in chunk))
    general_feed(general, frames)
    compare(fast, general)
    lane = fast.router.policy.lane
    assert fast.general_calls == 2 and lane.taken == 58, "the first of each meta is evaluated, the rest take the lane"
    received = fast.received()
    assert [len(received[n]) for n in ("WF.sink", "WF.sink#2", "WF.other")] == [8, 7, 15 + 30]
    assert all(m["routing"]["dst"] == NODES["WF.other"] for m in received["WF.other"]), "the node is stamped"
    decisions = fast.router.policy.decisions(None)["decisions"]
    assert sum(d["count"] for d in decisions) == 60 and any(d["count"] > 1 for d in decisions)
    metrics = fast.router.policy.prometheus()
    assert 'fluxbee_router_policy_decisions_total{result="routed"} 60' in metrics
    assert 'fluxbee_router_policy_cache_total{outcome="hit"} 58' in metrics
    assert fast.router.l3.counts[NO_ILK] == 60


async def test_a_new_version_between_reads_routes_each_message_by_exactly_one_version(tmp_path: Path) -> None:
    fast, general = hives(tmp_path)
    first = [null({"to": "WF.other"}, i) for i in range(20)]
    second = [null({"to": "WF.other"}, i) for i in range(20, 40)]
    swap = loaded(2, 'package router\n\ntarget := "WF.sink" if input.meta.context.to\n')
    for hive in (fast, general):
        feed = (lambda fs, h=hive: h.conns["WF.client"].data_received(b"".join(frame(b) for b in fs))) \
            if hive is fast else (lambda fs, h=hive: general_feed(h, fs))
        feed(first[:1])
        feed(first[1:])
        hive.router.policy.install(swap)
        feed(second[:1])
        feed(second[1:])
    compare(fast, general)
    received = fast.received()
    assert sorted(m["payload"] for m in received["WF.other"]) == list(range(20))
    assert sorted(m["payload"] for m in received["WF.sink"] + received["WF.sink#2"]) == list(range(20, 40))
    by, _ = audited(fast)
    assert by == {(1, "routed", "WF.other@prod"): 20, (2, "routed", "WF.sink@prod"): 20}
    assert fast.router.policy.lane.taken == 38


async def test_node_changes_and_an_identity_change_are_followed(tmp_path: Path) -> None:
    fast, general = hives(tmp_path)
    cap = [null({"to": CAP}, i) for i in range(6)]
    for hive in (fast, general):
        feed = (lambda fs, h=hive: h.conns["WF.client"].data_received(b"".join(frame(b) for b in fs))) \
            if hive is fast else (lambda fs, h=hive: general_feed(h, fs))
        feed(cap[:1])
        feed(cap[1:])
        hive.join("WF.third", THIRD)  # a third holder connects: the lane's candidates grow
        feed(cap)
        hive.conns["WF.third"].connection_lost(None)  # and goes
        feed(cap)
        # the identity data changes (a new identity version): the capability is now WF.other's alone
        current = hive.router.policy.current
        assert current is not None
        hive.router.policy.install(rp.Loaded(current.version, current.sha256, current.artefact, current.engine,
                                             (1, 2), current.handlers, {CAP: ("WF.other",)}))
        feed(cap)
    compare(fast, general)
    assert fast.router.policy.lane.taken == 24 - 2, "all but the first decision of each identity version"
    received = fast.received()
    assert (len(received["WF.other"]), len(received["WF.third"])) == (3 + 2 + 3 + 6, 2)


async def test_what_the_lane_cannot_queue_goes_to_the_general_path(tmp_path: Path) -> None:
    vpns = [VpnSpec(pattern="AI.vpn1", match_kind="EXACT", vpn_id=1)]
    fast, general = hives(tmp_path, vpns=vpns)
    frames = [null({"to": "AI.vpn1"}, i) for i in range(3)] + [null({"to": "WF.other"}, i) for i in range(3)]
    for hive in (fast, general):
        hive.transports["WF.other"].buffered = 10**7  # congested
    fast.conns["WF.client"].data_received(b"".join(frame(b) for b in frames))
    general_feed(general, frames)
    compare(fast, general)
    assert fast.router.policy.lane.taken == 0
    assert all(m["meta"].get("msg") == wire.UNREACHABLE for m in fast.received()["WF.client"])


async def test_a_src_ilk_entry_is_dropped_when_the_identity_region_moves(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = hives(tmp_path)
    region = [(0, 0)]
    monkeypatch.setattr(fast.router.l3, "identity_version", lambda: region[0])
    frames = [null({"to": "WF.other"}, i, src_ilk=ILK) for i in range(4)]
    conn = fast.conns["WF.client"]
    conn.data_received(b"".join(frame(b) for b in frames[:1]))
    conn.data_received(b"".join(frame(b) for b in frames[1:]))
    assert fast.router.policy.describe()["cache"]["lane_hits"] == 3
    region[0] = (1, 5)  # SY.identity published a change: the pre-resolve must be asked again
    calls = fast.general_calls
    conn.data_received(b"".join(frame(b) for b in frames))
    assert fast.general_calls == calls + 4 and fast.router.policy.describe()["cache"]["lane_hits"] == 3
    assert fast.router.l3.counts[NO_REGION] == 8
    assert [m["payload"] for m in fast.received()["WF.other"]] == [0, 1, 2, 3, 0, 1, 2, 3]


async def test_the_lane_stays_bounded_and_loses_no_count_when_it_is_emptied(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nullroute, "LANE_ENTRIES", 3)
    fast, general = hives(tmp_path)
    frames = [null({"to": "WF.other", "k": k}, i) for i in range(4) for k in range(5)]  # five metas, in turn
    for hive in (fast, general):
        if hive is fast:
            for f in frames:  # one read each: the lane learns and forgets as it goes
                hive.conns["WF.client"].data_received(frame(f))
        else:
            general_feed(hive, frames)
    lane = fast.router.policy.lane
    assert lane.size <= 3
    compare(fast, general)
    assert lane.taken > 0 and sum(d["count"] for d in fast.router.policy.decisions(None)["decisions"]) == 20
