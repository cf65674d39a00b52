"""One link session: a TLS (or, in development, plain) TCP connection to another router.

The session speaks the handshake, keeps the hello and dead timers, and hands everything else to its
:class:`SessionOwner` (the link manager): adverts once the link is up, data frames, and the end of
the session.  It never routes.  States: ``connecting`` (TCP/TLS and the handshake), ``up``, ``down``
(closed; a session object is never reused — a redial makes a new one).

Output is coalesced: data frames are appended to :attr:`LinkSession.out` and written in one TLS write
(:meth:`LinkSession.flush`) by the router at the end of the node read that queued them, or at the next
loop iteration when nothing else flushes (scheduled when the first frame of a batch is queued);
a control frame flushes what is queued before it, so the stream keeps the order frames were queued in
(a pong confirms every data frame queued before its ping).

Backpressure both ways, as for a node connection (:mod:`fluxbee.dataplane.router.connection`):

* as a destination: while the transport is over its high-water mark (:meth:`pause_writing`), producers
  that the router held for this link (:attr:`blocked_sources`) wait, and are released when it drains;
* as a producer: the router may :meth:`block` the session on a local node that cannot take more; the
  session then stops reading (TCP backpressure reaches the sending router, which holds its own
  producers), keeps the frames of the read in :attr:`backlog`, and resumes when the node drains.
  Silence while we are not reading does not count toward the dead interval: we chose not to listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as p
from fluxbee.dataplane.link.certs import CertificateError, hive_id_of

log = logging.getLogger(__name__)

_decode_raw = wire.raw_decoder.decode
_decode_meta = wire.meta_decoder.decode


class SessionOwner(Protocol):
    """What a session needs from the manager that owns it."""

    hive_id: str
    router_id: str
    router_name: str

    def expect(self, role: p.Role, direction: str) -> p.Expect: ...

    def timers(self) -> p.Timers: ...

    def max_buffer(self) -> int: ...

    def session_started(self, session: LinkSession) -> None: ...

    def session_up(self, session: LinkSession) -> p.Reject | None: ...

    def session_down(self, session: LinkSession) -> None: ...

    def on_lsa(self, session: LinkSession, raw: msgspec.Raw) -> None: ...

    def on_data(self, session: LinkSession, env: wire.RawEnvelope, meta: wire.MetaView) -> None: ...

    def read_done(self, session: LinkSession) -> None: ...

    def fast_frames(self, session: LinkSession, frames: list[bytes], start: int) -> int: ...


class LinkSession(asyncio.Protocol):
    """One link (see the module docstring)."""

    _next_sid = 0

    def __init__(self, owner: SessionOwner, role: p.Role, direction: str, address: str, *, secure: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        LinkSession._next_sid += 1
        self.sid = LinkSession._next_sid
        self.owner = owner
        self.role: p.Role = role
        self.direction = direction  # "in" | "out"
        self.address = address
        self.secure = secure
        self.clock = clock
        self.state = "connecting"
        self.since_ms = int(time.time() * 1000)
        self.reason: str | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader()
        self.cert_hive: str | None = None
        self.peer: p.LinkHello | None = None
        self.negotiated: p.Negotiated | None = None
        self._sent_hello = False
        self._sent_accept = False
        self._got_accept = False
        self.last_heard = clock()
        self.rtt_ms: float | None = None
        self.confirmed_ms = 0.0
        """Our clock (ms) when we sent the latest ping the peer answered: it has read every frame we wrote before."""
        self._probe_ms: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.frames_in = 0
        self.frames_out = 0
        self.was_up = False
        # output (coalesced; see the module docstring)
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.out_base = 0  # the transport's buffer when this batch's first frame was queued
        self._flush_handle: asyncio.Handle | None = None
        self.congested_since: float | None = None  # the transport is over its high-water mark since then
        self.blocked_sources: set[Any] = set()  # producers (node connections) held until this link drains
        # input backpressure
        self.blocked_on: set[Any] = set()  # local nodes this link waits for (it does not read meanwhile)
        self.backlog: list[bytes] = []  # frames read but held while blocked, in order
        self.read_pauses = 0  # times this link stopped reading for a local node (status: flow control at work)

    # identity ----------------------------------------------------------------
    @property
    def hive(self) -> str | None:
        return None if self.peer is None else self.peer.hive_id

    @property
    def router_id(self) -> str | None:
        return None if self.peer is None else self.peer.router_id

    def label(self) -> str:
        return f"{self.role} link {self.direction} {self.address} ({self.hive or '?'})"

    # asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.session_started(self)
        if self.direction == "in":
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.address = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        self.transport.set_write_buffer_limits(high=self.high_water)
        if self.secure:
            sslobj = transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            if der is None:
                self.close("NO_CERTIFICATE", "the peer presented no certificate")
                return
            try:
                self.cert_hive = hive_id_of(der)
            except CertificateError as err:
                self.reject(p.CERT_HIVE_MISMATCH, f"the peer's certificate names no hive: {err}")
                return
        timers = self.owner.timers()
        self._arm(timers.dead_interval_ms / 1000, self._handshake_timeout)
        if self.direction == "out":
            self._send_hello()

    def data_received(self, data: bytes) -> None:
        if self.state == "down":
            return
        try:
            frames = self.reader.feed(data)
        except wire.ProtocolError as err:
            self.close(err.reason, err.detail)
            return
        self.last_heard = self.clock()
        if self.backlog or self.blocked_on:
            self.backlog.extend(frames)  # keep the order behind what is already held
            return
        self._process(frames)

    def _process(self, frames: list[bytes]) -> None:
        try:
            self._frames(frames)
        finally:
            if frames:
                self.owner.read_done(self)

    def _frames(self, frames: list[bytes]) -> None:
        """Each frame in order: data frames the owner's fast path takes (in runs), the rest one by one;
        once the owner blocks this session on a node, the rest wait in :attr:`backlog`."""
        fast = self.owner.fast_frames
        count = len(frames)
        index = 0
        while index < count:
            if self.state == "down":
                return
            if self.blocked_on:
                self.backlog.extend(frames[index:])
                return
            if self.state == "up":
                taken = fast(self, frames, index)
                if taken:
                    index += taken
                    self.frames_in += taken
                    continue
                if self.blocked_on:
                    continue
            body = frames[index]
            index += 1
            self.frames_in += 1
            try:
                env = _decode_raw(body)
                meta = _decode_meta(env.meta)
            except (msgspec.DecodeError, UnicodeDecodeError) as err:
                self.close(wire.MALFORMED_FRAME, str(err))
                return
            if meta.type == wire.TYPE_SYSTEM and env.routing.dst is None and meta.msg in p.CONTROL:
                self._control(meta.msg or "", env)
            elif self.state == "up":
                self.owner.on_data(self, env, meta)
            else:
                self.close(p.UNEXPECTED_FRAME, f"{meta.msg or meta.type} before the link is up")

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != "down":
            self._down("EOF" if exc is None else "CONNECTION_LOST", "" if exc is None else str(exc))

    def pause_writing(self) -> None:
        if self.congested_since is None:
            self.congested_since = time.monotonic()

    def resume_writing(self) -> None:
        self.congested_since = None
        self.release_sources()

    # backpressure ------------------------------------------------------------------
    @property
    def high_water(self) -> int:
        """Bytes buffered for the peer past which producers are held (a quarter of the link's buffer cap)."""
        return self.owner.max_buffer() // 4

    @property
    def closing(self) -> bool:
        return self.state == "down"

    def block(self, dst: Any) -> None:
        """Stop reading this link until the local node ``dst`` drains (its ``release_sources`` resumes us)."""
        if dst in self.blocked_on or self.state == "down":
            return
        self.blocked_on.add(dst)
        dst.blocked_sources.add(self)
        if len(self.blocked_on) == 1 and self.transport is not None:
            self.transport.pause_reading()
            self.read_pauses += 1

    def drain_backlog(self) -> None:
        """Route the frames held while blocked (called soon after the last node we waited for drained)."""
        if self.blocked_on or self.state == "down" or not self.backlog:
            return
        frames, self.backlog = self.backlog, []
        self._process(frames)

    def release_sources(self) -> None:
        """This link drained (or ended): the producers held for it may go on."""
        if not self.blocked_sources:
            return
        loop = asyncio.get_running_loop()
        for src in self.blocked_sources:
            src.blocked_on.discard(self)
            if not src.blocked_on and not src.closing and src.transport is not None:
                src.transport.resume_reading()
                if src.backlog:
                    loop.call_soon(src.drain_backlog)
        self.blocked_sources.clear()

    # handshake ----------------------------------------------------------------
    def _send_hello(self) -> None:
        timers = self.owner.timers()
        self._send_control(wire.HELLO, p.hello(self.owner.router_id, self.owner.router_name, self.owner.hive_id,
                                               self.role, timers.hello_interval_ms, timers.dead_interval_ms))
        self._sent_hello = True

    def _control(self, msg: str, env: wire.RawEnvelope) -> None:
        if msg == wire.HELLO:
            if self.peer is not None:
                self.close(p.UNEXPECTED_FRAME, "a second HELLO")
                return
            parsed = p.parse_hello(env.payload)
            if isinstance(parsed, p.Reject):
                self.reject(parsed.reason, parsed.message)
                return
            refused = p.check_hello(parsed, self.cert_hive, self.owner.expect(self.role, self.direction))
            if refused is not None:
                self.reject(refused.reason, refused.message)
                return
            self.peer = parsed
            self.negotiated = p.negotiate(self.owner.timers(), parsed.timers)
            if not self._sent_hello:
                self._send_hello()
            self._send_control(p.WAN_ACCEPT, p.WanAccept(peer_router_id=parsed.router_id, negotiated=self.negotiated))
            self._sent_accept = True
            self._maybe_up()
        elif msg == p.WAN_ACCEPT:
            if self.peer is None or self._got_accept:
                self.close(p.UNEXPECTED_FRAME, "WAN_ACCEPT out of order")
                return
            accept = p.parse_accept(env.payload)
            if accept is None or accept.peer_router_id != self.owner.router_id:
                self.close(p.UNEXPECTED_FRAME, "a WAN_ACCEPT that is not for this router")
                return
            self._got_accept = True
            self._maybe_up()
        elif msg == p.WAN_REJECT:
            rej = p.parse_reject(env.payload)
            log.warning("%s refused us: %s: %s", self.label(), rej.reason, rej.message)
            self.close(rej.reason, f"refused by the peer: {rej.message}", tell=False)
        elif self.state != "up":
            self.close(p.UNEXPECTED_FRAME, f"{msg} before the link is up")
        elif msg == p.LSA:
            self.owner.on_lsa(self, env.payload)
        elif msg == p.LINK_PING:
            ping = p.parse_ping(env.payload)
            if ping is not None:
                self._send_control(p.LINK_PONG, ping)
        elif msg == p.LINK_PONG:
            pong = p.parse_ping(env.payload)
            if pong is not None:
                now_ms = self.clock() * 1000
                self.rtt_ms = round(max(0.0, now_ms - pong.sent_ms), 3)
                # a pong echoes our own clock; one from the future confirms nothing beyond now
                self.confirmed_ms = max(self.confirmed_ms, min(pong.sent_ms, now_ms))
                if self._probe_ms is not None and pong.sent_ms >= self._probe_ms:
                    self._probe_ms = None

    def _maybe_up(self) -> None:
        if not (self._sent_accept and self._got_accept) or self.state != "connecting":
            return
        refused = self.owner.session_up(self)
        if refused is not None:
            self.reject(refused.reason, refused.message)
            return
        self.state = "up"
        self.was_up = True
        self.since_ms = int(time.time() * 1000)
        log.info("%s is up (router %s; hello %d ms, dead %d ms)", self.label(), self.router_id,
                 self.hello_ms(), self.dead_ms())
        self._arm(self.hello_ms() / 1000, self._tick)

    def hello_ms(self) -> int:
        return (self.negotiated or p.negotiate(self.owner.timers(), self.owner.timers())).hello_interval_ms

    def dead_ms(self) -> int:
        return (self.negotiated or p.negotiate(self.owner.timers(), self.owner.timers())).dead_interval_ms

    # timers ----------------------------------------------------------------------
    def _arm(self, delay: float, fn: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, fn)

    def _handshake_timeout(self) -> None:
        if self.state == "connecting":
            self.close(p.HANDSHAKE_TIMEOUT, "the handshake did not finish within the dead interval")

    def _tick(self) -> None:
        if self.state != "up":
            return
        if self.blocked_on:
            self.last_heard = self.clock()  # not reading by our own choice: the peer is not silent
        silent = self.clock() - self.last_heard
        if silent * 1000 > self.dead_ms():
            self.close(p.DEAD_INTERVAL, f"nothing heard for {silent:.1f} s")
            return
        self._send_control(p.LINK_PING, p.Ping(sent_ms=self.clock() * 1000))
        self._arm(self.hello_ms() / 1000, self._tick)

    def probe(self) -> None:
        """Ask the peer now (a ping out of turn) to confirm what it has read, unless such a ping is pending."""
        if self.state == "up" and self._probe_ms is None:
            self._probe_ms = self.clock() * 1000
            self._send_control(p.LINK_PING, p.Ping(sent_ms=self._probe_ms))

    # output --------------------------------------------------------------------
    def _send_control(self, msg: str, payload: object) -> None:
        if self.transport is None or self.state == "down":
            return
        self.flush()  # data queued before this frame goes first
        if self.transport.get_write_buffer_size() > 2 * self.owner.max_buffer():
            # Alive (it pings) but not reading: adverts and pongs would pile up without bound.
            self.abort(wire.SLOW_CONSUMER, "the peer does not read what we send")
            return
        self.transport.write(p.control_frame(self.owner.router_id, msg, payload))
        self.frames_out += 1

    def send_lsa(self, payload: p.LsaPayload) -> None:
        self._send_control(p.LSA, payload)

    def send(self, frame: bytes) -> bool:
        """Queue a data frame; False (nothing queued) if the link is not up or its buffer is full."""
        transport = self.transport
        if self.state != "up" or transport is None:
            return False
        if self.buffered() + len(frame) > self.owner.max_buffer():
            return False
        self.queue(frame, 1)
        return True

    def buffered(self) -> int:
        """Bytes queued for the peer and not yet handed to the kernel (the transport's buffer and ours)."""
        transport = self.transport
        base = self.out_base if self.out else (transport.get_write_buffer_size() if transport is not None else 0)
        return base + self.out_bytes

    def queue(self, data: bytes, frames: int, *, soon: bool = True) -> bool:
        """Append ``frames`` whole frames (``data``) to the batch's write; the caller checked that the
        link is up and that they fit (:meth:`buffered`).  The batch is written by :meth:`flush`: at the
        next loop iteration (``soon``), or when the caller says — a router routing one read of a node
        flushes at its end, as it does for node connections.  True when this started the batch (a
        caller that flushes must remember the session)."""
        first = not self.out
        if first:
            transport = self.transport
            self.out_base = transport.get_write_buffer_size() if transport is not None else 0
            if soon:
                self._flush_handle = self._loop.call_soon(self.flush)
        self.out.append(data)
        self.out_bytes += len(data)
        self.frames_out += frames
        return first

    def flush(self) -> None:
        """Write what is queued, as one write."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        self.out_bytes = 0
        if self.transport is not None and self.state != "down":
            self.transport.write(data)  # may call pause_writing() synchronously
        if self.congested_since is None and self.blocked_sources:
            self.release_sources()  # the batch fit: producers held for it may go on

    @property
    def congested(self) -> bool:
        t = self.transport
        return t is not None and t.get_write_buffer_size() >= self.owner.max_buffer() // 4

    # ending ------------------------------------------------------------------------
    def reject(self, reason: str, message: str) -> None:
        # Two routers that dialled each other keep one link: the other one ending is routine.
        log.log(logging.INFO if reason == p.DUPLICATE_LINK else logging.WARNING, "%s: refusing the peer: %s: %s",
                self.label(), reason, message)
        if self.transport is not None and self.state != "down":
            with contextlib.suppress(wire.ProtocolError):
                self.transport.write(p.control_frame(self.owner.router_id, p.WAN_REJECT, p.WanReject(reason, message)))
        self.close(reason, message, tell=False)

    def close(self, reason: str, detail: str, *, tell: bool = True) -> None:
        """End the session (idempotent); ``tell``: log it as our decision."""
        if self.state == "down":
            return
        if tell:
            log.warning("closing %s: %s: %s", self.label(), reason, detail)
        transport = self.transport
        self._down(reason, detail)
        if transport is not None:
            transport.close()

    def abort(self, reason: str, detail: str) -> None:
        transport = self.transport
        self._down(reason, detail)
        if transport is not None:
            transport.abort()

    def _down(self, reason: str, detail: str) -> None:
        was_up = self.state == "up"
        self.flush()  # a graceful close writes what was queued; an abort drops it (unconfirmed either way)
        self.state = "down"
        self.reason = reason
        self.since_ms = int(time.time() * 1000)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.backlog = []
        for dst in self.blocked_on:
            dst.blocked_sources.discard(self)
        self.blocked_on.clear()
        self.release_sources()
        if was_up:
            log.info("%s is down: %s %s", self.label(), reason, detail)
        self.owner.session_down(self)
        if not self.closed.done():
            self.closed.set_result(reason)


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.3 only, a client certificate required and verified against the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0  # links never resume a TLS session: no tickets to send after each handshake
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.3 only, the server certificate verified against the CA; the host name is not checked —
    the hive id in the certificate is (links are dialled by address, often an IP)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx
