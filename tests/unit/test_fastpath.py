"""The C fast path (``_speedups.c``) against msgspec: it may refuse, it must never pass on bad input.

For every frame ``scan`` accepts, msgspec must decode it the same way and the
stamped frame must be byte for byte what the router's general path writes.
Frames come from the SDK's builder, from hypothesis, and from mutating
valid frames (flipped, dropped and inserted bytes, truncation).
"""

from __future__ import annotations

import ctypes
import json
import os
import uuid
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from speedup_frames import EDITS, NODE, NODE_B, STAMP, apply_edits, frame_body

from fluxbee.dataplane import _native, fastpath, wire

Scan = Callable[[bytes, bytes, bytes], "tuple[str, bytes, bytes] | None"]
IMPLEMENTATIONS: list[tuple[str, Scan]] = [("python", fastpath.scan_py)]
if _native.speedups is not None:
    IMPLEMENTATIONS.append(("c", _native.speedups.scan))
IDS = [name for name, _ in IMPLEMENTATIONS]
SCANS = [scan for _, scan in IMPLEMENTATIONS]


def test_the_c_extension_is_built_on_this_kind_of_machine() -> None:
    """The project installs with gcc and the Python headers present: the extension must be there."""
    if os.environ.get("FLUXBEE_PURE_PYTHON"):
        pytest.skip("FLUXBEE_PURE_PYTHON is set: the pure-Python path is under test")
    assert _native.speedups is not None, _native.IMPLEMENTATION
    assert fastpath.IMPLEMENTATION == "c"
    assert wire._split is not None


def expected(body: bytes) -> tuple[str, bytes, bytes] | None:
    """What the router's general path makes of ``body`` (None: it would not take the fast path)."""
    try:
        env = wire.decode_raw(body)
    except wire.ProtocolError:
        return None
    r = env.routing
    if r.src != NODE or r.ttl == 0 or r.dst is None or r.src_l2_name is not None:
        return None
    meta = bytes(env.meta)
    if meta[:1] != b"{":
        return None
    r.src_l2_name = "WF.client@prod"
    try:
        frame = wire.encode_frame(env)
    except wire.FrameTooLargeError:
        return None
    return r.dst, meta, frame


def check(scan: Scan, body: bytes) -> tuple[str, bytes, bytes] | None:
    got = scan(body, NODE_B, STAMP)
    if got is not None:
        assert got == expected(body), body
    return got


# --- what the fast path must take -------------------------------------------
@pytest.mark.parametrize("scan", SCANS, ids=IDS)
def test_sdk_frames_take_the_fast_path(scan: Scan) -> None:
    for body in (frame_body(), frame_body(str(uuid.uuid4())), frame_body("WF.echo@*"),
                 frame_body(payload={"a": [1, 2.5e-3, None, True, "ü 🐝"], "b": {}}),
                 frame_body(meta={"type": "user", "thread_id": "t-1", "context": {"k": [1]}}),
                 frame_body(ttl=1), frame_body(ttl=255)):
        got = check(scan, body)
        assert got is not None, body


# --- what it must leave to the general path --------------------------------
REFUSED = {
    "other src": frame_body(src=str(uuid.uuid4())),
    "ttl 0": frame_body(ttl=0),
    "null dst": frame_body(None),
    "meta not an object": frame_body().replace(b'"meta":{"type":"user"}', b'"meta":[1]'),
    "src_l2_name already set": msgspec.json.encode({
        "routing": {"src": NODE, "dst": "WF.echo", "ttl": 16, "trace_id": "t", "src_l2_name": "WF.spoof@prod"},
        "meta": {"type": "user"}, "payload": 1}),
    "whitespace": frame_body().replace(b'{"routing":', b'{ "routing":'),
    "trailing whitespace": frame_body() + b" ",
    "key order": frame_body().replace(b'"meta":{"type":"user"}', b'"meta":{"type":"user"},"x":1'),
    "invalid utf-8": frame_body().replace(b"xxxx", b"x\xff\xfex"),
    "overlong utf-8": frame_body().replace(b"xxxx", b"x\xc0\xafx"),
    "utf-8 surrogate": frame_body().replace(b"xxxx", b"x\xed\xa0\x80"),
    "escaped surrogate": frame_body().replace(b"xxxx", b"x\\ud800x"),
    "control character": frame_body().replace(b"xxxx", b"x\x01xx"),
    "bad escape": frame_body().replace(b"xxxx", b"x\\qxx"),
    "truncated unicode escape": frame_body(payload=1).replace(b'"payload":1}', b'"payload":"\\u0'),
    "truncated escape": frame_body(payload=1).replace(b'"payload":1}', b'"payload":"\\'),
    "truncated utf-8": frame_body(payload=1).replace(b'"payload":1}', b'"payload":"\xf0\x9f'),
    "leading zero": frame_body(payload=1).replace(b'"payload":1', b'"payload":01'),
    "bare minus": frame_body(payload=1).replace(b'"payload":1', b'"payload":-'),
    "dot without digits": frame_body(payload=1).replace(b'"payload":1', b'"payload":1.'),
    "exponent without digits": frame_body(payload=1).replace(b'"payload":1', b'"payload":1e+'),
    "truncated": frame_body()[:-1],
    "trailing comma": frame_body(payload=[1]).replace(b"[1]", b"[1,]"),
    "deep nesting": frame_body(payload=1).replace(b'"payload":1', b'"payload":' + b"[" * 70 + b"]" * 70),
    "ttl 256": frame_body().replace(b'"ttl":16', b'"ttl":256'),
    "ttl 016": frame_body().replace(b'"ttl":16', b'"ttl":016'),
    "escaped dst": frame_body("WF.a\\b"),
    "non-ascii dst": frame_body("WF.ü"),
    "too large once stamped": frame_body(payload="x" * (wire.MAX_FRAME - 5 - len(frame_body(payload="")))),
}


