"""How the SDK writes frames and tracks requests (a recording transport, no router)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, NotConnectedError, RequestTimeoutError, UnreachableError
from fluxbee.dataplane.sdk import framing as sdk_framing
from fluxbee.dataplane.sdk import writes as sdk_writes
from fluxbee.dataplane.sdk.node import _Client, _Protocol


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def frames(self) -> list[wire.Message]:
        reader = wire.FrameReader()
        return [wire.decode_message(body) for chunk in self.writes for body in reader.feed(chunk)]


class Clock:
    """Stands in for time.perf_counter_ns in the SDK: writes happen when the test says."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(sdk_writes, "_perf_ns", c)
    yield c


def attach(loop: asyncio.AbstractEventLoop) -> tuple[_Client, _Protocol, RecordingTransport]:
    client = _Client(NodeConfig(name="WF.t"))
    client.loop = client.inbox.loop = loop
    proto = _Protocol(client)
    transport = RecordingTransport()
    proto.transport = transport  # type: ignore[assignment]
    client.proto = proto
    client._mark_up()
    return client, proto, transport


def reply_to(frame: wire.Message, payload: object, *, msg_type: str = wire.TYPE_USER, msg: str | None = None) -> bytes:
    return wire.encode_frame(wire.Message(
        routing=wire.Routing(src="00000000-0000-4000-8000-000000000001", dst=frame.routing.src, ttl=16,
                             trace_id=frame.routing.trace_id),
        meta=wire.Meta(type=msg_type, msg=msg), payload=payload))


async def test_a_lone_frame_is_written_at_once_and_schedules_no_flush(clock: Clock) -> None:
    client, _, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    for i in range(3):
        clock.now += 50_000  # 50 µs apart: no burst
        await sender.send("WF.x", i)
        assert len(transport.writes) == i + 1  # written before send returned
        assert client._flush_handle is None  # and no extra loop iteration is owed
    assert [m.payload for m in transport.frames()] == [0, 1, 2]


async def test_a_burst_is_coalesced_into_one_write_per_loop_iteration_in_order(clock: Clock) -> None:
    client, _, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    for i in range(300):  # ~50 KB: under the 64 KiB chunk
        clock.now += 1_000  # 1 µs apart: a burst
        await sender.send("WF.x", i)
    assert len(transport.writes) == 2  # the first two went at once; the rest wait for the iteration's end
    assert client._flush_handle is not None
    await asyncio.sleep(0)
    assert len(transport.writes) == 3 and client._flush_handle is None
    assert [m.payload for m in transport.frames()] == list(range(300))


async def test_a_long_burst_is_written_in_chunks_without_waiting_for_the_iteration(clock: Clock) -> None:
    client, _, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    payload = "p" * 1_000
    count = 3 * sdk_writes._CHUNK // 1_000
    for i in range(count):
        clock.now += 1_000
        await sender.send("WF.x", [i, payload])
    assert 2 + 2 <= len(transport.writes) <= 2 + 3  # two at once, then full chunks before the iteration ends
    assert all(len(w) <= sdk_writes._CHUNK + 2_000 for w in transport.writes)
    await asyncio.sleep(0)
    assert [m.payload[0] for m in transport.frames()] == list(range(count))


async def test_a_request_is_answered_by_the_frame_with_its_trace_id(clock: Clock) -> None:
    client, proto, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    task = asyncio.create_task(sender.request("WF.x", "ping"))
    await asyncio.sleep(0)
    (sent,) = transport.frames()
    assert client._flush_handle is None and sent.routing.trace_id in client.pending
    other = reply_to(sent, "not mine")
    other = other.replace(sent.routing.trace_id.encode(), b"00000000-0000-4000-8000-00000000abcd")
    proto.data_received(other + reply_to(sent, "pong"))
    reply = await task
    assert reply.payload == "pong" and not client.pending
    assert client.inbox.items[-1].payload == "not mine"  # no request waits for it: an ordinary message


async def test_unreachable_answers_raise_unless_asked_not_to(clock: Clock) -> None:
    client, proto, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    for raise_unreachable in (True, False):
        task = asyncio.create_task(sender.request("WF.nobody", "x", raise_unreachable=raise_unreachable))
        await asyncio.sleep(0)
        sent = transport.frames()[-1]
        proto.data_received(reply_to(sent, {"reason": "NODE_NOT_FOUND", "original_dst": "WF.nobody"},
                                     msg_type=wire.TYPE_SYSTEM, msg=wire.UNREACHABLE))
        if raise_unreachable:
            with pytest.raises(UnreachableError) as err:
                await task
            assert err.value.reason == "NODE_NOT_FOUND"
        else:
            assert (await task).meta.msg == wire.UNREACHABLE
    assert not client.pending


async def test_a_request_times_out_and_the_sweeper_stops_when_nothing_is_pending(clock: Clock) -> None:
    client, proto, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    with pytest.raises(RequestTimeoutError):
        await sender.request("WF.x", "lost", timeout=0.05)
    assert not client.pending
    await asyncio.sleep(0.05)
    assert client._sweeper is None  # an idle node keeps no timer
    # a reply that comes after the deadline is delivered like any message
    proto.data_received(reply_to(transport.frames()[-1], "late"))
    assert client.inbox.items[-1].payload == "late"


