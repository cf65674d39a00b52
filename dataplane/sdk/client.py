"""The SDK's connection to the router: handshake, reconnection, the request table, inbound dispatch.

:class:`_Client` is the state the sender and the receiver share.  It says HELLO and waits for
ANNOUNCE, reconnects with the same UUID (never after REPLACED or a refused HELLO), fails pending
requests at their deadline, hands frames to waiting requests, the callback or the inbox, and answers
node-control requests with :mod:`.control`.  Frames are built by :class:`.framing._Framing` and
written by :class:`.writes._Writes`, mixed in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import control
from fluxbee.dataplane.sdk.control import NodeStatus
from fluxbee.dataplane.sdk.discovery import NodeConfig, find_router_socket, read_credential, resolve_uuid
from fluxbee.dataplane.sdk.errors import (
    CredentialError,
    FrameTooLargeError,
    HandshakeError,
    NotConnectedError,
    ReplacedError,
    RequestTimeoutError,
    SdkError,
)
from fluxbee.dataplane.sdk.framing import _Framing
from fluxbee.dataplane.sdk.writes import _Writes
from fluxbee.dataplane.wire import Message

log = logging.getLogger(__name__)

_decode_message = wire.message_decoder.decode
_TYPE_SYSTEM = wire.TYPE_SYSTEM


class _Protocol(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.reader = wire.FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except wire.ProtocolError as err:
            log.error("router sent a bad frame (%s); reconnecting", err)
            if self.transport is not None:
                self.transport.close()
            return
        for body in frames:
            self.client.on_frame(self, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.on_lost(self, exc)

    def pause_writing(self) -> None:
        client = self.client
        if client.proto is self:
            client.writable.clear()
            client.ready = False

    def resume_writing(self) -> None:
        client = self.client
        if client.proto is self:
            client.writable.set()
            client.ready = client.up


class _Client(_Framing, _Writes):
    """Connection state shared by the sender and the receiver."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.uuid = resolve_uuid(config)
        self._head = b'{"routing":{"src":' + wire.encode(self.uuid) + b',"dst":'
        self.name = config.name
        self.vpn_id = 0
        self.router_name = ""
        self.router_uuid = ""
        self.status = NodeStatus()
        self.node_config: dict[str, Any] = dict(config.config or {})
        self.config_version = control.initial_config_version(self.node_config)
        self.inbox = _Inbox(config.inbound_queue, self._inbox_drained)
        self.callback_held = config.on_message is not None
        """``on_message`` messages wait in the inbox until :meth:`release_callback` (``connect()`` returned)."""
        # Requests waiting for their reply: trace id -> (future, deadline in loop time, timeout).
        self.pending: dict[str, tuple[asyncio.Future[Message], float, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        # The per-message paths read these two flags instead of the events above (cheaper than
        # Event.is_set()); every change of `connected`, `writable` or `proto` updates them.
        self.up = False
        """Connected and announced: frames can be queued."""
        self.ready = False
        """``up`` and the router is reading: frames can be written without waiting."""
        self.proto: _Protocol | None = None
        self.closed = False
        self.failure: SdkError | None = None
        """Why the connection ended for good (REPLACED, a refused HELLO); raised by every call."""
        self.dead = asyncio.Event()
        self._hello_trace = ""
        self._announced: asyncio.Future[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self.last_protocol_error: wire.ProtocolErrorPayload | None = None
        self.connections = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._last_write = 0
        # The event loop, kept from open(): asyncio.get_running_loop() costs a getpid() system
        # call per use, once per message on the paths below.
        self.loop: asyncio.AbstractEventLoop | None = None

    # connection ------------------------------------------------------
    async def open(self) -> None:
        if self.failure is not None:
            raise self.failure
        socket_path = self.config.router_socket or find_router_socket(self.config.run_dir, self.name)
        path = self.config.credential_file
        credential = read_credential(path) if path is not None else None
        loop = self.loop = self.inbox.loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(lambda: _Protocol(self), str(socket_path))
        self.proto = proto
        self.last_protocol_error = None
        self._reading_paused = False  # a fresh transport reads; a full inbox pauses it again
        self._announced = loop.create_future()
        self._hello_trace = wire.new_trace_id()
        transport = proto.transport
        if transport is None:
            raise NotConnectedError("transport missing after connect")
        transport.write(
            wire.system_frame(self.uuid, None, wire.HELLO,
                              wire.hello_payload(self.uuid, self.name, self.config.version, credential),
                              trace_id=self._hello_trace, ttl=1)
        )
        try:
            await asyncio.wait_for(asyncio.shield(self._announced), self.config.announce_timeout)
        except TimeoutError:
            transport.close()
            raise NotConnectedError(
                f"no ANNOUNCE from {socket_path} within {self.config.announce_timeout:g} s") from None
        except BaseException:
            transport.close()
            raise
        if self.proto is not proto or transport.is_closing():
            # ANNOUNCE came, then the connection was lost before this coroutine resumed (e.g. the
            # router replaced it at once): on_lost saw a handshake already done and left the
            # reconnection to this task, so it must not mark a dead connection up.
            if self.failure is not None:
                raise self.failure
            raise NotConnectedError("connection lost right after ANNOUNCE")
        # Marked up by _on_announce already, not here: this coroutine resumes a loop iteration later.

    def _mark_up(self) -> None:
        """The connection in ``self.proto`` is announced: frames may flow."""
        self.writable.set()
        self.connected.set()
        self.up = self.ready = True

    async def open_with_retry(self, deadline: float | None) -> None:
        delay = self.config.backoff_initial
        while not self.closed:
            if self.failure is not None:
                raise self.failure
            try:
                await self.open()
                return
            except (HandshakeError, CredentialError, ReplacedError):
                raise
            except (OSError, NotConnectedError) as err:
                now = time.monotonic()
                if deadline is not None and now + delay > deadline:
                    raise NotConnectedError(f"cannot reach the router: {err}") from err
                log.info("router not reachable (%s); will retry in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max)
        raise NotConnectedError("node closed")

    def on_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self.proto:
            return
        self.connected.clear()
        self.proto = None
        self.up = self.ready = False
        announced = self._announced
        if announced is not None and not announced.done():
            err = self.last_protocol_error
            if err is not None:
                announced.set_exception(HandshakeError(err.reason, err.detail))
            else:
                announced.set_exception(NotConnectedError("router closed the connection during HELLO"))
            return  # open() reports it
        if self.closed or self.failure is not None:
            return
        err = self.last_protocol_error
        if err is not None and err.reason == wire.REPLACED:
            self._fail(ReplacedError(self.uuid, self.name, err.detail))
            return
        if not self.config.reconnect:
            self._fail(NotConnectedError(f"router connection lost ({exc or 'EOF'}); reconnect is off"))
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            log.warning("router connection lost (%s); reconnecting with the same UUID", exc or "EOF")
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"fluxbee-reconnect-{self.name}")
        # else: the running reconnection task sees this loss in open() and tries again.

    async def _reconnect(self) -> None:
        try:
            await self.open_with_retry(None)
            log.info("reconnected to the router as %s (%s)", self.name, self.uuid)
        except (HandshakeError, CredentialError, ReplacedError) as err:
            log.error("router refused the reconnection: %s; giving up", err)
            self._fail(err)
        except NotConnectedError as err:
            if not self.closed:
                self._fail(err)
        except Exception as err:  # never end idle without a socket and without telling the node
            log.exception("reconnection failed")
            self._fail(NotConnectedError(f"reconnection failed: {err!r}"))

    def _fail(self, err: SdkError) -> None:
        """The connection is over for good: every waiting and later call raises ``err``."""
        if self.failure is not None:
            return
        log.error("%s", err)
        self.failure = err
        self.connected.clear()
        self.up = self.ready = False
        self.dead.set()
        self.inbox.fail(err)
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(err)
        self.pending.clear()

    # request deadlines ------------------------------------------------
    def start_sweeper(self) -> None:
        """Fail each pending request with RequestTimeoutError at its deadline (checked every 20 ms).

        One sweeper task for all requests instead of a timer per request: a
        request then costs a dict insert, not a heap push and cancel.  The
        task ends when nothing is pending, so an idle node has no timer.
        """
        loop = self.loop or asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(loop), name=f"fluxbee-timeouts-{self.name}")

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self.pending
        try:
            while pending:
                await asyncio.sleep(0.02)
                now = loop.time()
                for trace, (future, deadline, timeout) in list(pending.items()):
                    if deadline <= now:
                        del pending[trace]
                        if not future.done():
                            future.set_exception(RequestTimeoutError(trace, timeout))
        finally:
            self._sweeper = None

    # inbound ---------------------------------------------------------
    def on_frame(self, proto: _Protocol, body: bytes) -> None:
        try:
            msg = _decode_message(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            log.error("dropping an undecodable frame from the router: %s", err)
            return
        if msg.meta.type == _TYPE_SYSTEM and self._on_system(msg):
            return
        pending = self.pending
        if pending:
            entry = pending.pop(msg.routing.trace_id, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(msg)
                return
        callback = self.config.on_message
        if callback is not None and not self.callback_held:
            _call_back(callback, msg)
            return
        if self.inbox.put(msg):
            # Full: stop reading, so the router sees a slow consumer and holds the producers.
            self._pause_reading(proto)

    def _on_system(self, msg: Message) -> bool:
        """Handle the system messages the SDK answers itself; False for the others."""
        name = msg.meta.msg
        if name == wire.ANNOUNCE and msg.routing.trace_id == self._hello_trace:
            self._on_announce(msg)
            return True
        if name == wire.PROTOCOL_ERROR:
            with contextlib.suppress(msgspec.ValidationError):
                self.last_protocol_error = msgspec.convert(msg.payload, wire.ProtocolErrorPayload)
            log.error("router closes our connection: %s", msg.payload)
            return True
        if name == wire.NODE_STATUS_GET and self.config.handle_status:
            self._answer(msg, wire.NODE_STATUS_GET_RESPONSE, control.answer_status(self.name, self.status),
                         "extensions")
            return True
        if name in (wire.CONFIG_GET, wire.CONFIG_SET) and self.config.handle_config:
            answer = control.answer_config(name, msg.payload, node_name=self.name,
                                           config_version=self.config_version, node_config=self.node_config,
                                           on_config_set=self.config.on_config_set)
            self.config_version, self.node_config = answer.config_version, answer.node_config
            self._answer(msg, wire.CONFIG_RESPONSE, answer.payload, "effective_config")
            return True
        return False

    def release_callback(self) -> None:
        """``connect()`` has returned: hand what arrived before that to ``on_message``, then go direct.

        Until then an ``on_message`` node's messages wait in the inbox (bounded, and read no further
        when it is full): the callback typically answers through the sender that ``connect()``
        returns, and a message may come right behind the ANNOUNCE.  They are delivered from a later
        loop iteration, after the caller has kept its sender, and in order: frames that arrive
        meanwhile still queue behind them.
        """
        if not self.callback_held:
            return
        if not self.inbox.items:
            self.callback_held = False
            return
        (self.loop or asyncio.get_running_loop()).call_soon(self._deliver_held)

    def _deliver_held(self) -> None:
        callback, inbox = self.config.on_message, self.inbox
        assert callback is not None  # held only for an on_message node
        while inbox.items:
            _call_back(callback, inbox.pop())  # pop resumes reading once half the backlog is gone
        self.callback_held = False

    def _inbox_drained(self) -> None:
        proto = self.proto
        if self._reading_paused and proto is not None and proto.transport is not None:
            self._reading_paused = False
            proto.transport.resume_reading()

    def _pause_reading(self, proto: _Protocol) -> None:
        if proto.transport is not None and not self._reading_paused:
            self._reading_paused = True
            proto.transport.pause_reading()

    def _on_announce(self, msg: Message) -> None:
        try:
            ann = msgspec.convert(msg.payload, wire.AnnouncePayload)
        except msgspec.ValidationError as err:
            if self._announced is not None and not self._announced.done():
                self._announced.set_exception(HandshakeError(wire.INVALID_HELLO, f"bad ANNOUNCE: {err}"))
            return
        self.name = ann.name
        self.vpn_id = ann.vpn_id
        self.router_name = ann.router_name
        self.router_uuid = msg.routing.src
        announced = self._announced
        if announced is not None and not announced.done():
            announced.set_result(None)
            # Up at once, not when open() resumes: the router listed this node in its table as it wrote
            # the ANNOUNCE, so a request may follow it in this very read (a loaded host runs the node's
            # process late), and an on_message callback must be able to answer it.
            self.connections += 1
            self._mark_up()

    def _answer(self, msg: Message, name: str, payload: dict[str, Any], bulky: str) -> None:
        """Send an automatic answer; one too large for a frame goes without its ``bulky`` field.

        These answers are written from inside the socket callback: an exception there would drop
        the connection, so an oversize answer says so in ``error`` instead.
        """
        try:
            frame = self.build(msg.routing.src, payload, msg_type=wire.TYPE_SYSTEM, msg=name,
                               trace_id=msg.routing.trace_id)
        except FrameTooLargeError as err:
            log.error("%s does not fit in a frame (%s); answering without %s", name, err, bulky)
            payload = {**payload, bulky: None,
                       "error": f"RESPONSE_TOO_LARGE: {bulky} is too large for one frame "
                                f"({err.size} > {err.max_size} bytes)"}
            if "ok" in payload:
                payload["ok"] = False
            frame = self.build(msg.routing.src, payload, msg_type=wire.TYPE_SYSTEM, msg=name,
                               trace_id=msg.routing.trace_id)
        self.write_nowait(frame)


    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._reconnect_task, self._sweeper):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        proto = self.proto
        if proto is not None and proto.transport is not None:
            self._out.append(self.build(None, {"uuid": self.uuid}, msg_type=wire.TYPE_SYSTEM, msg=wire.WITHDRAW, ttl=1))
            self._write_out()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            proto.transport.close()
        self.connected.clear()
        self.up = self.ready = False
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(NotConnectedError("node closed"))
        self.pending.clear()



def _call_back(callback: Callable[[Message], None], msg: Message) -> None:
    """Hand ``msg`` to the node's ``on_message``; an exception there drops that message, not the connection."""
    try:
        callback(msg)
    except Exception:
        log.exception("on_message callback failed for %s; message dropped", msg.routing.trace_id)


class _Inbox:
    """Messages waiting for the node: a deque and one waiter (cheaper than asyncio.Queue).

    ``put`` never drops; it returns True once ``capacity`` is reached so the
    caller stops reading the socket.  ``on_drained`` runs when the backlog
    falls to half the capacity.
    """

    __slots__ = ("items", "capacity", "_waiter", "_on_drained", "_full", "loop", "error")

    def __init__(self, capacity: int, on_drained: Callable[[], None]) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the client connects
        self.items: collections.deque[Message] = collections.deque()
        self.capacity = max(1, capacity)
        self._waiter: asyncio.Future[None] | None = None
        self._on_drained = on_drained
        self._full = False
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """No more messages will come: once the backlog is read, ``get`` raises ``error``."""
        self.error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def put(self, msg: Message) -> bool:
        self.items.append(msg)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self.items) >= self.capacity:
            self._full = True
        return self._full

    def pop(self) -> Message:
        msg = self.items.popleft()
        if self._full and len(self.items) <= self.capacity // 2:
            self._full = False
            self._on_drained()
        return msg

    async def get(self) -> Message:
        while not self.items:
            if self.error is not None:
                raise self.error
            self._waiter = (self.loop or asyncio.get_running_loop()).create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.pop()

