"""Failure handling: dead nodes, router restarts, bad frames, spoofing, slow consumers, shm readers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hive_harness import NodeProc, RawPeer, RouterProc, eventually, node_names, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, UnreachableError, connect

Client = Callable[..., Awaitable[NodeSender]]


@pytest.fixture
async def client(run_dir: Path) -> AsyncIterator[Client]:
    senders: list[NodeSender] = []

    async def make(name: str = "WF.client") -> NodeSender:
        sender, _ = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=10, backoff_max=0.5))
        senders.append(sender)
        return sender

    yield make
    for s in senders:
        await s.close()


async def test_a_killed_node_is_gone_from_the_node_table_within_100_ms(router: RouterProc,
                                                                       spawn: Callable[..., NodeProc],
                                                                       client: Client, run_dir: Path) -> None:
    node = spawn("echo", "WF.victim")
    sender = await client()
    assert (await sender.request("WF.victim", 1)).payload == 1
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    died = time.monotonic()
    await eventually(lambda: "WF.victim@t" not in node_names(run_dir), 5, "the node to leave the table")
    gone_after = time.monotonic() - died
    with pytest.raises(UnreachableError) as err:
        await sender.request("WF.victim", 2)
    answered_after = time.monotonic() - died
    assert err.value.reason == wire.NODE_NOT_FOUND
    assert gone_after < 0.1, f"node table still listed the dead node {gone_after * 1000:.0f} ms later"
    assert answered_after < 0.1, f"NODE_NOT_FOUND came {answered_after * 1000:.0f} ms after the kill"


async def test_after_a_router_restart_nodes_reconnect_with_their_uuids(router: RouterProc,
                                                                       spawn: Callable[..., NodeProc],
                                                                       client: Client, run_dir: Path) -> None:
    spawn("echo", "WF.echo", persistent=True)
    sender = await client()
    echo_uuid = node_names(run_dir)["WF.echo@t"][0]
    client_uuid = sender.uuid
    assert (await sender.request("WF.echo", "before")).payload == "before"
    socket_before = router.socket_path
    assert await asyncio.to_thread(router.stop) == 0
    assert not sender.connected or await eventually(lambda: not sender.connected, 5, "the client to notice")
    await asyncio.to_thread(router.start)
    assert router.socket_path == socket_before  # the router's UUID persists in the run dir
    await eventually(lambda: node_names(run_dir).get("WF.echo@t") == [echo_uuid], 15, "the echo node to come back")
    await sender.wait_connected(15)
    assert sender.uuid == client_uuid and sender.connections == 2
    assert (await sender.request("WF.echo", "after")).payload == "after"
    assert node_names(run_dir)["WF.client@t"] == [client_uuid]


async def test_oversize_and_garbage_frames_close_only_the_offending_connection(
        router: RouterProc, spawn: Callable[..., NodeProc], client: Client, raw_peers: list[RawPeer]) -> None:
    spawn("echo", "WF.echo")
    sender = await client()

    async def traffic() -> int:
        ok = 0
        for i in range(200):
            assert (await sender.request("WF.echo", i)).payload == i
            ok += 1
        return ok

    def attack() -> dict[str, list[dict[str, object]]]:
        seen: dict[str, list[dict[str, object]]] = {}
        big = RawPeer(router.socket_path)
        raw_peers.append(big)
        big.hello("WF.big")
        big.send_raw((200 * 1024).to_bytes(4, "big") + b"x" * 1024)
        seen["oversize"] = big.closed_by_peer()
        bad_json = RawPeer(router.socket_path)
        raw_peers.append(bad_json)
        bad_json.hello("WF.badjson")
        body = b"{not json"
        bad_json.send_raw(len(body).to_bytes(4, "big") + body)
        seen["malformed"] = bad_json.closed_by_peer()
        wrong_shape = RawPeer(router.socket_path)
        raw_peers.append(wrong_shape)
        wrong_shape.hello("WF.shape")
        wrong_shape.send({"routing": {"src": wrong_shape.uuid, "dst": 42, "ttl": 16, "trace_id": "t"},
                          "meta": {"type": "user"}})
        seen["wrong_type"] = wrong_shape.closed_by_peer()
        no_hello = RawPeer(router.socket_path)
        raw_peers.append(no_hello)
        no_hello.send_raw(b"\x00\x00\x00\x05hello")
        seen["no_hello"] = no_hello.closed_by_peer()
        return seen

    ok, seen = await asyncio.gather(traffic(), asyncio.to_thread(attack))
    assert ok == 200
    for case, reason in (("oversize", wire.FRAME_TOO_LARGE), ("malformed", wire.MALFORMED_FRAME),
                         ("wrong_type", wire.MALFORMED_FRAME), ("no_hello", wire.HELLO_REQUIRED)):
        frames = seen[case]
        assert frames and frames[-1]["meta"]["msg"] == wire.PROTOCOL_ERROR, (case, frames)
        assert frames[-1]["payload"]["reason"] == reason, (case, frames)
    assert router.counter("rejected", wire.FRAME_TOO_LARGE) == 1
    assert (await sender.request("WF.echo", "still fine")).payload == "still fine"


async def test_invalid_hellos_are_refused_with_a_reason(router: RouterProc, raw_peers: list[RawPeer]) -> None:
    def refused(payload: dict[str, object], src: str | None = None) -> dict[str, object]:
        peer = RawPeer(router.socket_path)
        raw_peers.append(peer)
        peer.send_raw(wire.system_frame(src or peer.uuid, None, wire.HELLO, payload, trace_id=str(uuid.uuid4()),
                                        ttl=1))
        frames = peer.closed_by_peer()
        assert frames[-1]["meta"]["msg"] == wire.PROTOCOL_ERROR
        return dict(frames[-1]["payload"])  # type: ignore[arg-type]

    other = str(uuid.uuid4())
    assert "differs" in str(refused({"uuid": other, "name": "WF.x"})["detail"])
    assert refused({"uuid": "not-a-uuid", "name": "WF.x"}, src="not-a-uuid")["reason"] == wire.INVALID_HELLO
    assert refused({"uuid": other, "name": "bad name"}, src=other)["reason"] == wire.INVALID_HELLO
    assert "hive" in str(refused({"uuid": other, "name": "WF.x@elsewhere"}, src=other)["detail"])
    assert "reserved" in str(refused({"uuid": other, "name": "RT.fake"}, src=other)["detail"])


async def test_a_spoofed_src_is_rejected_and_counted(router: RouterProc, spawn: Callable[..., NodeProc],
                                                     raw_peers: list[RawPeer], run_dir: Path) -> None:
    listener = spawn("listener", "WF.victim")
    victim_uuid = node_names(run_dir)["WF.victim@t"][0]
    peer = RawPeer(router.socket_path)
    raw_peers.append(peer)
    peer.hello("WF.mallory")
    peer.send({"routing": {"src": victim_uuid, "dst": "WF.victim", "ttl": 16, "trace_id": str(uuid.uuid4())},
               "meta": {"type": "user"}, "payload": "I am the victim"})
    answer = peer.recv()
    assert answer["meta"]["msg"] == wire.UNREACHABLE
    assert answer["payload"]["reason"] == wire.SRC_MISMATCH
    peer.send({"routing": {"src": peer.uuid, "dst": "WF.victim", "ttl": 16, "trace_id": str(uuid.uuid4()),
                           "src_l2_name": "SY.admin@t"},
               "meta": {"type": "user"}, "payload": "honest"})
    lines = wait_until(lambda: listener.lines(0.05), 10, "the honest message")
    assert [line["payload"] for line in lines] == ["honest"]
    assert lines[0]["routing"]["src_l2_name"] == "WF.mallory@t"  # stamped by the router, not trusted
    assert router.counter("rejected", wire.SRC_MISMATCH) == 1


async def test_a_slow_consumer_cannot_grow_router_memory_and_is_disconnected(
        router_factory: Callable[..., RouterProc], client: Client, raw_peers: list[RawPeer]) -> None:
    router = router_factory(extra=("--slow-consumer-timeout", "1.5", "--max-buffer", str(512 * 1024)))
    sleeper = RawPeer(router.socket_path)  # says HELLO, then never reads again
    raw_peers.append(sleeper)
    sleeper.hello("WF.sleeper")
    producer = await client("WF.producer")
    baseline_kb = router.rss_kb()
    payload = "x" * 4000
    sent = 0
    refused = 0

    async def flood() -> None:
        nonlocal sent, refused
        for _ in range(20_000):  # 80 MB offered to a consumer that reads nothing
            try:
                await asyncio.wait_for(producer.send("WF.sleeper", payload), 0.5)
                sent += 1
            except (TimeoutError, UnreachableError):
                refused += 1
                return  # held: the router stopped reading from the producer

    await flood()
    peak_kb = router.rss_kb()
    assert peak_kb - baseline_kb < 30 * 1024, f"router grew by {(peak_kb - baseline_kb) / 1024:.1f} MB"
    # Backpressure paused the producer rather than buffering without bound…
    assert sent < 5_000
    # …and the stuck consumer is cut off after the timeout, which frees the producer.
    await eventually(lambda: router.counter("rejected", wire.SLOW_CONSUMER) == 1, 10, "the slow consumer cut-off")
    frames = await asyncio.to_thread(sleeper.closed_by_peer, 10)
    assert frames, "the sleeper should at least get its backlog before the close"
    with pytest.raises(UnreachableError) as err:
        await producer.request("WF.sleeper", "gone?", timeout=5)
    assert err.value.reason == wire.NODE_NOT_FOUND


async def test_a_slow_consumer_that_keeps_reading_gets_every_message_in_order(router: RouterProc,
                                                                            run_dir: Path) -> None:
    """Backpressure holds the producer instead of dropping: 20,000 messages, all delivered, in order."""
    consumer, inbox = await connect(NodeConfig(name="WF.slow", run_dir=run_dir, inbound_queue=64))
    producer, _ = await connect(NodeConfig(name="WF.fast", run_dir=run_dir))
    total = 20_000
    pad = "x" * 1000
    received: list[int] = []

    async def consume() -> None:
        async for msg in inbox:
            received.append(msg.payload["n"])
            if len(received) % 100 == 0:
                await asyncio.sleep(0.002)  # a consumer slower than its producer
            if len(received) == total:
                return

    task = asyncio.create_task(consume())
    try:
        for n in range(total):
            await producer.send("WF.slow", {"n": n, "pad": pad})
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await producer.close()
        await consumer.close()
    assert received == list(range(total))
    counters = router.status()["counters"]
    assert counters["dropped"] == {} and counters["unreachable"] == {}, counters
    assert counters["producer_pauses"] > 0, "the producer was never held: the test did not load the router"
    assert counters["delivered"] >= total


READER = r"""
import sys, time, uuid
from pathlib import Path
from fluxbee.dataplane.sdk import read_node_table
run_dir = Path(sys.argv[1]); stop_at = time.monotonic() + float(sys.argv[2])
reads = records = torn = 0
while time.monotonic() < stop_at:
    for rec in read_node_table(run_dir):
        records += 1
        if rec.name.startswith("WF.churn.n"):
            if rec.name != f"WF.churn.n{uuid.UUID(rec.uuid).hex[:12]}@t":
                torn += 1
    reads += 1
