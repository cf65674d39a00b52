"""The links' TLS channel (memory BIOs over a plain TCP transport) against the standard library's TLS:
interoperation both ways, records cut at any byte, tampering, refused certificates, silent and
plaintext peers, close_notify, and backpressure on ciphertext."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable

import pytest
from hive_harness import until

from fluxbee.dataplane.link.certs import issue_hive_cert, make_ca, write_pem_pair
from fluxbee.dataplane.link.session import client_context, server_context
from fluxbee.dataplane.link.tls import TlsChannel

Pki = Callable[[str], tuple[str, str, str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """``pki(hive)`` → (cert, key, ca) of hive ``hive``; ``pki("other:X")``: hive X from a second CA."""
    root = tmp_path_factory.mktemp("pki")
    cas: dict[str, tuple[bytes, bytes]] = {}

    def issue(name: str) -> tuple[str, str, str]:
        ca_name, _, hive = name.rpartition(":")
        ca_name = ca_name or "main"
        if ca_name not in cas:
            cas[ca_name] = make_ca(ca_name)
            (root / f"{ca_name}.crt").write_bytes(cas[ca_name][0])
        d = root / ca_name / hive
        if not (d / "tls.crt").exists():
            cert, key = issue_hive_cert(*cas[ca_name], hive)
            write_pem_pair(d / "tls.crt", cert, d / "tls.key", key)
        return str(d / "tls.crt"), str(d / "tls.key"), str(root / f"{ca_name}.crt")
    return issue


class App(asyncio.Protocol):
    """Records what the channel tells it; echoes when asked to."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: TlsChannel | None = None
        self.data = bytearray()
        self.chunks = 0
        self.lost: list[Exception | None] = []
        self.eof = False
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsChannel)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.chunks += 1
        if self.echo and self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


def stdlib_client(pki: Pki, hive: str) -> ssl.SSLContext:
    cert, key, ca = pki(hive)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(pki: Pki, apps: list[App], *, timeout: float = 5.0,
                echo: bool = True) -> tuple[asyncio.AbstractServer, int, list[TlsChannel]]:
    ctx = server_context(*pki("A"))
    channels: list[TlsChannel] = []

    def accept() -> TlsChannel:
        app = App(echo=echo)
        apps.append(app)
        channel = TlsChannel(ctx, server_side=True, app=app, handshake_timeout=timeout)
        channels.append(channel)
        return channel
    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], channels


async def test_a_standard_tls_client_talks_to_the_channel_and_big_writes_arrive_whole(pki: Pki) -> None:
    apps: list[App] = []
    server, port, channels = await serve(pki, apps)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=stdlib_client(pki, "B"))
    blob = os.urandom(1 << 20)  # 64 records and more, in writes of every size
    sent = 0
    for size in (1, 7, 300, 16384, 16385, 100_000, len(blob)):
        writer.write(blob[sent:sent + size])
        sent = min(len(blob), sent + size)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(sent), 10)
    assert echoed == blob[:sent]
    app = apps[0]
    assert bytes(app.data) == blob[:sent]
    assert app.chunks < 200  # records read together reach the app together, not one call per record
    # the session's view: the peer's certificate, the cipher, the TCP peer
    channel = channels[0]
    assert channel.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert channel.get_extra_info("cipher")[1] == "TLSv1.3"
    assert channel.get_extra_info("peername")[0] == "127.0.0.1"
    # a clean close from the client: the app sees the end of the stream
    writer.close()
    await until(lambda: bool(app.lost))
    assert app.lost == [None]
    server.close()