async def test_a_cancelled_request_leaves_nothing_pending(clock: Clock) -> None:
    client, _, _ = attach(asyncio.get_running_loop())
    task = asyncio.create_task(NodeSender(client).request("WF.x", "x"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client.pending


async def test_send_waits_while_the_router_is_not_reading(clock: Clock) -> None:
    client, proto, transport = attach(asyncio.get_running_loop())
    sender = NodeSender(client)
    proto.pause_writing()
    task = asyncio.create_task(sender.send("WF.x", "held"))
    await asyncio.sleep(0.01)
    assert not task.done() and not transport.writes
    sender.reply_nowait(wire.Message(routing=wire.Routing(src="a" * 8, dst=None, ttl=1, trace_id="t")), "nowait")
    assert len(transport.writes) == 1  # the nowait paths queue even while paused
    proto.resume_writing()
    await task
    assert [m.payload for m in transport.frames()] == ["nowait", "held"]


async def test_a_stale_connection_cannot_change_the_current_ones_flags(clock: Clock) -> None:
    loop = asyncio.get_running_loop()
    client, _, _ = attach(loop)
    stale = _Protocol(client)
    stale.pause_writing()
    assert client.ready and client.writable.is_set()
    stale.connection_lost(None)
    assert client.up and client.connected.is_set()


async def test_nowait_sends_refuse_when_the_connection_is_down(clock: Clock) -> None:
    client, proto, _ = attach(asyncio.get_running_loop())
    client.closed = True  # no reconnection attempt
    proto.connection_lost(None)
    sender = NodeSender(client)
    assert not client.up and not client.ready
    with pytest.raises(NotConnectedError):
        sender.send_nowait("WF.x", 1)
    with pytest.raises(NotConnectedError):
        sender.reply_nowait(wire.Message(routing=wire.Routing(src="a", dst=None, ttl=1, trace_id="t")), 1)


# --- the C extension's sending side against the pure-Python one ------------------
needs_c = pytest.mark.skipif(sdk_framing._frame is None, reason="the C extension is not built")
ODD_TEXT = ["", "WF.sink", "WF.sink@*", "a\"b", "back\\slash", "tab\there", "\x00", "\x1f", "\x7f", "ü", "🐝",
            "x" * 300]


@needs_c
@pytest.mark.parametrize("dst", [None, *ODD_TEXT])
@pytest.mark.parametrize("trace", ODD_TEXT)
def test_the_c_frame_is_byte_for_byte_the_joined_one(monkeypatch: pytest.MonkeyPatch, dst: str | None,
                                                      trace: str) -> None:
    client = _Client(NodeConfig(name="WF.t"))
    payload = {"text": "hi", "n": [1, 2.5, None]}
    fast = client.splice(dst, payload, trace)
    monkeypatch.setattr(sdk_framing, "_frame", None)
    assert fast == client.splice(dst, payload, trace)
    msg = wire.decode_message(fast[wire.HEADER_SIZE:])
    assert (msg.routing.dst, msg.routing.trace_id, msg.payload) == (dst, trace, payload)


@needs_c
def test_the_c_frame_leaves_escaping_to_msgspec_and_the_size_limit_to_the_sdk() -> None:
    frame = sdk_framing._frame
    assert frame is not None
    head, tail = b'{"routing":{"src":"s","dst":', sdk_framing._TTL_TRACE
    assert frame(head, "a\"b", tail, "t", b"}", b"1") is None
    assert frame(head, "d", tail, "\n", b"}", b"1") is None
    out = frame(head, "d", tail, "t", b'},"meta":{"type":"user"},"payload":', b"1")
    body = b'{"routing":{"src":"s","dst":"d","ttl":16,"trace_id":"t"},"meta":{"type":"user"},"payload":1}'
    assert out == len(body).to_bytes(4, "big") + body
    with pytest.raises(TypeError):
        frame(head, "d", tail, "t", b"}", "1")
    with pytest.raises(TypeError):
        frame(head, "d", tail, "t")
    client = _Client(NodeConfig(name="WF.t"))
    client.splice("d", "x" * (wire.MAX_FRAME - 200), "t")
    with pytest.raises(wire.FrameTooLargeError):
        client.splice("d", "x" * wire.MAX_FRAME, "t")


@pytest.mark.skipif(wire.new_trace_id is wire.new_trace_id_py, reason="the C extension is not built")
def test_c_trace_ids_are_the_python_ones() -> None:
    from fluxbee.dataplane import _native

    c = _native.speedups
    assert c is not None
    try:
        c.trace_seed("01234567-89ab-4cde-8f01-")
        assert [c.trace_id() for _ in range(3)] == [f"01234567-89ab-4cde-8f01-{n:012x}" for n in range(3)]
        with pytest.raises(ValueError):
            c.trace_seed("ü")
        with pytest.raises(ValueError):
            c.trace_seed("x" * 65)
        with pytest.raises(TypeError):
            c.trace_seed(b"x")
    finally:
        wire._reseed_trace_ids()
    assert wire.new_trace_id()[:24] == wire._trace_prefix
