"""Faults and limits through the router socket: consumers that never read, replies that outgrow a frame."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hive_harness import RawPeer, RouterProc, eventually, fluxbee_argv

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import (
    FrameTooLargeError,
    NodeConfig,
    NodeReceiver,
    NodeSender,
    RequestTimeoutError,
    SdkError,
    connect,
)
from fluxbee.dataplane.wire import Message

Nodes = list[NodeSender]


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    started: Nodes = []
    yield started
    for sender in started:
        await sender.close()


async def _node(nodes: Nodes, run_dir: Path, name: str, **kw: Any) -> tuple[NodeSender, NodeReceiver]:
    sender, receiver = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=10, **kw))
    nodes.append(sender)
    return sender, receiver


async def _echo(nodes: Nodes, run_dir: Path, name: str) -> NodeSender:
    """A healthy node that answers every message at once, from the socket callback."""
    holder: list[NodeSender] = []

    def answer(msg: Message) -> None:
        holder[0].reply_nowait(msg, msg.payload)

    sender, _ = await _node(nodes, run_dir, name, on_message=answer)
    holder.append(sender)
    return sender


async def _hold(producer: NodeSender, dst: str) -> int:
    """Send to a consumer that never reads until the router stops reading from ``producer``."""
    payload = "x" * 4000
    for sent in range(100_000):
        try:
            await asyncio.wait_for(producer.send(dst, payload), 0.3)
        except TimeoutError:
            return sent
    raise AssertionError("the router never held the producer: the consumer's buffer never filled")


async def test_a_consumer_that_never_reads_is_cut_off_and_its_producer_reaches_others_at_once(
        router_factory: Callable[..., RouterProc], run_dir: Path, raw_peers: list[RawPeer], nodes: Nodes) -> None:
    router = router_factory(extra=("--slow-consumer-timeout", "1.5"))
    sink = RawPeer(router.socket_path)  # says HELLO, then never reads again
    raw_peers.append(sink)
    sink.hello("WF.sink")
    await _echo(nodes, run_dir, "WF.healthy")
    producer, _ = await _node(nodes, run_dir, "WF.producer")
    assert (await producer.request("WF.healthy", "before", timeout=2)).payload == "before"

    sent = await _hold(producer, "WF.sink")
    held_at = time.monotonic()
    answered_at = None
    while time.monotonic() - held_at < 10:
        try:
            reply = await producer.request("WF.healthy", "after", timeout=0.5)
        except RequestTimeoutError:
            continue
        assert reply.payload == "after"
        answered_at = time.monotonic()
        break
    assert answered_at is not None, f"the producer was still held 10 s after {sent} messages to a stuck consumer"
    # The cut-off comes 1.5 s after the consumer congests (checked once a second); then traffic flows at once.
    assert answered_at - held_at < 5.0, f"the healthy node answered only {answered_at - held_at:.1f} s later"

    status = router.status()
    assert "WF.sink@t" not in {n["name"] for n in status["nodes"]}
    counters = status["counters"]
    assert counters["rejected"].get(wire.SLOW_CONSUMER) == 1, counters
    assert counters["disconnects"].get(wire.SLOW_CONSUMER) == 1, counters
    assert counters["dropped_bytes"].get(wire.SLOW_CONSUMER, 0) > 0, counters
    assert 'fluxbee_router_dropped_bytes_total{reason="SLOW_CONSUMER"}' in router.metrics()
    await asyncio.to_thread(sink.closed_by_peer, 2)  # the socket is gone too (EOF or reset), not just unlisted


async def test_a_request_times_out_on_time_while_the_router_holds_the_caller(
        router_factory: Callable[..., RouterProc], run_dir: Path, raw_peers: list[RawPeer], nodes: Nodes) -> None:
    router = router_factory(extra=("--slow-consumer-timeout", "30"))  # the hold outlasts the test
    sink = RawPeer(router.socket_path)
    raw_peers.append(sink)
    sink.hello("WF.sink")
    await _echo(nodes, run_dir, "WF.healthy")
    producer, _ = await _node(nodes, run_dir, "WF.producer")  # connect_timeout 10 s: not what bounds the wait
    await _hold(producer, "WF.sink")
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError) as err:
        await asyncio.wait_for(producer.request("WF.healthy", "held", timeout=1.0), 5)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5, f"request(timeout=1.0) gave up after {elapsed:.2f} s"
    assert err.value.sent is False and "not sent within 1 s" in str(err.value)
    assert producer.connected, "a timed-out request must leave the connection alone"


def _status_request(peer: RawPeer, router_uuid: str, payload: Any) -> dict[str, Any]:
    peer.send({"routing": {"src": peer.uuid, "dst": router_uuid, "ttl": 1, "trace_id": wire.new_trace_id()},
               "meta": {"type": "system", "msg": wire.ROUTER_STATUS_GET}, "payload": payload})
    while True:
        msg = peer.recv()
        if msg["meta"].get("msg") == wire.ROUTER_STATUS_GET_RESPONSE:
            return dict(msg["payload"])


async def test_fluxbee_status_shows_all_900_nodes_and_status_pages_fit_in_a_frame(
        router_factory: Callable[..., RouterProc], run_dir: Path, raw_peers: list[RawPeer]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:  # 900 sockets here and 900 in the router (which inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    router = router_factory()
    names = [f"WF.fleet.worker.with.a.long.name.n{i:04d}" for i in range(900)]
    for name in names:
        peer = RawPeer(router.socket_path)
        raw_peers.append(peer)
        peer.hello(name)
    # One status reply with 900 nodes is ~150 KB, beyond the 128 KiB frame: it must come in pages.
    assert len(wire.encode(router.status())) > wire.MAX_FRAME

    asker = raw_peers[0]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = _status_request(asker, router.uuid, {"limit": 850} if cursor is None else {"cursor": cursor})
        pages += 1
        assert len(wire.encode(page)) <= wire.PAYLOAD_BUDGET
        assert page["node_count"] == 900 and page["router"]["name"] == "RT.gateway@t"
        if cursor is None:
            assert len(page["nodes"]) < 850, "the first page must be cut by size before the limit of 850"
        seen += [n["name"] for n in page["nodes"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages >= 2 and sorted(seen) == [f"{n}@t" for n in names]
    limited = _status_request(asker, router.uuid, {"limit": 5})
    assert len(limited["nodes"]) == 5 and limited["next_cursor"] == limited["nodes"][-1]["uuid"]
    refused = _status_request(asker, router.uuid, {"cursor": "not-a-cursor"})
    assert refused["error_code"] == "INVALID_REQUEST" and "cursor" in refused["error_detail"]

    out = await asyncio.to_thread(subprocess.run, fluxbee_argv("status", "--run-dir", str(run_dir)),
                                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("WF.fleet.")}
    assert listed == {f"{n}@t" for n in names}, f"{len(listed)} of 900 nodes shown"
    # The asker (and every raw node) is still connected: nobody was dropped over a big reply.
    disconnects = router.status()["counters"]["disconnects"]
    assert set(disconnects) <= {"withdraw", "eof"}, disconnects
    assert _status_request(asker, router.uuid, {"limit": 1})["node_count"] == 900


async def test_the_sdk_refuses_an_oversize_message_before_writing_and_stays_usable(
        router: RouterProc, run_dir: Path, nodes: Nodes) -> None:
    await _echo(nodes, run_dir, "WF.healthy")
    sender, _ = await _node(nodes, run_dir, "WF.big")
    frames_in = router.status()["counters"]["frames_in"]
    for attempt in (lambda: sender.send("WF.healthy", "x" * 200_000),
                    lambda: sender.request("WF.healthy", {"blob": "y" * 140_000}, timeout=1)):
        with pytest.raises(FrameTooLargeError) as err:
            await attempt()
        assert isinstance(err.value, SdkError) and isinstance(err.value, wire.FrameTooLargeError)
        assert err.value.size > wire.MAX_FRAME and err.value.max_size == wire.MAX_FRAME
        assert str(err.value.size) in str(err.value) and str(wire.MAX_FRAME) in str(err.value)
        assert "nothing was sent" in str(err.value)
    with pytest.raises(FrameTooLargeError):
        sender.send_nowait("WF.healthy", "z" * 200_000)
    assert router.status()["counters"]["frames_in"] == frames_in, "an oversize message reached the router"
    assert (await sender.request("WF.healthy", "still here", timeout=2)).payload == "still here"
    assert sender.connections == 1


async def test_a_node_whose_config_outgrows_a_frame_answers_config_get_with_an_error_and_stays(
        router: RouterProc, run_dir: Path, raw_peers: list[RawPeer], nodes: Nodes) -> None:
    big, _ = await _node(nodes, run_dir, "WF.bigconfig", config={"blob": "c" * 200_000})
    asker = RawPeer(router.socket_path)
    raw_peers.append(asker)
    asker.hello("WF.asker")
    asker.send({"routing": {"src": asker.uuid, "dst": "WF.bigconfig", "ttl": 4, "trace_id": wire.new_trace_id()},
                "meta": {"type": "system", "msg": wire.CONFIG_GET, "target": "node_config_control"},
                "payload": {}})
    reply = await asyncio.to_thread(asker.recv)
    assert reply["meta"]["msg"] == wire.CONFIG_RESPONSE
    assert reply["payload"]["ok"] is False and reply["payload"]["effective_config"] is None
    assert reply["payload"]["error"].startswith("RESPONSE_TOO_LARGE")
    await eventually(lambda: big.connected, 1, "the node to stay connected")
    assert big.connections == 1
    assert "WF.bigconfig@t" in {n["name"] for n in router.status()["nodes"]}


async def test_a_status_answer_that_cannot_fit_is_refused_to_the_asker_who_stays_connected(
        router_factory: Callable[..., RouterProc], raw_peers: list[RawPeer]) -> None:
    routes = [{"prefix": f"AI.tenant{i:04d}.department.team.assistant", "match_kind": "PREFIX", "action": "DROP"}
              for i in range(1500)]  # ~150 KB of routes: the part of the snapshot every page repeats
    router = router_factory(config={"routes": routes})
    asker = RawPeer(router.socket_path)
    raw_peers.append(asker)
    asker.hello("WF.asker")
    trace = wire.new_trace_id()
    asker.send({"routing": {"src": asker.uuid, "dst": router.uuid, "ttl": 1, "trace_id": trace},
                "meta": {"type": "system", "msg": wire.ROUTER_STATUS_GET}, "payload": None})
    reply = await asyncio.to_thread(asker.recv)
    assert reply["meta"]["msg"] == wire.UNREACHABLE and reply["routing"]["trace_id"] == trace
    assert reply["payload"]["reason"] == wire.FRAME_TOO_LARGE
    assert wire.ROUTER_STATUS_GET_RESPONSE in reply["payload"]["detail"]
    assert "WF.asker@t" in {n["name"] for n in router.status()["nodes"]}, "the asker was dropped"
    assert router.counter("unreachable", wire.FRAME_TOO_LARGE) == 1
