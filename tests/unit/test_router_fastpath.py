"""The router's fast path and its general path make the same decisions.

Two routers with the same UUID and the same nodes get the same frames: one
through ``Conn.data_received`` (a whole read at once: ``route_frames`` and the
C or Python ``fastpath.scan``), the other frame by frame through
``Router.on_frame`` (the general path).  What each node receives, the
counters and which connections were closed must be equal; and frames the fast
path is meant for must not have gone through the general path at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxbee.dataplane import _native, fastpath, wire
from fluxbee.dataplane.router import trust
from fluxbee.dataplane.router.server import Conn, Router, RouterSettings
from fluxbee.models import RouteAction, RouteSpec, VpnSpec

HIVE = "prod"
SYSTEM_TOKEN = "0" * 64
ROUTER_UUID = "5f0e1d2c-3b4a-4968-8776-655443322110"
NODES = {  # name -> uuid; WF.sink twice (load balancing)
    "WF.client": "00000000-0000-4000-8000-000000000001",
    "WF.sink": "00000000-0000-4000-8000-000000000002",
    "WF.sink#2": "00000000-0000-4000-8000-000000000003",
    "WF.other": "00000000-0000-4000-8000-000000000004",
    "AI.vpn1": "00000000-0000-4000-8000-000000000005",
}
CLIENT = NODES["WF.client"]


@pytest.fixture(autouse=True, params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the C extension (when built) and with the pure-Python fallback."""
    if request.param == "c":
        if _native.speedups is None:
            pytest.skip(f"the C extension is not in use: {_native.IMPLEMENTATION}")
        monkeypatch.setattr(fastpath, "scan", _native.speedups.scan)
        monkeypatch.setattr(fastpath, "extend", _native.speedups.extend)
        monkeypatch.setattr(wire, "_split", _native.speedups.split)
    else:
        monkeypatch.setattr(fastpath, "scan", fastpath.scan_py)
        monkeypatch.setattr(fastpath, "extend", fastpath.extend_py)
        monkeypatch.setattr(wire, "_split", None)
    return str(request.param)


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.buffered = 0
        self.closed = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.data += data

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, *_: Any, **__: Any) -> None:
        return None


