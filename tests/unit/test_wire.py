"""The wire protocol, fed bytes: framing, envelopes, garbage."""

from __future__ import annotations

import json
import os
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxbee.dataplane import wire

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
names = st.from_regex(r"\A(AI|IO|WF|SY)(\.[A-Za-z0-9_-]{1,8}){1,4}\Z")
destinations = st.none() | st.just("broadcast") | st.uuids().map(str) | names


@st.composite
def messages(draw: st.DrawFn) -> wire.Message:
    return wire.Message(
        routing=wire.Routing(src=str(draw(st.uuids())), dst=draw(destinations), ttl=draw(st.integers(0, 255)),
                             trace_id=str(draw(st.uuids()))),
        meta=wire.Meta(type=draw(st.sampled_from(["user", "system", "admin"])),
                       msg=draw(st.none() | st.sampled_from(["HELLO", "ECHO", "CONFIG_CHANGED"])),
                       target=draw(st.none() | names), context=draw(st.none() | st.dictionaries(
                           st.text(max_size=5), json_values, max_size=3))),
        payload=draw(json_values),
    )


@given(messages())
def test_any_message_survives_a_frame_round_trip(message: wire.Message) -> None:
    frame = wire.encode_frame(message)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert wire.decode_message(frame[4:]) == message


@given(messages(), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frames_split_at_any_boundary_are_reassembled(message: wire.Message, cuts: list[int]) -> None:
    stream = wire.encode_frame(message) * 3
    reader = wire.FrameReader()
    frames: list[bytes] = []
    pos = 0
    for cut in cuts * 50:
        if pos >= len(stream):
            break
        frames += reader.feed(stream[pos : pos + cut])
        pos += cut
    frames += reader.feed(stream[pos:])
    assert len(frames) == 3
    assert all(wire.decode_message(f) == message for f in frames)
    assert reader.pending == 0


@given(messages())
def test_the_router_forwards_meta_and_payload_bytes_unchanged(message: wire.Message) -> None:
    body = wire.encode_frame(message)[4:]
    env = wire.decode_raw(body)
    env.routing.src_l2_name = "WF.x@h"
    again = wire.decode_message(wire.encode_frame(env)[4:])
    assert again.meta == message.meta and again.payload == message.payload
    assert again.routing.src_l2_name == "WF.x@h"


def test_unknown_meta_keys_travel_through_the_router_untouched() -> None:
    body = json.dumps({"routing": {"src": str(uuid.uuid4()), "dst": "WF.a", "ttl": 16, "trace_id": "t"},
                       "meta": {"type": "user", "x_custom": {"deep": [1, 2]}}, "payload": {"k": "v"}}).encode()
    out = json.loads(wire.encode_frame(wire.decode_raw(body))[4:])
    assert out["meta"] == {"type": "user", "x_custom": {"deep": [1, 2]}}


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_decoder_only_raises_protocol_errors(data: bytes) -> None:
    try:
        wire.decode_raw(data)
    except wire.ProtocolError as err:
        assert err.reason == wire.MALFORMED_FRAME


@given(st.binary(max_size=300))
def test_garbage_streams_yield_frames_or_a_too_large_error(data: bytes) -> None:
    reader = wire.FrameReader()
    try:
        frames = reader.feed(data)
    except wire.FrameTooLargeError as err:
        assert err.size > wire.MAX_FRAME
        return
    assert sum(len(f) + 4 for f in frames) + reader.pending == len(data)


def test_an_oversize_header_is_refused_before_the_body_is_buffered() -> None:
    reader = wire.FrameReader()
    with pytest.raises(wire.FrameTooLargeError) as err:
        reader.feed((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    assert err.value.size == wire.MAX_FRAME + 1
    assert reader.pending == 0


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    body = b"x" * wire.MAX_FRAME
    assert wire.FrameReader().feed(len(body).to_bytes(4, "big") + body) == [body]


def test_encoding_a_message_over_the_limit_fails_before_writing() -> None:
    message = wire.Message(routing=wire.Routing(src="s", dst="d", ttl=1, trace_id="t"), payload="x" * wire.MAX_FRAME)
    with pytest.raises(wire.FrameTooLargeError):
        wire.encode_frame(message)


@pytest.mark.parametrize("routing", [
    {"src": "a", "dst": 5, "ttl": 1, "trace_id": "t"},
    {"src": "a", "dst": None, "ttl": 256, "trace_id": "t"},
    {"src": "a", "dst": None, "ttl": -1, "trace_id": "t"},
    {"src": "a", "dst": None, "ttl": 1},
    {"dst": None, "ttl": 1, "trace_id": "t"},
])
def test_invalid_routing_headers_are_malformed(routing: dict[str, object]) -> None:
    with pytest.raises(wire.ProtocolError) as err:
        wire.decode_raw(json.dumps({"routing": routing, "meta": {"type": "user"}}).encode())
    assert err.value.reason == wire.MALFORMED_FRAME


def test_meta_type_is_always_encoded_and_optional_fields_are_omitted() -> None:
    frame = wire.encode_frame(wire.Message(routing=wire.Routing(src="s", dst=None, ttl=16, trace_id="t")))
    doc = json.loads(frame[4:])
    assert doc == {"routing": {"src": "s", "dst": None, "ttl": 16, "trace_id": "t"}, "meta": {"type": "user"},
                   "payload": None}


def test_trace_ids_are_unique_version_4_uuids() -> None:
    ids = {wire.new_trace_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(uuid.UUID(i).version == 4 for i in list(ids)[:100])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_draws_its_own_trace_id_prefix() -> None:
    parent = wire.new_trace_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next trace id and leave at once
        os.write(write_end, wire.new_trace_id().encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child[:24] != parent[:24]  # same counter position, different random prefix: no collision


def test_hello_and_announce_payloads_use_the_original_field_names() -> None:
    node = str(uuid.uuid4())
    frame = wire.system_frame(node, None, wire.HELLO, wire.HelloPayload(uuid=node, name="WF.a"), trace_id="t", ttl=1)
    doc = msgspec.json.decode(frame[4:])
    assert doc["meta"] == {"type": "system", "msg": "HELLO"}
    assert doc["payload"] == {"uuid": node, "name": "WF.a", "version": "1"}
    ann = msgspec.to_builtins(wire.AnnouncePayload(uuid=node, name="WF.a@h", status="registered", vpn_id=0,
                                                   router_name="RT.gateway@h"))
    assert set(ann) == {"uuid", "name", "status", "vpn_id", "router_name"}