async def test_the_channel_dials_a_standard_tls_server_and_closes_with_close_notify(pki: Pki) -> None:
    cert, key, ca = pki("A")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(cafile=ca)
    sctx.load_cert_chain(cert, key)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the server")
        await writer.drain()
        data = await reader.read()  # until the channel's close_notify: an orderly end, no error
        await got.put(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    app = App()
    channel = TlsChannel(client_context(*pki("B")), server_side=False, app=app, handshake_timeout=5)
    await asyncio.get_running_loop().create_connection(lambda: channel, "127.0.0.1", port)
    await channel.ready
    channel.write(b"x" * 50_000)
    await until(lambda: bytes(app.data) == b"hello from the server")
    channel.close()
    assert await asyncio.wait_for(got.get(), 5) == b"x" * 50_000
    await until(lambda: bool(app.lost))
    channel.write(b"after close")  # ignored, as on a closed transport
    server.close()


def _pair(pki: Pki) -> tuple[TlsChannel, App, TlsChannel, App, list[bytes], list[bytes]]:
    """Two channels joined by in-memory 'sockets': what each writes is kept, to be fed as the test likes."""
    to_server: list[bytes] = []
    to_client: list[bytes] = []

    class Wire(asyncio.Transport):
        def __init__(self, sink: list[bytes]) -> None:
            super().__init__()
            self.sink = sink
            self.closed = False
            self.aborted = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.sink.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closed or self.aborted

        def close(self) -> None:
            self.closed = True

        def abort(self) -> None:
            self.aborted = True

        def get_write_buffer_size(self) -> int:
            return 0

    s_app, c_app = App(), App()
    server = TlsChannel(server_context(*pki("A")), server_side=True, app=s_app, handshake_timeout=5)
    client = TlsChannel(client_context(*pki("B")), server_side=False, app=c_app, handshake_timeout=5)
    server.connection_made(Wire(to_client))
    client.connection_made(Wire(to_server))
    for _ in range(4):  # the handshake, flight by flight
        while to_server:
            server.data_received(to_server.pop(0))
        while to_client:
            client.data_received(to_client.pop(0))
    assert server.state == client.state == "open"
    return server, s_app, client, c_app, to_server, to_client


async def test_records_cut_at_every_byte_still_arrive_and_in_one_piece_when_whole(pki: Pki) -> None:
    server, s_app, client, _, to_server, _ = _pair(pki)
    client.write(b"a" * 300)
    client.write(b"b" * 40_000)  # three records
    stream = b"".join(to_server)
    to_server.clear()
    for i in range(len(stream)):
        server.data_received(stream[i:i + 1])
    assert bytes(s_app.data) == b"a" * 300 + b"b" * 40_000
    s_app.data.clear()
    s_app.chunks = 0
    client.write(b"c" * 10)
    client.write(b"d" * 20_000)
    server.data_received(b"".join(to_server))  # many records in one read: one delivery
    assert (bytes(s_app.data), s_app.chunks) == (b"c" * 10 + b"d" * 20_000, 1)


async def test_a_tampered_record_closes_the_connection_and_delivers_nothing(pki: Pki,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    server, s_app, client, _, to_server, _ = _pair(pki)
    client.write(b"pay 10 to B")
    record = bytearray(b"".join(to_server))
    record[-3] ^= 0x01  # inside the authentication tag
    with caplog.at_level(logging.WARNING):
        server.data_received(bytes(record))
    assert s_app.data == b""
    assert server.state == "closed" and server.raw is not None and server.raw.is_closing()
    assert "TLS record failed" in caplog.text
    server.data_received(b"\x17\x03\x03\x00\x05hello")  # nothing more is read after that
    assert s_app.data == b""


async def test_a_peer_from_another_ca_fails_the_handshake_and_never_reaches_the_session(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    apps: list[App] = []
    server, port, channels = await serve(pki, apps)
    with caplog.at_level(logging.WARNING, logger="fluxbee.dataplane.link.tls"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=stdlib_client(pki, "other:B"))
            await asyncio.wait_for(reader.read(1), 5)  # TLS 1.3: a refused client cert shows on the first read
        await until(lambda: bool(channels) and channels[0].state == "closed")
        await until(lambda: "TLS handshake failed" in caplog.text)
    assert apps[0].transport is None and apps[0].data == b""
    # and dialling out to a server of another CA: ``ready`` says why, the session is never told
    other = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=_server_ctx(pki("other:A")))
    app = App()
    channel = TlsChannel(client_context(*pki("B")), server_side=False, app=app, handshake_timeout=5)
    await asyncio.get_running_loop().create_connection(lambda: channel, "127.0.0.1",
                                                       other.sockets[0].getsockname()[1])
    with pytest.raises(ssl.SSLCertVerificationError):
        await channel.ready
    assert app.transport is None
    other.close()
    server.close()


def _server_ctx(material: tuple[str, str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(material[0], material[1])
    return ctx


async def test_silent_and_plaintext_peers_are_cut_off_without_reaching_the_session(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    apps: list[App] = []
    server, port, channels = await serve(pki, apps, timeout=0.3)
    loop = asyncio.get_running_loop()
    # a TCP probe that connects and leaves: not worth a warning
    with caplog.at_level(logging.DEBUG, logger="fluxbee.dataplane.link.tls"):
        socket.create_connection(("127.0.0.1", port)).close()
        await until(lambda: bool(channels) and channels[0].state == "closed")
        await until(lambda: "closed before the TLS handshake" in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    channels.clear()
    apps.clear()
    # a TCP connection that never speaks: closed once the handshake timeout passes
    silent = socket.create_connection(("127.0.0.1", port))
    silent.setblocking(False)
    assert await asyncio.wait_for(loop.sock_recv(silent, 100), 5) == b""
    silent.close()
    # a link frame in plaintext on the TLS port: refused with an alert, closed
    plain = socket.create_connection(("127.0.0.1", port))
    plain.setblocking(False)
    await loop.sock_sendall(plain, b"\x00\x00\x00\x10" + b'{"routing":{}}xx')
    answer = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(plain, 4096), 5):
        answer += chunk
    plain.close()
    assert answer[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    assert all(app.transport is None and app.data == b"" for app in apps)
    assert len(channels) == 2 and all(c.state == "closed" for c in channels)
    with pytest.raises(TimeoutError):
        await channels[0].ready
    server.close()


async def test_a_peer_that_does_not_read_holds_the_writer_on_ciphertext_and_releases_it(pki: Pki) -> None:
    apps: list[App] = []
    server, port, channels = await serve(pki, apps, echo=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=stdlib_client(pki, "B"),
                                                   limit=1 << 16)
    writer.write(b"hi")
    await until(lambda: bool(apps) and apps[0].data == b"hi")
    channel, app = channels[0], apps[0]
    channel.set_write_buffer_limits(high=1 << 16)
    writer.transport.pause_reading()
    chunk = b"z" * 16384
    written = 0
    while not app.paused and written < 64 << 20:
        channel.write(chunk)
        written += len(chunk)
        await asyncio.sleep(0)
    assert app.paused == 1 and channel.get_write_buffer_size() > 0
    writer.transport.resume_reading()
    got = 0
    while got < written:
        got += len(await asyncio.wait_for(reader.read(1 << 20), 10))
    assert got == written
    await until(lambda: app.resumed == 1)
    writer.close()
    server.close()

