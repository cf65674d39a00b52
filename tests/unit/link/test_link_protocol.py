"""HELLO checks and negotiation: each refusal has its reason; LSA frames stay under the frame limit."""

from __future__ import annotations

import itertools
import uuid

import msgspec
import pytest

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as p

OWN = str(uuid.uuid4())


def hello(hive: str = "B", role: p.Role = "wan", **kw: object) -> p.LinkHello:
    h = p.hello(str(uuid.uuid4()), f"RT.gateway@{hive}", hive, role, 10_000, 40_000)
    for key, value in kw.items():
        setattr(h, key, value)
    return h


def roundtrip(h: p.LinkHello) -> p.LinkHello | p.Reject:
    return p.parse_hello(msgspec.json.encode(h))


WAN = p.Expect(own_hive="A", own_router_id=OWN, role="wan")


def test_a_good_hello_parses_and_is_accepted() -> None:
    h = roundtrip(hello())
    assert isinstance(h, p.LinkHello)
    assert p.check_hello(h, "B", WAN) is None
    assert p.check_hello(h, None, WAN) is None  # insecure dev links believe the claim


@pytest.mark.parametrize(("h", "cert", "expect", "reason"), [
    (hello("B"), "C", WAN, p.CERT_HIVE_MISMATCH),
    (hello("A"), "A", WAN, p.SAME_HIVE),
    (hello("B", role="mesh"), "B", WAN, p.ROLE_MISMATCH),
    (hello("B"), "B", p.Expect("A", OWN, "wan", authorized=frozenset({"C"})), p.HIVE_NOT_AUTHORIZED),
    (hello("B"), "B", p.Expect("A", OWN, "wan", refused=frozenset({"B"})), p.HIVE_NOT_AUTHORIZED),
    (hello("B", role="mesh"), "B", p.Expect("A", OWN, "mesh"), p.MESH_HIVE_MISMATCH),
    (hello("B", protocol="json-router/1.13"), "B", WAN, p.PROTOCOL_UNSUPPORTED),
    (hello("B", router_id=OWN), "B", WAN, p.SELF_LINK),
])
def test_refusals_carry_the_reason(h: p.LinkHello, cert: str, expect: p.Expect, reason: str) -> None:
    refused = p.check_hello(h, cert, expect)
    assert isinstance(refused, p.Reject) and refused.reason == reason and refused.message


@pytest.mark.parametrize("raw", [b"{}", b"[]", b"not json", b'{"protocol":"fluxbee-link/1","router_id":"x",'
                                 b'"router_name":"r","hive_id":"B","timers":{"hello_interval_ms":1,'
                                 b'"dead_interval_ms":4}}'])
def test_bad_hello_payloads_are_invalid_hello(raw: bytes) -> None:
    refused = p.parse_hello(raw)
    assert isinstance(refused, p.Reject) and refused.reason == p.INVALID_HELLO


def test_bad_timers_and_hive_ids_are_invalid_hello() -> None:
    assert isinstance(roundtrip(hello(timers=p.Timers(1000, 500))), p.Reject)
    assert isinstance(roundtrip(hello(hive_id="no/slash")), p.Reject)


def test_negotiation_takes_the_shorter_hello_and_the_longer_dead_interval() -> None:
    n = p.negotiate(p.Timers(10_000, 40_000), p.Timers(2_000, 60_000))
    assert (n.hello_interval_ms, n.dead_interval_ms) == (2_000, 60_000)


def test_lsa_parts_fit_in_a_frame_and_bad_lsas_are_refused() -> None:
    nodes = [p.NodeAd(str(uuid.uuid4()), f"AI.{'y' * 240}.{i}@B") for i in range(3000)]
    parts = p.lsa_payloads(hive="B", router_id=OWN, router_name="RT.gateway@B", origin="B", path=["B"], version=1,
                           nodes=nodes, seqs=itertools.count(1), now_ms=0)
    assert len(parts) > 2 and [x.part for x in parts] == list(range(len(parts)))
    assert sum(len(x.nodes) for x in parts) == 3000
    for part in parts:
        frame = p.control_frame(OWN, p.LSA, part)  # raises FrameTooLargeError if it would not fit
        assert len(frame) <= wire.MAX_FRAME + wire.HEADER_SIZE
        back = p.parse_lsa(wire.decode_raw(frame[4:]).payload)
        assert isinstance(back, p.LsaPayload) and back.seq == part.seq
    bad = msgspec.json.encode(parts[0].__class__(**{**{f: getattr(parts[0], f) for f in parts[0].__struct_fields__},
                                                     "part": 5, "parts": 2}))
    assert isinstance(p.parse_lsa(bad), p.Reject)
    bad_node = msgspec.json.encode({**msgspec.to_builtins(parts[0]), "nodes": [{"uuid": "x", "name": "n@B"}]})
    assert isinstance(p.parse_lsa(bad_node), p.Reject)
    assert isinstance(p.parse_lsa(b"{"), p.Reject)


def test_lsas_naming_bad_hives_or_endless_paths_are_refused() -> None:
    base = msgspec.to_builtins(p.lsa_payloads(hive="B", router_id=OWN, router_name="RT.gateway@B", origin="B",
                                              path=["B"], version=1, nodes=[], seqs=itertools.count(1),
                                              now_ms=0)[0])
    for change in ({"origin": "a/b"}, {"path": ["B", "../x"]}, {"hive": ""},
                   {"path": [f"H{i}" for i in range(p.MAX_PATH + 1)]}, {"parts": p.MAX_PARTS + 1}):
        refused = p.parse_lsa(msgspec.json.encode({**base, **change}))
        assert isinstance(refused, p.Reject) and refused.reason == p.BAD_LSA
