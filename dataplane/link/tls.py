"""TLS for link sessions, driven through memory BIOs over a plain TCP transport.

A :class:`TlsChannel` sits between the event loop's TCP transport and a link session: it is the
protocol the TCP transport talks to, and the transport the session writes to.  Records go through
``ssl.MemoryBIO`` pairs: one ``recv`` of ciphertext is fed in and decrypted into **one**
``data_received`` of the session (however many records it held), and one session write becomes one
``send`` of ciphertext.

Why not the loop's own TLS transport (``create_server(ssl=…)``): its TLS layer adds its own buffering,
flow control and a call chain per record on top of the same ``ssl`` object; measured on loopback
with uvloop, a 300-byte ping-pong between two processes took about 20 µs longer per round trip than
plain TCP, against about 6 µs here.  Links are the one place where every message of a conversation
between hives pays that, twice per round trip.

What it keeps of the TLS contract, and how:

* TLS 1.3 only and mutual certificates: that is the :class:`ssl.SSLContext` the caller passes (see
  :func:`fluxbee.dataplane.link.session.server_context`); nothing here relaxes it.
* The session is told nothing until the handshake has verified the peer (``connection_made`` comes
  after it), so a peer that fails it never appears in link status.  A handshake that does not finish
  within ``handshake_timeout`` is cut off: a TCP connection that never speaks TLS holds nothing.
* A failed handshake sends the TLS alert, closes, and fails :attr:`TlsChannel.ready` (the dialler
  awaits it and logs why); on the accepting side it is logged, at most once a second.
* Closing sends ``close_notify``; a peer's ``close_notify`` is an end of stream like a TCP FIN.
  A record that fails to decrypt or authenticate closes the connection at once (``abort``).
* Backpressure is the TCP transport's: the write-buffer size and ``pause_writing``/``resume_writing``
  are reported on ciphertext, and ``pause_reading`` stops reading the socket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, cast

log = logging.getLogger(__name__)

READ_SIZE = 1 << 14
"""The most plaintext one ``SSLObject.read`` call is asked for: one TLS record's worth (16 KiB).  Asking
for more costs: the call allocates the whole size first, and past 128 KiB that is an ``mmap``."""

_last_failure_log = 0.0


class TlsChannel(asyncio.Protocol, asyncio.Transport):
    """TLS between a TCP transport (below: this is its protocol) and an ``app`` protocol (above: this
    is its transport).  See the module docstring."""

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, app: asyncio.Protocol,
                 handshake_timeout: float) -> None:
        super().__init__()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._server_side = server_side
        self.app = app
        self.raw: asyncio.Transport | None = None
        self.state = "handshake"  # handshake -> open -> closed
        self._app_connected = False
        self._handshake_timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        """Done when the handshake succeeded; its exception says why it failed (the dialler awaits it)."""
        self._heard = False  # any byte from the peer (a TCP probe that connects and leaves sends none)
        if server_side:  # nobody awaits an accepted connection's handshake: it is logged instead
            self.ready.add_done_callback(self._log_failure)

    # protocol side (the TCP transport calls these) -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, self._timed_out)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        if self.state == "closed":
            return
        self._heard = True
        self._incoming.write(data)
        if self.state == "handshake" and not self._handshake():
            return
        self._pump()

    def eof_received(self) -> bool | None:
        if self._app_connected and self.state == "open":
            return self.app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        self._cancel_timer()
        if not self.ready.done():
            self.ready.set_exception(exc if exc is not None else
                                     ConnectionResetError("the connection closed during the TLS handshake"))
        if self._app_connected:  # otherwise the handshake's failure went through ``ready``
            self._app_connected = False
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_connected:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected:
            self.app.resume_writing()

    # the handshake and reading ---------------------------------------------------------------------
    def _handshake(self) -> bool:
        """Drive the handshake; True once it is done and the app took the connection."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send_pending()
            return False
        except (ssl.SSLError, ValueError) as err:
            self._send_pending()  # the alert, so the peer learns why
            self._fail(err)
            return False
        self._send_pending()
        self._cancel_timer()
        self.state = "open"
        self.ready.set_result(None)
        self._app_connected = True
        self.app.connection_made(self)
        return self.state == "open"

    def _pump(self) -> None:
        """Decrypt everything the incoming BIO holds and hand it to the app as one chunk."""
        chunks: list[bytes] = []
        read, incoming, sslobj = self._ssl.read, self._incoming, self._ssl
        eof = False
        try:
            while incoming.pending or sslobj.pending():
                chunk = read(READ_SIZE)
                if not chunk:  # the peer's close_notify
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLError as err:
            log.warning("closing a link connection: a TLS record failed: %s", err)
            self.abort()
            return
        if self._outgoing.pending:
            self._send_pending()  # e.g. the answer to a peer's key update
        if chunks and self._app_connected:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof and self.state == "open" and self.raw is not None:
            if not self.app.eof_received():
                self.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self.state == "handshake":
            self._fail(TimeoutError(f"the TLS handshake did not finish within {self._handshake_timeout:g} s"))

    def _fail(self, err: BaseException) -> None:
        self.state = "closed"
        self._cancel_timer()
        if not self.ready.done():
            self.ready.set_exception(err)
        if self.raw is not None:
            self.raw.close()  # after the alert queued by _send_pending

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send_pending(self) -> None:
        data = self._outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    def _log_failure(self, ready: asyncio.Future[None]) -> None:
        """An accepted connection whose handshake failed: say why, at most once a second (a peer that
        connected and left without a byte, such as a TCP health check, only at debug level)."""
        global _last_failure_log
        if ready.cancelled() or ready.exception() is None:
            return
        peer = self.raw.get_extra_info("peername") if self.raw is not None else None
        if not self._heard:
            log.debug("a link connection from %s closed before the TLS handshake: %s", peer, ready.exception())
            return
        now = time.monotonic()
        if now - _last_failure_log >= 1.0:
            _last_failure_log = now
            log.warning("refused a link connection from %s: TLS handshake failed: %s", peer, ready.exception())

    # transport side (the app calls these) ----------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != "open" or not data:
            return
        try:
            self._ssl.write(data)  # a memory BIO takes all of it: TLS 1.3 needs no read to write
        except ssl.SSLError as err:
            log.warning("closing a link connection: TLS refused a write: %s", err)
            self.abort()
            return
        self._send_pending()

    def get_write_buffer_size(self) -> int:
        return (self.raw.get_write_buffer_size() if self.raw is not None else 0) + self._outgoing.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits() if self.raw is not None else (0, 0)

    def pause_reading(self) -> None:
        if self.raw is not None and self.state != "closed":
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.raw is not None and self.state != "closed":
            self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw is not None and self.raw.is_reading()

    def is_closing(self) -> bool:
        return self.state == "closed" or self.raw is None or self.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self.raw.get_extra_info(name, default) if self.raw is not None else default

    def close(self) -> None:
        """Send ``close_notify`` and what is queued, then close the TCP connection."""
        if self.state == "closed":
            return
        was_open = self.state == "open"
        self.state = "closed"
        self._cancel_timer()
        if was_open:
            try:
                self._ssl.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # we do not wait for the peer's own close_notify
            self._send_pending()
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self.state = "closed"
        self._cancel_timer()
        if self.raw is not None:
            self.raw.abort()
