"""Connection limits of the admin HTTP server: what aiohttp does not bound by itself.

aiohttp waits for a request's headers as long as the client keeps the connection open, so a client
sending one byte a second holds a connection forever, and nothing caps how many are held (300 such
connections were seen).  :class:`ConnectionGuard` wraps every accepted connection's protocol:

- a connection beyond ``max_connections`` is answered ``503 TOO_MANY_CONNECTIONS`` and closed;
- the request line and headers must arrive within ``header_timeout`` of the connection opening or of
  the previous answer; a half-sent request is answered ``408 REQUEST_TIMEOUT`` and closed, an idle
  keep-alive connection is closed without a word (a pooling client may be about to reuse it);
- the body is bounded in :mod:`fluxbee.admin.http` (``body_timeout``, also 408).

The handler tells the guard when a request's headers are in (:meth:`ConnectionGuard.request_started`)
and when it has answered (:meth:`ConnectionGuard.request_done`): a handler may take as long as its
action needs, and the next deadline counts from its answer (a client that has not taken the answer
within ``header_timeout`` is a slow client too).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from fluxbee.admin.errors import error_envelope

log = logging.getLogger(__name__)


def _raw_answer(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps(error_envelope(None, code, detail), separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class _GuardedProtocol(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the header deadline and the count outside."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.refused = False
        self.got_bytes = False  # of the request being waited for
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        if len(self.guard.open) >= self.guard.max_connections:
            self.refused = True
            self.guard.refused += 1
            if self.guard.refused == 1 or self.guard.refused % 100 == 0:
                log.warning("admin API: %d connections are open, the limit; refusing more (%d refused so far)",
                            len(self.guard.open), self.guard.refused)
            transport.write(_raw_answer(503, "Service Unavailable", "TOO_MANY_CONNECTIONS",
                                        f"the admin API serves at most {self.guard.max_connections} connections"))
            transport.close()
            return
        self.guard.open[self.inner] = self
        self.inner.connection_made(transport)
        self.wait_for_headers()

    def wait_for_headers(self) -> None:
        self.cancel_deadline()
        self.got_bytes = False
        self._deadline = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._expired)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.got_bytes:
            self.guard.timed_out += 1
            self.transport.write(_raw_answer(408, "Request Timeout", "REQUEST_TIMEOUT",
                                             f"the request headers did not arrive within "
                                             f"{self.guard.header_timeout:g} s"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self._deadline is not None:
            self.got_bytes = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        if self.refused:
            return
        self.guard.open.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class ConnectionGuard:
    """Counts the admin API's connections and holds each one's header deadline."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[object, _GuardedProtocol] = {}  # aiohttp's protocol -> its wrapper
        self.refused = 0
        self.timed_out = 0

    def protocol_factory(self, make: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(make(), self)

    def request_started(self, request: web.BaseRequest) -> None:
        """The request's headers are in: its handler runs without a deadline from here."""
        conn = self.open.get(request.protocol)
        if conn is not None:
            conn.cancel_deadline()

    def request_done(self, request: web.BaseRequest) -> None:
        """The answer is given: the next request on this connection has ``header_timeout`` again."""
        conn = self.open.get(request.protocol)
        if conn is not None:
            conn.wait_for_headers()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard` (aiohttp's TCPSite, plus the guard)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self.host = host
        self.requested_port = port
        self.guard = guard

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.requested_port}"

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol_factory(server), self.host, self.requested_port, reuse_address=True)
