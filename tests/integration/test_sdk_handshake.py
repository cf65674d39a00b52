"""A node answers what the router sends right behind its ANNOUNCE.

The router puts a node into its node table when it writes the ANNOUNCE, so another node can address
it at once. On a loaded host the new node's process may not run before that message has arrived
too: both then come in one read. A node that answers from its ``on_message`` callback (``fluxbee
node echo``) must not take itself for disconnected there and drop the answer; that happened after
a router restart in CI, where a request to a reconnected echo node timed out.

The router here is a scripted Unix socket, so the two frames surely arrive in one read.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, recv_frame, stop_process

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect
from fluxbee.dataplane.wire import Message

ROUTER = str(uuid.uuid4())
CLIENT = str(uuid.uuid4())


@pytest.fixture
def router_socket() -> Iterator[tuple[Path, socket.socket]]:
    """A run dir whose one router socket is ours (short path: Unix socket paths hold 107 bytes)."""
    run_dir = Path(tempfile.mkdtemp(prefix="fbh", dir="/tmp"))
    (run_dir / "routers").mkdir()
    path = run_dir / "routers" / f"{ROUTER}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(15)
    yield run_dir, server
    server.close()
    shutil.rmtree(run_dir, ignore_errors=True)


def announce_and_ask(conn: socket.socket, hello: dict[str, Any], payload: str) -> str:
    """ANNOUNCE the node and, in the same write, a request from CLIENT; the trace id of the request."""
    routing = hello["routing"]
    assert hello["meta"]["msg"] == wire.HELLO
    node, name = routing["src"], hello["payload"]["name"]
    trace = str(uuid.uuid4())
    announce = wire.system_frame(ROUTER, node, wire.ANNOUNCE,
                                 wire.AnnouncePayload(uuid=node, name=f"{name}@t", status="registered",
                                                      vpn_id=0, router_name="RT.test@t"),
                                 trace_id=str(routing["trace_id"]), ttl=1)
    request = wire.encode_frame(wire.Message(
        routing=wire.Routing(src=CLIENT, dst=node, ttl=8, trace_id=trace),
        meta=wire.Meta(type=wire.TYPE_USER), payload=payload))
    conn.sendall(announce + request)
    return trace


def expect_answer(conn: socket.socket, trace: str, payload: str) -> None:
    conn.settimeout(10)
    while True:
        frame = recv_frame(conn)
        routing = frame["routing"]
        if routing["trace_id"] == trace:
            assert routing["dst"] == CLIENT
            assert frame["payload"] == payload
            return


def test_the_echo_node_answers_requests_that_came_with_its_announce(
        router_socket: tuple[Path, socket.socket]) -> None:
    run_dir, server = router_socket
    log = run_dir / "echo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(fluxbee_argv("node", "echo", "--name", "WF.echo", "--run-dir", str(run_dir)),
                                stdout=out, stderr=out)
    try:
        # Its first connection, then a reconnection (the router restarted): in both the request comes
        # in the same read as the ANNOUNCE.
        for attempt in ("first", "after a reconnection"):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(15)
                trace = announce_and_ask(conn, recv_frame(conn), attempt)
                expect_answer(conn, trace, attempt)
    finally:
        stop_process(proc, "echo node", strict=False)
    text = log.read_text()
    assert "callback failed" not in text and "reply to" not in text, text


async def test_an_on_message_node_answers_a_request_that_came_with_its_announce(
        router_socket: tuple[Path, socket.socket]) -> None:
    run_dir, server = router_socket
    holder: list[NodeSender] = []

    def answer(msg: Message) -> None:
        holder[0].reply_nowait(msg, msg.payload)

    async def scripted_router() -> None:
        conn, _ = await asyncio.to_thread(server.accept)
        with conn:
            conn.settimeout(15)
            hello = await asyncio.to_thread(recv_frame, conn)
            trace = announce_and_ask(conn, hello, "first")
            await asyncio.to_thread(expect_answer, conn, trace, "first")

    router = asyncio.ensure_future(scripted_router())
    sender, _ = await connect(NodeConfig(name="WF.cb", run_dir=run_dir, on_message=answer,
                                         connect_timeout=10))
    holder.append(sender)
    try:
        await asyncio.wait_for(router, 15)
    finally:
        await sender.close()
