"""The SDK's spliced frames are exactly what encoding the Message would write."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig
from fluxbee.dataplane.sdk.node import _Client

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def reference(client: _Client, dst: str | None, payload: Any, msg_type: str, trace: str) -> bytes:
    return wire.encode_frame(wire.Message(
        routing=wire.Routing(src=client.uuid, dst=dst, ttl=wire.DEFAULT_TTL, trace_id=trace),
        meta=wire.Meta(type=msg_type), payload=payload))


@settings(max_examples=300, deadline=None)
@given(dst=st.none() | st.text(max_size=30) | st.uuids().map(str), payload=json_values,
       msg_type=st.sampled_from([wire.TYPE_USER, wire.TYPE_SYSTEM, wire.TYPE_ADMIN]),
       trace=st.text(min_size=1, max_size=40))
def test_spliced_frames_equal_encoded_messages(dst: str | None, payload: Any, msg_type: str, trace: str) -> None:
    client = _Client(NodeConfig(name="WF.t"))
    got = client.build(dst, payload, msg_type=msg_type, trace_id=trace)
    assert got == reference(client, dst, payload, msg_type, trace)
    assert wire.decode_message(got[4:]).payload == payload


def test_other_messages_still_encode_through_structs() -> None:
    client = _Client(NodeConfig(name="WF.t"))
    frame = client.build("WF.x", {"a": 1}, msg="ECHO", msg_type=wire.TYPE_SYSTEM, trace_id="t", ttl=3)
    msg = wire.decode_message(frame[4:])
    assert (msg.meta.type, msg.meta.msg, msg.routing.ttl, msg.routing.trace_id) == ("system", "ECHO", 3, "t")
    frame = client.build("WF.x", 1, msg_type="query", trace_id="t")
    assert wire.decode_message(frame[4:]).meta.type == "query"


def test_a_spliced_frame_over_the_limit_is_refused_before_anything_is_written() -> None:
    client = _Client(NodeConfig(name="WF.t"))
    with pytest.raises(wire.FrameTooLargeError):
        client.build("WF.x", "x" * wire.MAX_FRAME)
    with pytest.raises(TypeError):
        client.build("WF.x", object())


@settings(max_examples=200, deadline=None)
@given(dst=st.none() | st.text(max_size=20), payload=json_values, trace=st.text(max_size=20),
       msg_type=st.sampled_from([wire.TYPE_USER, wire.TYPE_SYSTEM, wire.TYPE_ADMIN, "query", ""]),
       msg=st.none() | st.just("ECHO"), ttl=st.sampled_from([wire.DEFAULT_TTL, 1, 255]),
       with_meta=st.booleans())
def test_the_positional_frame_path_is_build(dst: str | None, payload: Any, trace: str, msg_type: str,
                                            msg: str | None, ttl: int, with_meta: bool) -> None:
    """send/request/reply_nowait call ``frame``; it must write what ``build`` writes (trace ids aside)."""
    client = _Client(NodeConfig(name="WF.t"))
    meta = wire.Meta(type="user", thread_id="t1") if with_meta else None
    got = wire.decode_message(client.frame(dst, payload, trace, msg_type, msg, meta, ttl)[4:])
    meta2 = wire.Meta(type="user", thread_id="t1") if with_meta else None
    want = wire.decode_message(client.build(dst, payload, msg_type=msg_type, msg=msg, trace_id=trace, ttl=ttl,
                                            meta=meta2)[4:])
    if not trace:  # both draw a fresh trace id
        got.routing.trace_id = want.routing.trace_id = ""
    assert got == want
