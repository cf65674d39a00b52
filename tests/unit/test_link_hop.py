"""``hop`` (the link side of the fast path) against msgspec: a forwarded run is exactly what the general
path would write for each frame with ``ttl - 1``, and bad input is never passed on.

Frames come from a builder, from hypothesis, and from mutating valid frames; the C function and the
pure-Python one are both checked against the same definition.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speedup_frames import EDITS, NODE, NODE_B, apply_edits, frame_body

from fluxbee.dataplane import _native, fastpath, wire

DST = "WF.echo@B"
META = b'{"type":"user"}'

Hop = Callable[[list[bytes], int, bytes, str, bytes, int, int], "tuple[bytes, int]"]
IMPLEMENTATIONS: list[tuple[str, Hop]] = [("python", fastpath.hop_py)]
if _native.speedups is not None:
    IMPLEMENTATIONS.append(("c", _native.speedups.hop))
IDS = [name for name, _ in IMPLEMENTATIONS]
HOPS = [hop for _, hop in IMPLEMENTATIONS]


def body(payload: object = "x" * 50, *, ttl: int = 16, dst: str | None = DST, meta: bytes = META,
         src: str = NODE) -> bytes:
    return frame_body(dst, payload, ttl=ttl, meta=meta, src=src)


def forwarded(frame_body: bytes) -> bytes | None:
    """What the general path writes to a link for ``frame_body`` (None: it would not forward it as is)."""
    try:
        env = wire.decode_raw(frame_body)
    except wire.ProtocolError:
        return None
    r = env.routing
    if r.src != NODE or r.dst != DST or r.ttl < 2 or r.src_l2_name is not None or bytes(env.meta) != META:
        return None
    r.ttl -= 1
    return wire.encode_frame(env)


def expected(bodies: list[bytes], start: int, hard: int, limit: int) -> tuple[bytes, int]:
    out: list[bytes] = []
    total = 0
    for b in bodies[start:start + max(0, limit)]:
        frame = forwarded(b)
        if frame is None or len(frame) > hard - total:
            break
        out.append(frame)
        total += len(frame)
    return b"".join(out), len(out)


def check(hop: Hop, bodies: list[bytes], start: int = 0, hard: int = 1 << 30, limit: int = 1 << 20, *,
          exact: bool = True) -> int:
    """``exact``: the frames are in the canonical layout (as built here), so C must take what Python takes."""
    data, count = hop(bodies, start, NODE_B, DST, META, hard, limit)
    want_data, want_count = expected(bodies, start, hard, limit)
    if hop is fastpath.hop_py or exact and all(b.isascii() and b"\\" not in b and b"\x7f" not in b
                                     for b in bodies[start:start + want_count + 1]):
        assert (data, count) == (want_data, want_count)
    else:  # C may stop earlier (it takes the canonical layout only), never later or differently
        assert count <= want_count and want_data.startswith(data)
    return count


@pytest.mark.parametrize("hop", HOPS, ids=IDS)
def test_a_run_goes_out_with_each_ttl_lowered_by_one(hop: Hop) -> None:
    run = [body(ttl=t) for t in (2, 9, 10, 11, 99, 100, 101, 255)]
    assert check(hop, run) == len(run)
    data, _ = hop(run, 0, NODE_B, DST, META, 1 << 30, 100)
    frames = wire.FrameReader().feed(data)
    assert [wire.decode_raw(f).routing.ttl for f in frames] == [1, 8, 9, 10, 98, 99, 100, 254]
    assert all(wire.decode_raw(f).routing.src_l2_name is None for f in frames)


@pytest.mark.parametrize("hop", HOPS, ids=IDS)
def test_a_run_stops_where_the_general_path_must_decide(hop: Hop) -> None:
    good = body()
    stamped = good.replace(b'"routing":{', b'"routing":{"src_l2_name":"x",')
    for stopper in (body(ttl=1), body(ttl=0), body(dst="WF.other@B"), body(dst=None), body(meta=b'{"type":"system"}'),
                    body(src=str(uuid.uuid4())), b"not json", stamped):
        assert check(hop, [good, stopper, good]) == 1, stopper
        assert check(hop, [stopper, good]) == 0, stopper
    assert check(hop, [good, good, good], start=1) == 2
    assert check(hop, [good, good, good], limit=1) == 1
    assert check(hop, [good, good, good], start=5) == 0
    size = len(forwarded(good) or b"")
    assert check(hop, [good, good, good], hard=2 * size) == 2
    assert check(hop, [good, good, good], hard=size - 1) == 0


@pytest.mark.parametrize("hop", HOPS, ids=IDS)
@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=40),
                                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
                         min_size=1, max_size=6),
       ttls=st.lists(st.integers(0, 255), min_size=6, max_size=6), hard=st.integers(0, 2000))
def test_generated_runs(hop: Hop, payloads: list[object], ttls: list[int], hard: int) -> None:
    check(hop, [body(p, ttl=t) for p, t in zip(payloads, ttls, strict=False)], hard=hard)


@pytest.mark.parametrize("hop", HOPS, ids=IDS)
@settings(max_examples=800, deadline=None)
@given(edits=EDITS, ttl=st.integers(0, 255))
def test_mutated_frames_are_never_passed_on_when_msgspec_refuses_them(
        hop: Hop, edits: list[tuple[str, int, int]], ttl: int) -> None:
    check(hop, [apply_edits(body({"a": [1, "b"]}, ttl=ttl), edits), body()], exact=False)


def test_the_c_hop_refuses_wrong_arguments() -> None:
    if _native.speedups is None:
        pytest.skip("the C extension is not in use")
    hop = _native.speedups.hop
    with pytest.raises(TypeError):
        hop([body()], 0, NODE_B, DST, META, 100)
    with pytest.raises(TypeError):
        hop((body(),), 0, NODE_B, DST, META, 100, 1)
    with pytest.raises(TypeError):
        hop([body()], 0, NODE_B, b"dst", META, 100, 1)
    assert hop([body(), 42, body()], 0, NODE_B, DST, META, 1 << 20, 10)[1] == 1  # not bytes: the run ends