@dataclass
class Hive:
    router: Router
    conns: dict[str, Conn] = field(default_factory=dict)
    transports: dict[str, FakeTransport] = field(default_factory=dict)
    general_calls: int = 0

    def join(self, label: str, node: str) -> None:
        """Connect a node and say its HELLO (``label`` is its name, ``#suffix`` for a second one)."""
        conn = Conn(self.router)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(wire.system_frame(node, None, wire.HELLO,
                                             wire.hello_payload(node, label.split("#")[0], credential=SYSTEM_TOKEN),
                                             trace_id=f"hello-{label}", ttl=1))
        assert conn.uuid == node
        transport.data.clear()
        self.conns[label], self.transports[label] = conn, transport

    def received(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, transport in self.transports.items():
            msgs = []
            for body in wire.FrameReader().feed(bytes(transport.data)):
                msg = msgspec.json.decode(body)
                if msg["meta"].get("msg") == wire.PROTOCOL_ERROR:
                    msg["routing"]["trace_id"] = "<random>"
                if msg["meta"].get("msg") == wire.NODE_STATUS_GET_RESPONSE:  # clocks and memory differ
                    msg["payload"] = sorted(msg["payload"])
                msgs.append(msg)
            out[name] = msgs
        return out


def build_hive(tmp: Path, *, routes: list[RouteSpec] | None = None, vpns: list[VpnSpec] | None = None,
               **settings: Any) -> Hive:
    router = Router(RouterSettings(hive_id=HIVE, run_dir=tmp, **settings), router_uuid=ROUTER_UUID)
    # SY.admin is claimed (README: Trust model): its HELLO proves it with the token this claim names.
    router.claims = trust.Claims({"SY.admin": trust.Claim(credential_sha256=frozenset({
        trust.token_sha256(SYSTEM_TOKEN)}))})
    hive = Hive(router)
    if routes or vpns:
        router.apply_config(routes or [], vpns or [], source="test")
    for label, node in NODES.items():
        hive.join(label, node)
    general = router.on_frame

    def counting(conn: Conn, body: bytes) -> None:
        hive.general_calls += 1
        general(conn, body)

    router.on_frame = counting  # type: ignore[method-assign]
    return hive


def body(dst: str | None, payload: Any = "x" * 50, *, src: str = CLIENT, ttl: int = 16,
         meta: Any = None, trace: str | None = None) -> bytes:
    return msgspec.json.encode({
        "routing": {"src": src, "dst": dst, "ttl": ttl, "trace_id": trace or str(uuid.uuid4())},
        "meta": meta if meta is not None else {"type": "user"},
        "payload": payload,
    })


def frame(b: bytes) -> bytes:
    return wire.HEADER.pack(len(b)) + b


@dataclass
class Case:
    frames: list[bytes]
    fast: bool  # every frame is for the fast path
    setup: Callable[[Hive], None] = lambda hive: None
    config: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "by uuid": Case([body(NODES["WF.other"])], fast=True),
    "by name": Case([body("WF.other"), body("WF.other@prod")], fast=True),
    "load balanced": Case([body("WF.sink", i) for i in range(6)], fast=True),
    "name@*": Case([body("WF.other@*")], fast=True),
    "to itself": Case([body(CLIENT)], fast=True),
    "payload kinds": Case([body("WF.other", p) for p in ({"a": [1, 2.5, None]}, [], True, None, -3, "ü🐝")],
                          fast=True),
    "user meta with extras": Case([body("WF.other", meta={"type": "user", "thread_id": "t", "x": {"y": 1}})],
                                  fast=True),
    "unknown name": Case([body("WF.nobody")], fast=False),
    "unknown uuid": Case([body(str(uuid.uuid4()))], fast=False),
    "uuid in capitals": Case([body(NODES["WF.other"].upper())], fast=False),
    "uuid without dashes": Case([body(uuid.UUID(NODES["WF.other"]).hex)], fast=False),
    "ttl 0": Case([body("WF.other", ttl=0)], fast=False),
    "spoofed src": Case([body("WF.other", src=NODES["WF.other"])], fast=False),
    "broadcast": Case([body("broadcast", trace=str(uuid.uuid4()))], fast=False),
    "dst null": Case([body(None)], fast=False),
    "system to the router": Case([body(ROUTER_UUID, None, meta={"type": "system", "msg": "NODE_STATUS_GET"})],
                                 fast=False),
    "system to a node": Case([body("WF.other", None, meta={"type": "system", "msg": "NODE_STATUS_GET"})],
                             fast=False),
    "malformed json": Case([b'{"routing":', body("WF.other")], fast=False),
    "meta of the wrong type": Case([body("WF.other", meta={"type": 5}), body("WF.other")], fast=False),
    "meta not an object": Case([body("WF.other", meta=[1]), body("WF.other")], fast=False),
    "vpn blocked": Case([body("AI.vpn1")], fast=False,
                        config={"vpns": [VpnSpec(pattern="AI.vpn1", match_kind="EXACT", vpn_id=1)]}),
    "drop route": Case([body("WF.other")], fast=False,
                       config={"routes": [RouteSpec(prefix="WF.other", action=RouteAction.DROP)]}),
    "route to another hive": Case([body("WF.other")], fast=False,
                                  config={"routes": [RouteSpec(prefix="WF.other", next_hop_hive="east")]}),
    "name in another hive": Case([body("WF.other@east")], fast=False),
    "congested destination": Case([body("WF.other")], fast=False,
                                  setup=lambda hive: setattr(hive.transports["WF.other"], "buffered", 10**7)),
    "whitespace the C path leaves alone": Case(
        [body("WF.other").replace(b'{"routing":', b'{ "routing":')], fast=False),
}
CASES["everything in one read"] = Case([f for case in CASES.values() if not case.config and case.setup is
                                        CASES["by uuid"].setup for f in case.frames], fast=False)


def general_feed(hive: Hive, frames: list[bytes]) -> None:
    """The frames through the general path, one by one, as ``Conn.process`` batches them."""
    router, conn = hive.router, hive.conns["WF.client"]
    router.batching = True
    for b in frames:
        if conn.closing:
            break
        router.on_frame(conn, b)
    router.batching = False
    router.flush()