@pytest.mark.parametrize("scan", SCANS, ids=IDS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_everything_else_goes_to_the_general_path(scan: Scan, case: str) -> None:
    """The C scan refuses all of these; the Python one may take what the general path would forward."""
    body = REFUSED[case]
    if case == "too large once stamped":
        assert len(body) <= wire.MAX_FRAME < len(body) + len(STAMP)
    got = check(scan, body)
    if scan is fastpath.scan_py:
        assert got == expected(body)
    else:
        assert got is None


@pytest.mark.skipif(_native.speedups is None, reason="the C extension is not built")
@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("tail", [b"0000", b'0"}', b"\x80\x80\x80", b'A"},"payload":1}'])
def test_the_c_scan_never_reads_past_the_end_of_its_buffer(case: str, tail: bytes) -> None:
    """Bytes objects end in a NUL that would stop a runaway read; other buffers do not.

    A view that ends inside a larger buffer shows a runaway read as a different answer; a buffer
    allocated to the exact size makes it an error under ASan (hack/check-speedups.sh).
    """
    assert _native.speedups is not None
    body = REFUSED[case]
    want = _native.speedups.scan(body, NODE_B, STAMP)
    assert _native.speedups.scan(memoryview(body + tail)[: len(body)], NODE_B, STAMP) == want
    assert _native.speedups.scan((ctypes.c_char * len(body)).from_buffer_copy(body), NODE_B, STAMP) == want


@pytest.mark.skipif(_native.speedups is None, reason="the C extension is not built")
@pytest.mark.parametrize("case", ["whitespace", "trailing whitespace", "deep nesting", "escaped dst"])
def test_the_c_path_is_stricter_than_msgspec_where_it_does_not_need_to_be_general(case: str) -> None:
    """Valid frames it refuses still reach their node, through the general path."""
    assert _native.speedups is not None
    assert expected(REFUSED[case]) is not None
    assert fastpath.scan_py(REFUSED[case], NODE_B, STAMP) is not None


# Bytes a string scan must look at one by one, valid and not.  The C scan reads strings eight bytes
# at a time; each of these goes at every offset of a word and at the string's last bytes.
STRING_BYTES = [b"\x00", b"\x01", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"\xe2\x82\xac",
                b"\xf0\x9f\x90\x9d", b"\xc3", b"\xed\xa0\x80", b'\\"', b"\\\\", b"\\n", b"\\u00e9",
                b"\\ud83d", b"\\", b'"', b" ", b"~"]
TAKEN = {b"\x7f", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x90\x9d", b'\\"', b"\\\\", b"\\n", b"\\u00e9", b" ", b"~"}


@pytest.mark.parametrize("scan", SCANS, ids=IDS)
@pytest.mark.parametrize("special", STRING_BYTES)
def test_special_bytes_at_every_offset_of_a_string(scan: Scan, special: bytes) -> None:
    for before in range(0, 18):
        for after in (0, 1, 7, 8, 9, 16):
            text = b"a" * before + special + b"b" * after
            body = frame_body(payload=1).replace(b'"payload":1}', b'"payload":"' + text + b'"}')
            got = check(scan, body)  # whatever a scan takes is what the general path makes of it
            if special in TAKEN:
                assert got is not None, (special, before, after)


# --- generated and mutated frames ------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
metas = st.fixed_dictionaries({"type": st.sampled_from(["user", "system", "admin"])},
                              optional={"msg": st.text(max_size=10), "thread_id": st.text(max_size=10),
                                        "context": st.dictionaries(st.text(max_size=5), json_values, max_size=3)})
dsts = st.none() | st.just("broadcast") | st.uuids().map(str) | st.text(max_size=20)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    return frame_body(draw(dsts), draw(json_values), ttl=draw(st.integers(0, 255)), meta=draw(metas),
                      src=draw(st.sampled_from([NODE, str(uuid.uuid4())])))


@pytest.mark.parametrize("scan", SCANS, ids=IDS)
@settings(max_examples=400, deadline=None)
@given(body=bodies())
@example(body=frame_body("\x7f", 1))  # found by hypothesis: a DEL in dst is the general path's, not C's
def test_generated_frames(scan: Scan, body: bytes) -> None:
    got = check(scan, body)
    want = expected(body)
    if scan is fastpath.scan_py:
        assert got == want
    elif want is not None and body.isascii() and b"\\" not in body and b"\x7f" not in body:
        # Canonical, compact, plain: the C path must take it.  (Its routing strings are printable
        # ASCII only, so a DEL anywhere is left to the general path; payload strings may hold one.)
        assert got == want


@pytest.mark.parametrize("scan", SCANS, ids=IDS)
@settings(max_examples=1500, deadline=None)
@given(body=bodies(), edits=EDITS)
@example(body=frame_body(payload={"a": "b"}), edits=[("insert", 60, ord("}"))])
def test_mutated_frames_are_never_passed_on_when_msgspec_refuses_them(
    scan: Scan, body: bytes, edits: list[tuple[str, int, int]],
) -> None:
    check(scan, apply_edits(body, edits))


@given(st.binary(max_size=400))
def test_garbage(data: bytes) -> None:
    for scan in SCANS:
        check(scan, data)
        check(scan, b'{"routing":{"src":"' + NODE_B + b'","dst":"x","ttl":1,"trace_id":"t"},"meta":{},"payload":'
              + data + b"}")


def test_the_stamped_frame_is_what_nodes_decode() -> None:
    body = frame_body(payload={"n": 1})
    for scan in SCANS:
        got = scan(body, NODE_B, STAMP)
        assert got is not None
        dst, meta, frame = got
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        msg = wire.decode_message(frame[4:])
        assert (dst, msg.routing.src_l2_name, msg.payload) == ("WF.echo", "WF.client@prod", {"n": 1})
        assert json.loads(meta) == {"type": "user"}


# --- splitting ----------------------------------------------------------------
def split_py(data: bytes, max_frame: int) -> tuple[list[bytes], int, int]:
    out: list[bytes] = []
    pos = 0
    while len(data) - pos >= 4:
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size > max_frame:
            return out, pos, size
        if len(data) - pos - 4 < size:
            break
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out, pos, 0


@pytest.mark.skipif(_native.speedups is None, reason="the C extension is not built")
@given(st.lists(st.binary(max_size=300), max_size=8), st.binary(max_size=12), st.integers(0, 400))
def test_c_split_matches_the_definition(frames: list[bytes], tail: bytes, max_frame: int) -> None:
    assert _native.speedups is not None
    data = b"".join(len(f).to_bytes(4, "big") + f for f in frames) + tail
    for src in (data, bytearray(data)):
        bodies_, used, oversize = _native.speedups.split(src, max_frame)
        assert (bodies_, used, oversize) == split_py(data, max_frame)


@pytest.mark.skipif(_native.speedups is None, reason="the C extension is not built")
def test_c_functions_refuse_wrong_arguments() -> None:
    assert _native.speedups is not None
    with pytest.raises(TypeError):
        _native.speedups.scan(b"{}", NODE_B)
    with pytest.raises(TypeError):
        _native.speedups.scan("not bytes", NODE_B, STAMP)
    with pytest.raises(TypeError):
        _native.speedups.split(b"", "x")
    with pytest.raises(TypeError):
        _native.speedups.split(None, 10)


def test_an_out_of_date_extension_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build from older sources (no extend()) falls back to Python with the reason, instead of crashing."""
    import types

    import fluxbee.dataplane

    old = types.ModuleType("fluxbee.dataplane._speedups")
    old.scan = fastpath.scan_py  # type: ignore[attr-defined]
    old.split = lambda data, max_frame: ([], 0, 0)  # type: ignore[attr-defined]
    monkeypatch.setattr(fluxbee.dataplane, "_speedups", old, raising=False)
    monkeypatch.delenv("FLUXBEE_PURE_PYTHON", raising=False)
    module, why = _native._load()
    assert module is None
    assert why == ("python (C extension out of date, lacks extend, frame, trace_seed, trace_id, scan_null, "
                   "splice_null, extend_null, hop: run `make setup` or reinstall)")