print(reads, records, torn)
"""


async def test_a_second_process_never_reads_a_torn_node_record_while_nodes_come_and_go(
        router: RouterProc, run_dir: Path) -> None:
    reader = subprocess.Popen([sys.executable, "-c", READER, str(run_dir), "2.5"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def churn() -> int:
        cycles = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            peers = []
            for _ in range(10):
                peer = RawPeer(router.socket_path)
                node = uuid.UUID(peer.uuid)
                peer.hello(f"WF.churn.n{node.hex[:12]}")
                peers.append(peer)
            for peer in peers:
                peer.close()
            cycles += 1
        return cycles

    cycles = await asyncio.to_thread(churn)
    out, err = await asyncio.to_thread(reader.communicate, timeout=30)
    assert reader.returncode == 0, err
    reads, records, torn = (int(x) for x in out.split())
    assert cycles > 5 and reads > 100 and records > 0
    assert torn == 0


async def test_fluxbee_up_starts_the_default_hive_answers_send_and_stops_clean(run_dir: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen([sys.executable, "-m", "fluxbee", "up", "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines: list[str] = []

        def ready() -> bool:
            assert up.stdout is not None
            line = up.stdout.readline()
            lines.append(line)
            if not line and up.poll() is not None:
                raise AssertionError("fluxbee up exited: " + "".join(lines))
            return "is ready" in line

        await asyncio.to_thread(wait_until, ready, 30, "the hive to be ready")
        assert any("router socket" in line for line in lines)
        sent = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "fluxbee", "send", "WF.echo", "--payload", '{"ping": 1}', "--wait",
                             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert reply["payload"] == {"ping": 1} and reply["from"] == "WF.echo@local"
        def supervised_pids() -> list[int]:
            state = json.loads((run_dir / "state" / "supervisor.json").read_text())
            return [p["pid"] for p in state["processes"] if p["pid"] and p["state"] == "RUNNING"]

        # router, echo node, embedded PostgreSQL, SY.identity and SY.policy
        pids = await eventually(lambda: (found if len(found := supervised_pids()) == 5 else None), 30,
                                "the supervisor state to list the router, the echo node and the system services")
        router_uuid = str(uuid.UUID(next((run_dir / "routers").glob("*.sock")).stem))
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 30) == 0
        rest = up.stdout.read() if up.stdout else ""
        assert "hive stopped" in rest
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"process {pid} outlived fluxbee up"
        assert not list((run_dir / "routers").glob("*.sock"))
        hexid = uuid.UUID(router_uuid).hex
        assert not [p for p in os.listdir("/dev/shm") if hexid in p], "shared memory left behind"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stdout is not None:
            up.stdout.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
