"""Child processes of ``fluxbee bench`` (``python -m fluxbee.bench.workers ROLE …``).

Each peer runs in its own process, as a user would deploy it; the bench
process is the client of every measurement.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import msgspec
import uvloop

HEADER = struct.Struct(">I")


class FloorServer(asyncio.Protocol):
    """Raw framed echo: the floor any router must be compared with."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sink_count = 0
        self.sink_target = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        out = bytearray()
        end = len(buf)
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            stop = pos + 4 + size
            if stop > end:
                break
            body = bytes(buf[pos + 4 : stop])
            pos = stop
            if body[:1] == b"S":  # one-way sink mode: "S<count>" announces, then bodies are counted
                self.sink_target = int(body[1:])
                self.sink_count = 0
            elif self.sink_target:
                self.sink_count += 1
                if self.sink_count == self.sink_target:
                    self.sink_target = 0
                    out += HEADER.pack(4) + b"DONE"
            else:
                out += HEADER.pack(size) + body
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(bytes(out))


async def floor_server(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(FloorServer, path=path)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


class _RelayUp(asyncio.Protocol):
    """The relay's connection to the echo server: replies go back to the client untouched."""

    def __init__(self, down: RelayDown) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        if self.down.transport is not None:
            self.down.transport.write(data)

    def pause_writing(self) -> None:  # the server is not reading: stop reading the client
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down.transport is not None:
            self.down.transport.close()


class RelayDown(asyncio.Protocol):
    """A raw relay: bytes from a client go to the echo server and back, never parsed.

    Client → relay → server → relay → client is four socket hops between
    three processes, like a routed round trip, with nothing done per message
    but the copies: the cheapest relay asyncio+uvloop can be.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # until the server connection is up
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        up, _ = await asyncio.get_running_loop().create_unix_connection(lambda: _RelayUp(self), self.target)
        self.up = up
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.up is not None:
            self.up.write(data)

    def pause_writing(self) -> None:  # the client is not reading: stop reading the server
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def relay(path: str, target: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: RelayDown(target), path=path)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def sink_node(run_dir: str, name: str) -> None:
    """Counts messages; when the count announced in a ``{"expect": N}`` message is reached, replies DONE.

    Messages arrive through the SDK's ``on_message`` callback, as the NATS sink gets them through
    its subscription callback.
    """
    from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect
    from fluxbee.dataplane.wire import Message

    state = {"expect": 0, "count": 0}
    holder: list[NodeSender] = []

    def on_message(msg: Message) -> None:
        payload = msg.payload
        if isinstance(payload, dict) and "expect" in payload:
            state["expect"] = int(payload["expect"])
            state["count"] = 0
            holder[0].reply_nowait(msg, {"ok": True})
            return
        state["count"] += 1
        if state["count"] == state["expect"]:
            holder[0].send_nowait(msg.routing.src, {"done": state["count"]})
            state["expect"] = 0

    sender, _ = await connect(NodeConfig(name=name, run_dir=Path(run_dir), on_message=on_message))
    holder.append(sender)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def nats_responder(url: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    state = {"expect": 0, "count": 0}

    async def sink(msg: Any) -> None:
        if msg.reply:  # control message: expected count
            state["expect"] = int(msg.data)
            state["count"] = 0
            await msg.respond(b"ok")
            return
        state["count"] += 1
        if state["count"] == state["expect"]:
            await nc.publish("bench.done", b"done")

    await nc.subscribe("bench.echo", cb=echo)
    await nc.subscribe("bench.sink", cb=sink, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.flush()
    print("READY", flush=True)
    await asyncio.Event().wait()


def idle_nodes(run_dir: str, count: int) -> None:
    """Open ``count`` connections that say HELLO and then stay idle (blocking sockets)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    from fluxbee.dataplane import wire
    from fluxbee.dataplane.sdk import find_router_socket

    path = str(find_router_socket(Path(run_dir), "WF.idle"))
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        node = str(uuid.uuid4())
        s.sendall(wire.system_frame(node, None, wire.HELLO,
                                    wire.HelloPayload(uuid=node, name=f"WF.idle.n{i}"),
                                    trace_id=wire.new_trace_id(), ttl=1))
        socks.append(s)
    for s in socks:  # wait for every ANNOUNCE
        (size,) = HEADER.unpack(_recv_exact(s, 4))
        body = msgspec.json.decode(_recv_exact(s, size))
        if body["meta"].get("msg") != wire.ANNOUNCE:
            raise SystemExit(f"expected ANNOUNCE, got {body['meta']}")
    print("READY", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    for s in socks:
        s.close()


NULL_POLICY = """package router

default target := "WF.echo"

target := "WF.sink" if input.routing.src_l2_name == "WF.bench.burst@bench"
"""
"""Where the bench's ``dst: null`` messages go: the echo node, or the sink for the burst sender's
(the same plain message as the explicit bursts: the client's cost is the same for both)."""


def policy_region(run_dir: str, hive_id: str) -> None:
    """Publish :data:`NULL_POLICY` in the hive's policy region, as its policy service would; hold the
    region until SIGTERM (the bench's stop, or its death) and then remove it."""
    import signal

    from fluxbee.dataplane.policy import compile_policy
    from fluxbee.dataplane.shm.policy import PolicyRegion, artefact_digest

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    region = PolicyRegion.create(hive_id, owner_uuid=str(uuid.uuid4()), run_dir=run_dir)
    try:
        artefact = compile_policy(NULL_POLICY)
        blob = artefact.to_bytes()
        region.publish(blob, 1, artefact_digest(blob), engine=artefact.engine, entrypoints=artefact.entrypoints)
        print("READY", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        region.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit("router closed an idle connection")
        out += chunk
    return bytes(out)


def main(argv: list[str]) -> None:
    from fluxbee.dataplane import alloc

    alloc.tune()  # every worker, whichever transport it serves (see fluxbee.bench.run)
    role = argv[0]
    if role == "idle-nodes":
        idle_nodes(argv[1], int(argv[2]))
        return
    if role == "policy-region":
        policy_region(argv[1], argv[2])
        return
    coro: Any
    if role == "floor-server":
        coro = floor_server(argv[1])
    elif role == "relay":
        coro = relay(argv[1], argv[2])
    elif role == "sink-node":
        coro = sink_node(argv[1], argv[2])
    elif role == "nats-responder":
        coro = nats_responder(argv[1])
    else:
        raise SystemExit(f"unknown role {role!r}")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(coro)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
