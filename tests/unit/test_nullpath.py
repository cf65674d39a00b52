"""The ``dst: null`` splicer (C ``scan_null``/``splice_null``/``extend_null`` and the Python ones) against msgspec.

For every frame ``scan_null`` accepts, msgspec must decode it the same way (``dst: null``, this
sender, a live TTL, meta an object), and the spliced frame must be byte for byte what the router's
general path writes once it has set ``routing.dst`` and ``src_l2_name``. The C functions may refuse
what they do not handle; they must never accept what msgspec refuses, nor read outside the body,
whatever ``cut`` they are given. ``hack/fuzz_speedups.py`` runs the same checks on mutated frames
under the sanitizers.
"""

from __future__ import annotations

import ctypes
import random
import uuid
from typing import Any

import pytest
from speedup_frames import NODE, NODE_B, STAMP, frame_body, mutate

from fluxbee.dataplane import _native, nullpath, wire

DST = "11111111-2222-4333-8444-555555555555"
speedups = _native.speedups
needs_c = pytest.mark.skipif(speedups is None, reason=f"the C extension is not in use: {_native.IMPLEMENTATION}")


def expected(body: bytes, dst: str = DST) -> tuple[bytes, bytes] | None:
    """(meta, frame) as the general path makes them of ``body`` routed to ``dst`` (None: not a lane frame)."""
    try:
        env = wire.decode_raw(body)
    except wire.ProtocolError:
        return None
    r = env.routing
    meta = bytes(env.meta)
    if r.src != NODE or r.ttl == 0 or r.dst is not None or r.src_l2_name is not None or meta[:1] != b"{":
        return None
    r.dst, r.src_l2_name = dst, "WF.client@prod"
    try:
        return meta, wire.encode_frame(env)
    except wire.FrameTooLargeError:
        return None


def spliced(scan: Any, splice: Any, body: bytes, dst: str = DST) -> tuple[bytes, bytes] | None:
    hit = scan(body, NODE_B)
    if hit is None:
        return None
    out = splice(body, NODE_B, hit[1], STAMP, dst)
    return None if out is None else (hit[0], out)


PAIRS = [("python", nullpath.scan_null_py, nullpath.splice_null_py)]
if speedups is not None:
    PAIRS.append(("c", speedups.scan_null, speedups.splice_null))


BODIES = [
    frame_body(None),
    frame_body(None, {"a": [1, -2.5e10, None, True, "ü🐝\\n\"q\""], "b": {"c": {}}}),
    frame_body(None, None, meta={"type": "user", "src_ilk": f"ilk:{uuid.uuid4()}", "context": {"k": [1, {"z": 0}]}}),
    frame_body(None, [[[[[[1]]]]]], ttl=255),
    frame_body(None, "x", ttl=1),
]


@pytest.mark.parametrize(("name", "scan", "splice"), PAIRS, ids=[p[0] for p in PAIRS])
def test_sdk_frames_are_spliced_as_the_general_path_writes_them(name: str, scan: Any, splice: Any) -> None:
    for body in BODIES:
        assert spliced(scan, splice, body) == expected(body) is not None, body


@pytest.mark.parametrize(("name", "scan", "splice"), PAIRS, ids=[p[0] for p in PAIRS])
def test_what_the_lane_must_not_take(name: str, scan: Any, splice: Any) -> None:
    for body in (frame_body("WF.echo"), frame_body(None, ttl=0), frame_body(None, src=str(uuid.uuid4())),
                 frame_body(None, meta=[1]), frame_body(None)[:-1], frame_body(None) + b" x",
                 frame_body(None).replace(b'"trace_id":', b'"src_l2_name":"WF.fake","trace_id":')):
        assert scan(body, NODE_B) is None, body
    big = frame_body(None, "")
    big = big.replace(b'"payload":""', b'"payload":"' + b"x" * (wire.MAX_FRAME - 20 - len(big)) + b'"')
    assert len(big) <= wire.MAX_FRAME and scan(big, NODE_B) is not None
    assert spliced(scan, splice, big) == expected(big) is None, "the spliced frame would pass the size limit"
    assert spliced(scan, splice, BODIES[0], 'a"b') is None and spliced(scan, splice, BODIES[0], "é") is None


@needs_c
def test_a_wrong_cut_or_node_gives_none_never_a_read_outside_the_body() -> None:
    assert speedups is not None
    body = BODIES[1]
    _, cut = speedups.scan_null(body, NODE_B)
    good = speedups.splice_null(body, NODE_B, cut, STAMP, DST)
    assert good is not None
    exact = (ctypes.c_char * len(body)).from_buffer_copy(body)
    for bad in (-1, 0, 10, cut - 1, cut + 1, len(body) - 1, len(body), len(body) + 10, 2**40):
        got = speedups.splice_null(exact, NODE_B, bad, STAMP, DST)
        assert got is None or (bad != cut and got[:4] == good[:4]), bad
    assert speedups.splice_null(body, str(uuid.uuid4()).encode(), cut, STAMP, DST) is None
    assert speedups.splice_null(body[:40], NODE_B, cut, STAMP, DST) is None
    with pytest.raises(TypeError):
        speedups.splice_null(body, NODE_B, cut, STAMP, b"bytes")
    with pytest.raises(TypeError):
        speedups.scan_null("text", NODE_B)
    with pytest.raises(TypeError):
        speedups.extend_null((), 0, NODE_B, STAMP, DST, b"{}", 1, 1)


def runs(scan: Any, splice: Any, bodies: list[bytes], start: int, meta: bytes, soft: int,
         hard: int) -> tuple[bytes, int]:
    out, count = b"", 0
    for body in bodies[start:]:
        got = spliced(scan, splice, body)
        if len(out) >= soft or got is None or got[0] != meta or len(out) + len(got[1]) > hard:
            break
        out += got[1]
        count += 1
    return out, count


def test_extend_null_takes_the_run_scan_null_takes_in_c_and_python() -> None:
    rng = random.Random(15)
    meta = nullpath.scan_null_py(BODIES[0], NODE_B)
    assert meta is not None
    for _ in range(200):
        bodies = [rng.choice([BODIES[0], BODIES[0], BODIES[1], frame_body("WF.x"), b"junk"]) for _ in range(8)]
        start, soft, hard = rng.randrange(-1, 9), rng.choice([10**6, rng.randrange(1, 3000)]), rng.randrange(0, 3000)
        want = runs(nullpath.scan_null_py, nullpath.splice_null_py, bodies, max(start, 0), meta[0], soft, hard)
        assert nullpath.extend_null_py(bodies, start, NODE_B, STAMP, DST, meta[0], soft, hard) == want
        if speedups is not None:
            assert speedups.extend_null(bodies, start, NODE_B, STAMP, DST, meta[0], soft, hard) == want


@needs_c
def test_mutated_frames_the_c_path_accepts_are_what_msgspec_reads() -> None:
    assert speedups is not None
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        body = mutate(rng, rng.choice(BODIES), max_edits=4)
        got = spliced(speedups.scan_null, speedups.splice_null, body)
        if got is not None:
            accepted += 1
            assert got == expected(body), body
    assert accepted > 100
