"""Link managers over real loopback TLS in one event loop, with a fake router: handshake, adverts,
transit, refusals with their reasons, the dead timer closing a silent link, redial + resync."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
from hive_harness import until

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as p
from fluxbee.dataplane.link.certs import issue_hive_cert, make_ca, write_pem_pair
from fluxbee.dataplane.link.manager import LinkManager
from fluxbee.dataplane.link.session import LinkSession
from fluxbee.dataplane.link.settings import LinkSettings
from fluxbee.dataplane.link.tls import TlsChannel


class FakeRouter:
    def __init__(self, hive: str, names: Iterable[str] = ()) -> None:
        self.nodes = [p.NodeAd(str(uuid.uuid4()), f"{n}@{hive}") for n in names]
        self.frames: list[tuple[str, p.NodeAd]] = []
        self.changes = 0
        self.reads = 0

    def local_nodes(self) -> Iterable[p.NodeAd]:
        return self.nodes

    def is_local_uuid(self, value: str) -> bool:
        return any(n.uuid == value for n in self.nodes)

    def link_frame(self, session: LinkSession, env: wire.RawEnvelope, meta: wire.MetaView, src: p.NodeAd) -> None:
        self.frames.append((str(env.routing.dst), src))

    def links_changed(self) -> None:
        self.changes += 1

    def read_done(self) -> None:
        self.reads += 1

    def fast_frames(self, session: LinkSession, frames: list[bytes], start: int) -> int:
        return 0  # every frame through the manager's checks

    def forget_senders(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = make_ca("test")
    (root / "ca.crt").write_bytes(ca_cert)

    def issue(hive: str) -> tuple[Path, Path, Path]:
        d = root / hive
        if not (d / "tls.crt").exists():
            cert, key = issue_hive_cert(ca_cert, ca_key, hive)
            write_pem_pair(d / "tls.crt", cert, d / "tls.key", key)
        return d / "tls.crt", d / "tls.key", root / "ca.crt"
    return issue


@pytest.fixture
async def make(pki: Callable[[str], tuple[Path, Path, Path]]) -> AsyncIterator[Callable[..., object]]:
    started: list[LinkManager] = []

    async def factory(hive: str, *, names: Iterable[str] = (), cert_hive: str | None = None,
                      **kw: object) -> tuple[LinkManager, FakeRouter]:
        cert, key, ca = pki(cert_hive or hive)
        router = FakeRouter(hive, names)
        settings = LinkSettings(cert=cert, key=key, ca_cert=ca, hello_interval_s=0.2, dead_interval_s=1.0,
                                **kw)  # type: ignore[arg-type]
        m = LinkManager(settings, router, hive_id=hive, router_id=str(uuid.uuid4()), router_name=f"RT.gw@{hive}",
                        state_path=None)
        await m.start()
        started.append(m)
        return m, router

    yield factory
    for m in started:
        await m.stop()


async def test_two_hives_link_over_mutual_tls_and_learn_each_others_nodes(make: Callable[..., object]) -> None:
    port = free_port()
    a, ra = await make("A", names=["WF.echo"], wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    b, rb = await make("B", names=["WF.b"], uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: a.session_for_hive("B") is not None and b.session_for_hive("A") is not None)
    await until(lambda: ra.nodes[0].uuid in b.table.by_uuid)
    status = b.status()["wan"]
    link = status["links"][0]
    assert link["hive_id"] == "A" and link["direction"] == "out" and link["state"] == "up"
    await until(lambda: b.status()["wan"]["links"][0]["rtt_ms"] is not None)
    assert b.status()["wan"]["links"][0]["last_lsa_seq"] >= 1
    assert a.status()["wan"]["links"][0]["direction"] == "in"


async def test_transit_and_withdrawal_when_the_middle_hive_goes(make: Callable[..., object]) -> None:
    pb = free_port()
    b, _ = await make("B", wan_listen=("127.0.0.1", pb))  # type: ignore[operator,misc]
    a, _ = await make("A", uplinks=(("127.0.0.1", pb),))  # type: ignore[operator,misc]
    c, rc = await make("C", names=["WF.echo"], uplinks=(("127.0.0.1", pb),))  # type: ignore[operator,misc]
    await until(lambda: a.table.route("C") is not None and c.table.route("A") is not None)
    route = a.table.route("C")
    assert route is not None and route.tail == ("B", "C")
    assert a.table.by_uuid[rc.nodes[0].uuid][0] == "C"
    await b.stop()
    await until(lambda: a.table.route("C") is None and c.table.route("A") is None)


async def test_both_ends_run_tls_13_on_the_links_own_channel(make: Callable[..., object]) -> None:
    port = free_port()
    a, _ = await make("A", wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    b, _ = await make("B", uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: bool(a.up_sessions("wan")) and bool(b.up_sessions("wan")))
    for m in (a, b):
        transport = m.up_sessions("wan")[0].transport
        assert isinstance(transport, TlsChannel)  # not the event loop's TLS transport
        assert transport.get_extra_info("cipher")[1] == "TLSv1.3"


async def test_a_peer_whose_certificate_names_another_hive_is_refused(make: Callable[..., object]) -> None:
    port = free_port()
    a, _ = await make("A", wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    # "B" presents C's certificate: its HELLO claims B, the certificate says C
    b, _ = await make("B", cert_hive="C", uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: any(s.reason == p.CERT_HIVE_MISMATCH for s in b.recent))
    assert a.table.peers == {} and b.table.peers == {}


async def test_an_unauthorised_hive_is_refused_with_that_reason(make: Callable[..., object]) -> None:
    port = free_port()
    a, _ = await make("A", wan_listen=("127.0.0.1", port),  # type: ignore[operator,misc]
                      authorized_hives=frozenset({"C"}))
    b, _ = await make("B", uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: any(s.reason == p.HIVE_NOT_AUTHORIZED for s in b.recent))
    assert a.table.peers == {}


async def test_a_silent_peer_is_closed_by_the_dead_timer_and_the_uplink_redials_and_resyncs(
        make: Callable[..., object]) -> None:
    port = free_port()
    a, ra = await make("A", names=["WF.a"], wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    b, _ = await make("B", uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: ra.nodes[0].uuid in b.table.by_uuid)
    first = next(iter(a.sessions.values()))
    assert first.transport is not None
    first.transport.pause_reading()  # A stops hearing B: B's pings go unread
    # A closes the silent session within dead + hello interval; B sees EOF and redials
    await until(lambda: first.state == "down", timeout=5)
    assert first.reason == p.DEAD_INTERVAL
    await until(lambda: any(s.state == "up" and s is not first for s in a.sessions.values()), timeout=10)
    await until(lambda: ra.nodes[0].uuid in b.table.by_uuid, timeout=5)


async def test_a_router_dialling_itself_notices_and_stops(make: Callable[..., object]) -> None:
    port = free_port()
    m, _ = await make("A", mesh_listen=("127.0.0.1", port),  # type: ignore[operator,misc]
                      mesh_peers=(("127.0.0.1", port),))
    await until(lambda: f"127.0.0.1:{port}" in m._self_addresses)
    await until(lambda: all(t.done() for t in m._dialers.values()))
    assert m.table.peers == {}


async def _raw_peer(pki: Callable[[str], tuple[Path, Path, Path]], hive: str,
                    port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import ssl

    cert, key, ca = pki(hive)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx)


async def _closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        data += chunk
    return data


async def test_bad_frames_close_the_link_and_forged_senders_are_dropped(
        make: Callable[..., object], pki: Callable[[str], tuple[Path, Path, Path]]) -> None:
    port = free_port()
    a, ra = await make("A", names=["WF.a"], wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    # data before the handshake
    reader, writer = await _raw_peer(pki, "B", port)
    writer.write(wire.system_frame(str(uuid.uuid4()), "WF.a@A", "X", None, trace_id=str(uuid.uuid4())))
    await _closed(reader)
    writer.close()
    # a length header past the frame limit
    reader, writer = await _raw_peer(pki, "B", port)
    writer.write(wire.HEADER.pack(wire.MAX_FRAME + 1) + b"{")
    await _closed(reader)
    writer.close()
    # not JSON
    reader, writer = await _raw_peer(pki, "B", port)
    writer.write(wire.HEADER.pack(5) + b"nope!")
    await _closed(reader)
    writer.close()
    await until(lambda: not a.sessions)
    # a well-behaved peer whose frames claim a sender it never advertised (or one of A's own nodes)
    b, rb = await make("B", names=["WF.b"], uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: rb.nodes[0].uuid in a.table.by_uuid)
    session = b.session_for_hive("A")
    assert session is not None
    for forged in (str(uuid.uuid4()), ra.nodes[0].uuid):
        session.send(wire.encode_frame(wire.Message(
            routing=wire.Routing(src=forged, dst="WF.a@A", ttl=16, trace_id=str(uuid.uuid4())),
            meta=wire.Meta(type="user"), payload=None)))
    session.send(wire.encode_frame(wire.Message(
        routing=wire.Routing(src=rb.nodes[0].uuid, dst="WF.a@A", ttl=16, trace_id=str(uuid.uuid4())),
        meta=wire.Meta(type="user"), payload=None)))
    await until(lambda: len(ra.frames) == 1)
    assert ra.frames[0][1] == rb.nodes[0]
    assert a.drops["wan"][p.LINK_SRC_NOT_ADVERTISED] == 2
    assert session.state == "up"  # a forged frame is dropped; the link stays


async def test_mesh_peers_found_through_dns_are_dialled(make: Callable[..., object]) -> None:
    pa, pb = free_port(), free_port()
    b, rb = await make("M", names=["WF.b"], mesh_listen=("127.0.0.1", pb))  # type: ignore[operator,misc]
    a, _ = await make("M", mesh_listen=("127.0.0.1", pa), mesh_dns=("localhost", pb),  # type: ignore[operator,misc]
                      mesh_dns_interval_s=0.2)
    await until(lambda: rb.nodes[0].uuid in a.table.mesh_nodes)
    assert [s.direction for s in a.up_sessions("mesh")] == ["out"]
