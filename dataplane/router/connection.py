"""One node connection: the asyncio protocol, output batching and backpressure.

A connection belongs to the router that accepted it (:mod:`fluxbee.dataplane.router.server`),
which registers it once its HELLO is accepted and makes every routing decision; the connection
only reads frames, queues output, and holds or releases producers while it is congested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import trust

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)


class Batched(Protocol):
    """What collects output while the router routes one read, and writes it when the router flushes
    (:meth:`Router.flush <fluxbee.dataplane.router.server.Router.flush>`): a node connection, a link session."""

    def flush(self) -> None: ...


class Conn(asyncio.Protocol):
    """One node connection.  Registered in the router once its HELLO is accepted."""

    __slots__ = (
        "router", "transport", "reader", "uuid", "name", "base", "vpn_id", "connected_at_ms",
        "congested_since", "closing", "hello_timer", "peer", "out", "out_bytes",
        "blocked_sources", "blocked_on", "backlog", "uuid_bytes", "stamp", "out_base",
        "cred", "claimed", "proof", "grants", "holds_uuid", "takeover_times", "replacements",
        "takeovers_refused", "pending",
    )

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader()
        self.uuid: str | None = None
        self.uuid_bytes = b""  # for the fast path (fastpath.scan)
        self.stamp = b""  # ,"src_l2_name":"<name>" (fastpath.make_stamp)
        self.name = ""
        self.base = ""
        self.vpn_id = 0
        self.connected_at_ms = 0
        self.congested_since: float | None = None
        self.closing = False
        self.hello_timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.out_base = 0  # the transport's buffer when this batch's first frame was queued (constant in a batch)
        # Producers paused because this connection is congested (node connections, links: LinkSession).
        self.blocked_sources: set[Any] = set()
        self.blocked_on: set[Any] = set()  # congested destinations this producer waits for (a Conn, a LinkSession)
        self.backlog: list[bytes] = []  # frames read but held while blocked, in order
        # Trust (fluxbee.dataplane.router.trust): who is on the other end and what it proved.
        self.cred: trust.PeerCred | None = None  # SO_PEERCRED, read at accept
        self.claimed = False  # registered under a claimed name, proven
        self.proof: str | None = None  # sha256 of the credential the HELLO carried (re-checked on reload)
        self.grants: frozenset[str] = frozenset()
        self.holds_uuid = False  # takeovers of this UUID flapped: the incumbent (this one) keeps it
        self.takeover_times: list[float] = []  # recent takeovers of this UUID (monotonic), inherited
        self.replacements = 0  # takeovers of this UUID so far, inherited by each new connection
        self.takeovers_refused = 0
        self.pending = False  # counted in the router's per-uid pre-HELLO tally

    # asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.router.settings.high_water)
        self.router.counters.connections += 1
        self.cred = peer_cred(transport)
        if self.cred is not None:
            self.peer = f"pid {self.cred.pid} uid {self.cred.uid}"
        if not self.router.admit_pending(self):
            return
        self.hello_timer = asyncio.get_running_loop().call_later(
            self.router.settings.hello_timeout_s, self._hello_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            frames = self.reader.feed(data)
        except wire.ProtocolError as err:
            self.router.counters.rejected[err.reason] += 1
            self.fail(err.reason, err.detail)
            return
        if self.backlog or self.blocked_on:
            self.backlog.extend(frames)  # keep the order behind what is already held
            return
        self.process(frames)

    def process(self, frames: list[bytes]) -> None:
        """Route frames in order; once a destination blocks this producer, hold the rest."""
        router = self.router
        router.batching = True
        try:
            router.route_frames(self, frames)
        finally:
            router.batching = False
            router.flush()

    def drain_backlog(self) -> None:
        if self.blocked_on or self.closing or not self.backlog:
            return
        frames, self.backlog = self.backlog, []
        self.process(frames)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        self.router.end_pending(self)
        self.release_sources()
        for dst in self.blocked_on:
            dst.blocked_sources.discard(self)
        self.blocked_on.clear()
        self.router.on_disconnect(self, "eof" if exc is None else "error")

    def pause_writing(self) -> None:
        if self.congested_since is None:
            self.congested_since = time.monotonic()

    def resume_writing(self) -> None:
        self.congested_since = None
        self.release_sources()

    def block(self, dst: Any) -> None:
        """Stop reading from this producer until ``dst`` drains (backpressure, not loss)."""
        if dst in self.blocked_on or self.closing:
            return
        self.blocked_on.add(dst)
        dst.blocked_sources.add(self)
        if len(self.blocked_on) == 1 and self.transport is not None:
            self.transport.pause_reading()
            self.router.paused_producers += 1

    def release_sources(self) -> None:
        if not self.blocked_sources:
            return
        loop = asyncio.get_running_loop()
        for src in self.blocked_sources:
            src.blocked_on.discard(self)
            if not src.blocked_on and not src.closing and src.transport is not None:
                src.transport.resume_reading()
                if src.backlog:
                    loop.call_soon(src.drain_backlog)  # not from inside this write callback
        self.blocked_sources.clear()

    # ------------------------------------------------------------------
    def _hello_timeout(self) -> None:
        if self.uuid is None and not self.closing:
            if self.reader.pending == 0 and self.transport is not None:
                # Nothing at all was sent (a liveness probe such as `fluxbee up` waiting for the socket).
                log.debug("closing a connection that sent nothing within the handshake timeout")
                self.router.counters.disconnects["idle_probe"] += 1
                self.closing = True
                self.transport.close()
                return
            self.router.counters.rejected[wire.HELLO_REQUIRED] += 1
            self.fail(wire.HELLO_REQUIRED, "no HELLO within the handshake timeout")

    def send(self, frame: bytes) -> bool:
        """Queue a frame; False (and nothing queued) if the connection is closing or full.

        While the router handles one read's worth of frames, output is
        collected per connection and written once at the end (one syscall per
        destination per read, not per frame).
        """
        transport = self.transport
        if self.closing or transport is None:
            return False
        router = self.router
        buffered = transport.get_write_buffer_size()
        if buffered + self.out_bytes + len(frame) > router.settings.max_buffer:
            return False
        router.counters.frames_out += 1
        if router.batching:
            if not self.out:
                router.dirty.append(self)
                self.out_base = buffered
            self.out.append(frame)
            self.out_bytes += len(frame)
        else:
            transport.write(frame)
        return True

    def flush(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.out = []
            self.out_bytes = 0
            if self.transport is not None and not self.closing:
                self.transport.write(data)  # may call pause_writing() synchronously
            if self.congested_since is None and self.blocked_sources:
                self.release_sources()  # the batch fit: producers held for it may go on

    def cut_off(self, reason: str, detail: str) -> None:
        """Abort a connection that does not read: drop its queue, free its producers, now.

        :meth:`fail` closes gracefully, and a graceful close only happens once
        the outbound buffer has been written — never, for a consumer that does
        not read, so it would keep its place and hold its producers for ever.
        No PROTOCOL_ERROR is sent: it would queue behind the very bytes the
        peer does not read (the peer sees a reset; the router log and the
        counters say why).
        """
        if self.closing:
            return
        transport = self.transport
        router = self.router
        dropped = self.out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        log.warning("cutting off %s (%s): %s: %s; %d queued bytes dropped",
                    self.name or self.peer, self.uuid, reason, detail, dropped)
        router.counters.disconnects[reason] += 1
        router.counters.dropped_bytes[reason] += dropped
        self.out = []
        self.out_bytes = 0
        self.closing = True
        router.on_disconnect(self, reason, counted=True)  # out of the node table before anyone else routes to it
        self.release_sources()
        if transport is not None:
            transport.abort()

    def fail(self, reason: str, detail: str) -> None:
        """Tell the peer why, then close this connection only."""
        if self.closing:
            return
        log.warning("closing connection %s (%s): %s: %s", self.name or self.peer, self.uuid, reason, detail)
        self.router.counters.disconnects[reason] += 1
        self.flush()
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(wire.ProtocolError):
                transport.write(
                    wire.system_frame(
                        self.router.uuid, self.uuid, wire.PROTOCOL_ERROR,
                        wire.ProtocolErrorPayload(reason=reason, detail=detail),
                        trace_id=wire.new_trace_id(), ttl=1,
                    )
                )
        self.closing = True
        if transport is not None:
            transport.close()



_PEERCRED = struct.Struct("3i")


def peer_cred(transport: asyncio.BaseTransport) -> trust.PeerCred | None:
    """``SO_PEERCRED`` of a Unix-socket connection (None where the kernel cannot say)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (OSError, AttributeError, struct.error):
        return None
    return trust.PeerCred(pid, uid, gid)


def who(conn: Conn) -> str:
    cred = conn.cred
    return "pid ?" if cred is None else f"pid {cred.pid} uid {cred.uid}"