@pytest.mark.parametrize("name", list(CASES))
async def test_fast_and_general_paths_agree(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    fast = build_hive(tmp_path / "fast", **case.config)
    general = build_hive(tmp_path / "general", **case.config)
    for hive in (fast, general):
        case.setup(hive)

    fast.conns["WF.client"].data_received(b"".join(frame(b) for b in case.frames))
    general_feed(general, case.frames)

    assert fast.received() == general.received()
    assert fast.router.counters.snapshot() == general.router.counters.snapshot()
    assert {k: c.closing for k, c in fast.conns.items()} == {k: c.closing for k, c in general.conns.items()}
    if case.fast:
        assert fast.general_calls == 0, "a frame meant for the fast path took the general one"
        assert sum(len(v) for v in fast.received().values()) == len(case.frames)


async def test_a_thousand_mixed_reads_agree(tmp_path: Path) -> None:
    """Frames of every case, shuffled and cut at random points, in many reads."""
    import random

    rng = random.Random(7)
    plain = [case for case in CASES.values() if not case.config and case.setup is CASES["by uuid"].setup]
    closing = (b'"type":5', b'"meta":[1]')  # these close the connection: not in a long stream
    pool = [f for case in plain for f in case.frames
            if f != b'{"routing":' and not any(c in f for c in closing)]
    assert len(pool) > 20
    stream_frames = [rng.choice(pool) for _ in range(1000)]
    fast = build_hive(tmp_path / "fast")
    general = build_hive(tmp_path / "general")
    stream = b"".join(frame(b) for b in stream_frames)
    pos = 0
    while pos < len(stream):
        cut = rng.randint(1, 3000)
        fast.conns["WF.client"].data_received(stream[pos : pos + cut])
        pos += cut
    general_feed(general, stream_frames)
    assert fast.received() == general.received()
    assert fast.router.counters.snapshot() == general.router.counters.snapshot()
    await asyncio.sleep(0)


async def test_memoised_destinations_follow_nodes_and_config(tmp_path: Path) -> None:
    """A name routed once, then its node leaves, a new one comes, a DROP route appears, a VPN moves it."""
    fast = build_hive(tmp_path / "fast")
    general = build_hive(tmp_path / "general")

    def both(step: Callable[[Hive], None]) -> None:
        for hive in (fast, general):
            step(hive)

    def send(*frames: bytes) -> None:
        fast.conns["WF.client"].data_received(b"".join(frame(b) for b in frames))
        general_feed(general, list(frames))

    send(body("WF.other"), body("WF.other"))
    both(lambda hive: hive.conns["WF.other"].connection_lost(None))
    send(body("WF.other"))

    both(lambda hive: hive.join("WF.other#new", "00000000-0000-4000-8000-0000000000aa"))
    send(body("WF.other"))
    both(lambda hive: hive.router.apply_config([RouteSpec(prefix="WF.other", action=RouteAction.DROP)], [],
                                               source="test"))
    send(body("WF.other"))
    both(lambda hive: hive.router.apply_config([], [VpnSpec(pattern="WF.other", match_kind="EXACT", vpn_id=3)],
                                               source="test"))
    send(body("WF.other"))
    both(lambda hive: hive.router.apply_config([], [], source="test"))
    send(body("WF.other"))

    got = fast.received()
    assert got == general.received()
    assert fast.router.counters.snapshot() == general.router.counters.snapshot()
    reasons = [m["payload"]["reason"] for m in got["WF.client"]]
    assert reasons == ["NODE_NOT_FOUND", "VPN_BLOCKED"]
    assert len(got["WF.other"]) == 2 and len(got["WF.other#new"]) == 2
    assert fast.router.counters.dropped["ROUTE_DROP"] == 1
    assert (tmp_path / "fast" / "state" / "RT.gateway@prod.config.json").exists()  # persisted, dir created


async def test_a_config_change_in_the_middle_of_a_read_applies_to_the_rest_of_it(tmp_path: Path) -> None:
    """A SY node's CONFIG_CHANGED moves WF.other to another VPN; the next frames of the same read see it."""
    fast = build_hive(tmp_path / "fast")
    general = build_hive(tmp_path / "general")
    for hive in (fast, general):
        hive.join("SY.admin", "00000000-0000-4000-8000-0000000000bb")
    change = body(None, {"subsystem": "vpn", "version": 5,
                         "config": [{"pattern": "WF.other", "match_kind": "EXACT", "vpn_id": 7}]},
                  src="00000000-0000-4000-8000-0000000000bb", meta={"type": "system", "msg": "CONFIG_CHANGED"})
    from_client = [body("WF.other", 1), body(NODES["WF.other"], 2)]
    fast.conns["SY.admin"].data_received(frame(change))
    fast.conns["WF.client"].data_received(b"".join(frame(b) for b in from_client))
    general.router.batching = True
    general.router.on_frame(general.conns["SY.admin"], change)
    general.router.batching = False
    general.router.flush()
    general_feed(general, from_client)
    got = fast.received()
    assert got == general.received()
    assert [m["payload"]["reason"] for m in got["WF.client"] if m["meta"].get("msg") == "UNREACHABLE"] == [
        "VPN_BLOCKED", "VPN_BLOCKED"]


async def test_privileged_messages_from_an_unproven_node_are_forbidden_on_both_paths(tmp_path: Path) -> None:
    """ADMIN_COMMAND is privileged whatever meta.type says: the fast path must step aside for it."""
    fast = build_hive(tmp_path / "fast")
    general = build_hive(tmp_path / "general")
    for hive in (fast, general):
        hive.join("SY.admin", "00000000-0000-4000-8000-0000000000bb")
    frames = [body("SY.admin", {"action": "kill_node"}, meta={"type": meta_type, "msg": "ADMIN_COMMAND"})
              for meta_type in ("admin", "user")] + [body("SY.admin", {"action": "x"}, meta={"type": "admin"})]
    fast.conns["WF.client"].data_received(b"".join(frame(b) for b in frames))
    general_feed(general, frames)
    got = fast.received()
    assert got == general.received()
    refusals = [m["payload"]["error_code"] for m in got["WF.client"]
                if m["meta"].get("msg") == "ADMIN_COMMAND_RESPONSE"]
    assert refusals == ["FORBIDDEN", "FORBIDDEN"]
    assert len(got["SY.admin"]) == 1 and got["SY.admin"][0]["payload"] == {"action": "x"}  # a plain admin message
    assert fast.router.counters.forbidden["ADMIN_COMMAND"] == 2


# --- runs: a burst to one destination is routed as one step ----------------
def no_runs(*_: Any) -> tuple[bytes, int]:
    return b"", 0


RUN_LIMITS = {"high_water": 4096, "max_buffer": 12_000}  # small, so bursts cross both
RUNS: dict[str, Callable[[], list[bytes]]] = {
    "a burst to one node": lambda: [body("WF.other", i) for i in range(40)],
    "a burst to itself": lambda: [body(CLIENT, i) for i in range(60)],
    "a burst by uuid": lambda: [body(NODES["WF.other"], i) for i in range(40)],
    "a burst to a load-balanced name": lambda: [body("WF.sink", i) for i in range(40)],
    "runs broken by other destinations": lambda: [body("WF.other" if i % 7 else NODES["WF.other"], i)
                                                  for i in range(50)],
    "runs broken by another meta": lambda: [body("WF.other", i, meta={"type": "user", "thread_id": str(i // 5)})
                                            for i in range(40)],
    "a system frame and a broadcast in a burst": lambda: [
        *(body("WF.other", i) for i in range(10)),
        body("WF.other", None, meta={"type": "system", "msg": "NODE_STATUS_GET"}),
        *(body("WF.other", i) for i in range(10)),
        body("broadcast", trace="b-1"),
        *(body("WF.other", i) for i in range(10))],
    "frames the C path leaves alone in a burst": lambda: [
        body("WF.other", i).replace(b'{"routing":', b'{ "routing":') if i % 9 == 4 else body("WF.other", i)
        for i in range(40)],
    "a spoofed frame in a burst": lambda: [body("WF.other", i, src=NODES["WF.other"] if i == 13 else CLIENT)
                                           for i in range(30)],
    "a frame too big for the buffer in a burst": lambda: [body("WF.other", "y" * (9000 if i == 3 else 10))
                                                          for i in range(30)],
    "a malformed frame ends a burst": lambda: [*(body("WF.other", i) for i in range(10)),
                                               body("WF.other", meta={"type": 5}),
                                               *(body("WF.other", i) for i in range(10))],
}


@pytest.mark.parametrize("congested", [False, True], ids=["", "congested"])
@pytest.mark.parametrize("name", list(RUNS))
async def test_runs_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                   congested: bool) -> None:
    """Routing a burst as runs delivers, refuses, blocks and holds back exactly what frame by frame does."""
    frames = RUNS[name]()
    extend = fastpath.extend
    in_runs = [0]

    def counted(*args: Any) -> tuple[bytes, int]:
        data, count = extend(*args)
        in_runs[0] += count
        return data, count

    hives = {}
    for mode in ("runs", "frames"):
        monkeypatch.setattr(fastpath, "extend", counted if mode == "runs" else no_runs)
        hive = build_hive(tmp_path / mode, **RUN_LIMITS)
        if congested:
            hive.conns["WF.other"].pause_writing()
        client = hive.conns["WF.client"]
        client.data_received(b"".join(frame(b) for b in frames))
        held = (len(client.backlog), sorted(c.name for c in client.blocked_on))
        if congested:
            hive.conns["WF.other"].resume_writing()
        for _ in range(20):  # held frames drain once the batch that blocked them is written
            await asyncio.sleep(0)
        hives[mode] = (hive, held)
    (runs, held_runs), (frames_hive, held_frames) = hives["runs"], hives["frames"]
    assert held_runs == held_frames
    assert runs.received() == frames_hive.received()
    assert runs.router.counters.snapshot() == frames_hive.router.counters.snapshot()
    assert {k: c.closing for k, c in runs.conns.items()} == {k: c.closing for k, c in frames_hive.conns.items()}
    assert not runs.conns["WF.client"].backlog
    if name == "a burst to a load-balanced name":
        assert in_runs[0] == 0  # round robin: each frame picks its node
    else:
        assert in_runs[0] >= len(frames) // 4, in_runs  # the bursts did go as runs


@pytest.mark.skipif(_native.speedups is None, reason="the C extension is not built")
def test_c_and_python_runs_agree() -> None:
    """Same bodies, same limits: the same run, byte for byte, at every start and limit."""
    assert _native.speedups is not None
    stamp = fastpath.make_stamp("WF.client@prod")
    node = CLIENT.encode()
    bodies = [body("WF.other", i, trace=f"t-{i}") for i in range(12)]
    bodies[5] = body("WF.sink", 5, trace="t-5")
    bodies[9] = body("WF.other", 9, trace="t-9", meta={"type": "user", "x": 1})
    meta = b'{"type":"user"}'
    size = len(fastpath.scan_py(bodies[0], node, stamp) or ("", b"", b"")[2])
    for start in range(len(bodies) + 1):
        for soft in (0, 1, size, size + 1, 3 * size, 10**6):
            for hard in (0, size - 1, size, 2 * size + 1, 10**6):
                args = (bodies, start, node, stamp, "WF.other", meta, soft, hard)
                want = fastpath.extend_py(*args)
                assert _native.speedups.extend(*args) == want, (start, soft, hard)
                data, count = want
                assert count == 0 or len(data) <= hard
                if count:
                    assert data == b"".join(fastpath.scan_py(b, node, stamp)[2]  # type: ignore[index]
                                            for b in bodies[start : start + count])
    assert _native.speedups.extend(bodies, 0, node, stamp, "WF.other", meta, 10**6, 10**6)[1] == 5
    assert _native.speedups.extend([b"x", *bodies], 1, node, stamp, "WF.other", meta, 10**6, 10**6)[1] == 5
    assert _native.speedups.extend([bytearray(bodies[0])], 0, node, stamp, "WF.other", meta, 10**6, 10**6) == (
        b"", 0)
