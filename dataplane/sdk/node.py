"""The Python node SDK: connect to the hive router, send and receive messages.

``connect(config)`` returns a split ``(NodeSender, NodeReceiver)`` pair over
one router connection.  The connection:

* says HELLO with the node's UUID (persistent across restarts, or ephemeral)
  and waits for ANNOUNCE (with a timeout: the original waited forever);
* proves a claimed name (README: Trust model) with the token in the file named
  by ``$FLUXBEE_NODE_CREDENTIAL_FILE``, sent as HELLO's ``credential``;
* reconnects with exponential backoff (100 ms doubling to 30 s) after the
  router goes away, and says HELLO again with the **same** UUID — but not after
  PROTOCOL_ERROR ``REPLACED`` (another process took the UUID) or a refused
  HELLO: then every ``send``/``recv``/``request`` raises the reason
  (:class:`ReplacedError`, :class:`HandshakeError`).  A connection is always
  either up, being re-established, or failed with an error: never idle
  without a socket;
* answers NODE_STATUS_GET itself (unless the node opts out);
* matches replies to :meth:`NodeSender.request` by ``trace_id``;
* blocks the producer: ``send`` waits while the router is not reading
  (transport paused) or while the connection is down, up to ``send_timeout``;
  the original drained and lost its queue on reconnect;
* bounds the inbound queue: when the node does not keep up, the SDK stops
  reading the socket, so the router sees a slow consumer (and tells senders).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
import uuid as uuid_mod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec

from fluxbee.dataplane import _native, shm, wire
from fluxbee.dataplane.wire import Message, Meta, Routing

log = logging.getLogger(__name__)


class SdkError(Exception):
    """Base of the SDK's errors."""


class NotConnectedError(SdkError):
    """The router could not be reached within the deadline."""


class HandshakeError(SdkError):
    """The router refused the HELLO (reason in ``reason``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ReplacedError(SdkError):
    """Another connection said HELLO with this node's UUID and the router closed ours (``REPLACED``).

    Two live processes are using one UUID (e.g. two copies of a node sharing a UUID file).  The SDK
    does not reconnect: fighting over the UUID would evict the other process forever.
    """

    def __init__(self, uuid: str, name: str, detail: str) -> None:
        super().__init__(f"node {name} ({uuid}) was replaced by another connection with the same UUID ({detail}); "
                         "not reconnecting: another process uses this UUID")
        self.uuid = uuid
        self.name = name
        self.detail = detail


class CredentialError(SdkError):
    """The node's credential file (``$FLUXBEE_NODE_CREDENTIAL_FILE``) cannot be read."""


CREDENTIAL_FILE_ENV = "FLUXBEE_NODE_CREDENTIAL_FILE"
"""Names the file holding this process's credential token (README: Trust model)."""


def credential_file_from_env() -> Path | None:
    value = os.environ.get(CREDENTIAL_FILE_ENV)
    return Path(value) if value else None


def read_credential(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); :class:`CredentialError` if unusable."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CredentialError(f"cannot read the node credential {path} (${CREDENTIAL_FILE_ENV}): {err}") from err
    if not token:
        raise CredentialError(f"the node credential {path} (${CREDENTIAL_FILE_ENV}) is empty")
    return token


class RequestTimeoutError(SdkError, TimeoutError):
    """No reply within the request's timeout; ``sent`` is False when the request never left the node
    (for the whole timeout the router was not reading from it, or the connection was down)."""

    def __init__(self, trace_id: str, timeout: float, *, sent: bool = True) -> None:
        if sent:
            text = f"no reply to {trace_id} within {timeout:g} s"
        else:
            text = (f"{trace_id} not sent within {timeout:g} s: the router was not reading from this node "
                    "(held behind a congested destination) or not connected")
        super().__init__(text)
        self.trace_id = trace_id
        self.timeout = timeout
        self.sent = sent


class FrameTooLargeError(SdkError, wire.FrameTooLargeError):
    """A message that does not fit in one frame: refused before anything is written, so the
    connection stays usable.  ``size`` and ``max_size`` are the encoded body and the limit."""

    def __init__(self, size: int, max_size: int = wire.MAX_FRAME) -> None:
        wire.FrameTooLargeError.__init__(self, size, max_size)
        self.args = (f"{wire.FRAME_TOO_LARGE}: a message of {size} bytes exceeds the {max_size}-byte frame limit; "
                     "nothing was sent",)


class UnreachableError(SdkError):
    """The router answered a request with UNREACHABLE or TTL_EXCEEDED."""

    def __init__(self, reason: str, original_dst: str, detail: str | None) -> None:
        super().__init__(f"{reason} for {original_dst}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.original_dst = original_dst
        self.detail = detail


def default_run_dir() -> Path:
    """``$FLUXBEE_RUN_DIR``; else /var/run/fluxbee as root, or a per-user dir."""
    env = os.environ.get("FLUXBEE_RUN_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/run/fluxbee")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "fluxbee"
    return Path(f"/tmp/fluxbee-{os.geteuid()}")


def find_router_socket(run_dir: Path, name: str) -> Path:
    """Pick the router socket in ``run_dir/routers`` (sticky FNV-1a hash of the base name).

    When ``name`` carries its hive (``WF.echo@prod``), only routers of that hive are candidates
    (read from each router's shared-memory header), so a socket dir shared by two hives on one
    host cannot put a node into the wrong hive.
    """
    sockets = sorted(p for p in (run_dir / "routers").glob("*.sock") if not p.name.startswith("irp-"))
    if not sockets:
        raise NotConnectedError(f"no router socket in {run_dir / 'routers'}")
    base, at, hive = name.rpartition("@")
    if not at:
        base, hive = name, ""
    if hive and len(sockets) > 1:
        own = [p for p in sockets if _router_hive(p) == hive]
        sockets = own or sockets
    h = 0xCBF29CE484222325
    for byte in base.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return sockets[h % len(sockets)]


def _router_hive(sock: Path) -> str | None:
    """The hive a router socket belongs to, from the router's node-table header (None if unknown)."""
    try:
        router_uuid = str(uuid_mod.UUID(sock.stem))
        with shm.NodeTableReader(shm.node_table_name(router_uuid)) as reader:
            return reader.header().hive_id
    except (ValueError, shm.ShmError):
        return None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How a node connects.  ``name`` is its L2 base name (``WF.echo``) or full name."""

    name: str
    """L2 name; ``@hive`` is appended by the router when absent."""
    run_dir: Path = field(default_factory=default_run_dir)
    """Where ``routers/<uuid>.sock`` lives."""
    router_socket: Path | None = None
    """A specific router socket; default: chosen from ``run_dir``."""
    uuid: str | None = None
    """Fixed UUID; default depends on ``persistent``."""
    persistent: bool = False
    """Keep the UUID in ``uuid_dir/<base name>.uuid`` across restarts."""
    uuid_dir: Path | None = None
    """Where persistent UUIDs live; default ``run_dir/state/nodes``."""
    version: str = "1"
    """Reported in HELLO."""
    handle_status: bool = True
    """Answer NODE_STATUS_GET automatically."""
    inbound_queue: int = 1024
    """Messages buffered for the node before the SDK stops reading the socket."""
    announce_timeout: float = 10.0
    """Deadline for ANNOUNCE after HELLO."""
    connect_timeout: float = 30.0
    """How long ``connect()`` and ``send()`` wait for a (re)connection."""
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    reconnect: bool = True
    """Reconnect after the router goes away."""
    config: dict[str, Any] | None = None
    """The node's effective config (template + overrides + ``_system``), served to CONFIG_GET."""
    handle_config: bool = True
    """Answer CONFIG_GET / CONFIG_SET (``meta.target = node_config_control``) automatically."""
    on_config_set: Callable[[dict[str, Any]], str | None] | None = None
    """Called with a proposed config on CONFIG_SET; return an error text to refuse it."""
    on_message: Callable[[Message], None] | None = None
    """Deliver messages to this callback, synchronously as frames arrive, instead of the
    receiver's queue: no task switch per message.  It must not block; it may send with
    :meth:`NodeSender.send_nowait`/:meth:`NodeSender.reply_nowait`."""
    credential_file: Path | None = field(default_factory=credential_file_from_env)
    """File holding the token that proves a claimed name (default ``$FLUXBEE_NODE_CREDENTIAL_FILE``);
    read at each connection, so a rotated token is picked up on reconnect."""


def resolve_uuid(config: NodeConfig) -> str:
    if config.uuid is not None:
        return wire.canonical_uuid(config.uuid)
    if not config.persistent:
        return str(uuid_mod.uuid4())
    directory = config.uuid_dir or config.run_dir / "state" / "nodes"
    path = directory / f"{config.name.split('@', 1)[0]}.uuid"
    with contextlib.suppress(OSError, ValueError):
        return wire.canonical_uuid(path.read_text().strip())
    value = str(uuid_mod.uuid4())
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


@dataclass(slots=True)
class NodeStatus:
    """What the default NODE_STATUS_GET handler reports."""

    lifecycle_state: str = "RUNNING"
    health_state: str = "HEALTHY"
    status_version: int = 1
    last_error: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


# Shared, never mutated: the meta of a plain message of each type (saves an allocation per send).
_PLAIN_META: dict[str, Meta] = {t: Meta(type=t) for t in (wire.TYPE_USER, wire.TYPE_SYSTEM, wire.TYPE_ADMIN)}
# The same metas as the encoded bytes between routing and payload, for _Client.build's splice,
# which writes exactly what encoding the Message would (tests/unit/test_sdk_build.py).
_PLAIN_META_BYTES: dict[str, bytes] = {
    t: b'},"meta":' + wire.encode(m) + b',"payload":' for t, m in _PLAIN_META.items()
}
_USER_META_BYTES = _PLAIN_META_BYTES[wire.TYPE_USER]
_TTL_TRACE = b',"ttl":' + str(wire.DEFAULT_TTL).encode() + b',"trace_id":'
_frame: Callable[[bytes, str | None, bytes, str, bytes, bytes], bytes | None] | None = (
    _native.speedups.frame if _native.speedups is not None else None  # splice() in one allocation
)
_MAX_WIRE = wire.MAX_FRAME + wire.HEADER_SIZE
_encode = wire.encoder.encode
_decode_message = wire.message_decoder.decode
_pack_header = wire.HEADER.pack
_new_trace_id = wire.new_trace_id
_perf_ns = time.perf_counter_ns
_DEFAULT_TTL = wire.DEFAULT_TTL
_TYPE_USER, _TYPE_SYSTEM = wire.TYPE_USER, wire.TYPE_SYSTEM
_REFUSALS = frozenset((wire.UNREACHABLE, wire.TTL_EXCEEDED))
_BURST_NS = 10_000
"""Writes closer together than this are taken for a burst and coalesced (see :meth:`_Client._queue`)."""
_CHUNK = 64 * 1024
"""A burst's coalesced frames are written once they reach this size (256 KiB was tried: A/B runs
inside one bench session gave +3.7 %, +1.6 % and -1 % messages per second, i.e. noise)."""


def _encode_frame(message: Message) -> bytes:
    """:func:`wire.encode_frame`, refusing an oversize message with the SDK's :class:`FrameTooLargeError`."""
    try:
        return wire.encode_frame(message)
    except wire.FrameTooLargeError as err:
        raise FrameTooLargeError(err.size, err.max_size) from None


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


class _Client:
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
        system = self.node_config.get("_system")
        version = system.get("config_version") if isinstance(system, dict) else None
        self.config_version = version if isinstance(version, int) and version > 0 else 1
        self.inbox = _Inbox(config.inbound_queue, self._inbox_drained)
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
        self.connections += 1
        self._mark_up()

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
        if callback is not None:
            try:
                callback(msg)
            except Exception:
                log.exception("on_message callback failed for %s; message dropped", msg.routing.trace_id)
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
            self._answer_status(msg)
            return True
        if name in (wire.CONFIG_GET, wire.CONFIG_SET) and self.config.handle_config:
            self._answer_config(msg)
            return True
        return False

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
        if self._announced is not None and not self._announced.done():
            self._announced.set_result(None)

    CONFIG_CONTRACT: dict[str, Any] = {
        "schema_version": "1",
        "apply_modes": ["replace"],
        "target": "node_config_control",
        "notes": "CONFIG_SET replaces every key but `_system`; config_version must increase",
    }

    def _answer_config(self, msg: Message) -> None:
        """Default CONFIG_GET / CONFIG_SET handler: serve and replace the node's config in memory."""
        body = msg.payload if isinstance(msg.payload, dict) else {}
        error: str | None = None
        state = "current"
        if msg.meta.msg == wire.CONFIG_SET:
            proposed = body.get("config")
            version = body.get("config_version")
            mode = body.get("apply_mode", "replace")
            if not isinstance(proposed, dict):
                error = "INVALID_CONFIG_SET: config must be a JSON object"
            elif mode != "replace":
                error = f"INVALID_CONFIG_SET: apply_mode {mode!r} is not supported (only 'replace')"
            elif "_system" in proposed:
                error = "INVALID_CONFIG_SET: `_system` is managed by the hive and cannot be set"
            elif version is not None and (not isinstance(version, int) or version <= self.config_version):
                error = f"STALE_CONFIG_VERSION: config_version must be greater than {self.config_version}"
            else:
                callback = self.config.on_config_set
                refused = callback(proposed) if callback is not None else None
                if refused:
                    error = f"REJECTED: {refused}"
                else:
                    system = self.node_config.get("_system")
                    self.config_version = version if isinstance(version, int) else self.config_version + 1
                    self.node_config = dict(proposed)
                    if isinstance(system, dict):
                        self.node_config["_system"] = {**system, "config_version": self.config_version}
                    state = "applied"
            if error is not None:
                state = "rejected"
        payload = {
            "ok": error is None,
            "state": state,
            "node_name": self.name,
            "config_version": self.config_version,
            "effective_config": self.node_config,
            "error": error,
            "contract": self.CONFIG_CONTRACT,
        }
        self._answer(msg, wire.CONFIG_RESPONSE, payload, "effective_config")

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

    def _answer_status(self, msg: Message) -> None:
        st = self.status
        payload: dict[str, Any] = {
            "status": "ok",
            "node_name": self.name,
            "lifecycle_state": st.lifecycle_state,
            "health_state": st.health_state,
            "health_source": "NODE_REPORTED",
            "status_version": st.status_version,
        }
        if st.last_error:
            payload["last_error"] = st.last_error
        if st.extensions:
            payload["extensions"] = st.extensions
        self._answer(msg, wire.NODE_STATUS_GET_RESPONSE, payload, "extensions")

    # outbound --------------------------------------------------------
    def build(self, dst: str | None, payload: Any, *, msg_type: str = wire.TYPE_USER, msg: str | None = None,
              trace_id: str | None = None, ttl: int = wire.DEFAULT_TTL, meta: Meta | None = None) -> bytes:
        """One framed message from this node (a fresh trace id unless one is given)."""
        return self.frame(dst, payload, trace_id or wire.new_trace_id(), msg_type, msg, meta, ttl)

    def frame(self, dst: str | None, payload: Any, trace: str, msg_type: str, msg: str | None, meta: Meta | None,
              ttl: int) -> bytes:
        """:meth:`build` with positional arguments (the per-message paths call this)."""
        if meta is None and msg is None and ttl == _DEFAULT_TTL:
            middle = _PLAIN_META_BYTES.get(msg_type)
            if middle is not None:  # the usual message: encoded parts spliced, no Structs built
                return self.splice(dst, payload, trace, middle)
        if meta is None:
            m = _PLAIN_META.get(msg_type) if msg is None else None
            if m is None:
                m = Meta(type=msg_type)
        else:
            m = meta
            if msg_type != wire.TYPE_USER or not m.type:
                m.type = msg_type
        if msg is not None:
            m.msg = msg
        return _encode_frame(Message(routing=Routing(src=self.uuid, dst=dst, ttl=ttl, trace_id=trace), meta=m,
                                     payload=payload))

    def splice(self, dst: str | None, payload: Any, trace: str, middle: bytes = _USER_META_BYTES) -> bytes:
        """The frame of a plain message (default meta and TTL) from encoded parts, no Structs built."""
        if _frame is not None:
            out = _frame(self._head, dst, _TTL_TRACE, trace, middle, _encode(payload))
            if out is not None:  # None: dst or trace needs escaping
                if len(out) > _MAX_WIRE:
                    raise FrameTooLargeError(len(out) - wire.HEADER_SIZE)
                return out
        body = b"".join((self._head, _encode(dst), _TTL_TRACE, _encode(trace), middle, _encode(payload), b"}"))
        size = len(body)
        if size > wire.MAX_FRAME:
            raise FrameTooLargeError(size)
        return _pack_header(size) + body

    def write_nowait(self, frame: bytes) -> bool:
        """Queue a frame without waiting; False if not connected."""
        if not self.up:
            return False
        self._queue(frame)
        return True

    def write_if_ready(self, frame: bytes) -> bool:
        """Queue a frame if it can go without waiting (the usual case: no coroutine); else False."""
        if not self.ready:
            return False
        self._queue(frame)
        return True

    async def write(self, frame: bytes) -> None:
        """Queue a frame, waiting first while disconnected or while the router is not reading."""
        if not self.ready:
            await self._wait_ready()
            if self.proto is None:
                raise NotConnectedError("connection lost while sending")
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        """Write a frame at once, unless it belongs to a burst; coalesce a burst's frames.

        A frame that follows the previous write within :data:`_BURST_NS`
        is written too, and then the rest of the event-loop iteration is
        coalesced: later frames are joined and written when the iteration
        ends (or at once past :data:`_CHUNK`), so a tight send loop costs
        one syscall per chunk.  A lone frame — a request, a reply — is written
        at once and schedules nothing, so it costs no extra loop iteration
        (that iteration measured ~0.7 µs of CPU per round trip with every
        process on one CPU; BENCHMARKS.md).
        """
        if self._flush_handle is None:
            proto = self.proto
            if proto is not None and proto.transport is not None:
                proto.transport.write(frame)
            now = _perf_ns()
            if now - self._last_write < _BURST_NS:
                self._flush_handle = (self.loop or asyncio.get_running_loop()).call_soon(self._flush)
            self._last_write = now
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes >= _CHUNK:
            self._write_out()

    def _flush(self) -> None:
        self._flush_handle = None
        self._write_out()

    def _write_out(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_bytes = 0
        proto = self.proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(data)
        else:
            log.warning("connection lost: %d bytes of queued frames were not sent", len(data))

    async def _wait_ready(self) -> None:
        if self.closed:
            raise NotConnectedError("node is closed")
        if self.failure is not None:
            raise self.failure
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                if not self.connected.is_set():
                    await _first(self.connected, self.dead)
                    if self.failure is not None:
                        raise self.failure
                await self.writable.wait()
        except TimeoutError:
            raise NotConnectedError(
                f"router not reachable or not reading for {self.config.connect_timeout:g} s") from None

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


class NodeSender:
    """The sending half.  Safe to share between tasks of one event loop."""

    def __init__(self, client: _Client) -> None:
        self._c = client

    @property
    def uuid(self) -> str:
        return self._c.uuid

    @property
    def name(self) -> str:
        """Full L2 name as normalised by the router (``WF.echo@hive``)."""
        return self._c.name

    @property
    def vpn_id(self) -> int:
        return self._c.vpn_id

    @property
    def router_uuid(self) -> str:
        return self._c.router_uuid

    @property
    def connected(self) -> bool:
        return self._c.connected.is_set()

    @property
    def connections(self) -> int:
        """How many times the HELLO succeeded (1 + reconnections)."""
        return self._c.connections

    @property
    def status(self) -> NodeStatus:
        """Mutable: what NODE_STATUS_GET reports."""
        return self._c.status

    @property
    def failure(self) -> SdkError | None:
        """Why the connection ended for good (then every call raises it), else None."""
        return self._c.failure

    async def wait_connected(self, timeout: float | None = None) -> None:
        client = self._c
        async with asyncio.timeout(timeout):
            if not client.connected.is_set():
                await _first(client.connected, client.dead)
        if client.failure is not None:
            raise client.failure

    async def send(self, dst: str | None, payload: Any = None, *, msg_type: str = wire.TYPE_USER,
                   msg: str | None = None, meta: Meta | None = None, trace_id: str | None = None,
                   ttl: int = wire.DEFAULT_TTL) -> str:
        """Send one message; returns its trace id.  Waits while the router is not reading."""
        trace = trace_id or _new_trace_id()
        client = self._c
        if msg_type == _TYPE_USER and meta is None and msg is None and ttl == _DEFAULT_TTL:
            frame = client.splice(dst, payload, trace)  # the usual message, without frame()'s dispatch
        else:
            frame = client.frame(dst, payload, trace, msg_type, msg, meta, ttl)
        if not client.write_if_ready(frame):
            await client.write(frame)
        return trace

    def send_nowait(self, dst: str | None, payload: Any = None, *, msg_type: str = wire.TYPE_USER,
                    msg: str | None = None, meta: Meta | None = None, trace_id: str | None = None,
                    ttl: int = wire.DEFAULT_TTL) -> str:
        """Send without waiting (for ``on_message`` callbacks).  Raises NotConnectedError when down."""
        trace = trace_id or _new_trace_id()
        if not self._c.write_nowait(self._c.frame(dst, payload, trace, msg_type, msg, meta, ttl)):
            raise NotConnectedError("not connected to the router")
        return trace

    def reply_nowait(self, to: Message, payload: Any = None, *, msg_type: str | None = None,
                     msg: str | None = None, meta: Meta | None = None) -> None:
        """Answer ``to`` without waiting (for ``on_message`` callbacks)."""
        client = self._c
        if not client.up:
            raise NotConnectedError("not connected to the router")
        routing = to.routing
        client._queue(client.frame(routing.src, payload, routing.trace_id or _new_trace_id(),
                                   msg_type or to.meta.type, msg, meta, _DEFAULT_TTL))

    async def send_message(self, message: Message) -> None:
        """Send a prepared message (``routing.src`` is forced to this node)."""
        message.routing.src = self._c.uuid
        await self._c.write(_encode_frame(message))

    async def request(self, dst: str | None, payload: Any = None, *, timeout: float = 5.0,
                      msg_type: str = wire.TYPE_USER, msg: str | None = None, meta: Meta | None = None,
                      ttl: int = wire.DEFAULT_TTL, raise_unreachable: bool = True) -> Message:
        """Send and wait for the message that carries the same ``trace_id``.

        UNREACHABLE and TTL_EXCEEDED answers raise :class:`UnreachableError`
        unless ``raise_unreachable`` is false.
        """
        client = self._c
        trace = _new_trace_id()
        loop = client.loop or asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        pending = client.pending
        deadline = loop.time() + timeout
        pending[trace] = (future, deadline, timeout)
        if client._sweeper is None:
            client.start_sweeper()
        try:
            frame = client.frame(dst, payload, trace, msg_type, msg, meta, ttl)
            if not client.write_if_ready(frame):
                # The deadline covers the wait for a writable connection too: while the router holds
                # this node (it stopped reading: a destination is congested) the caller asked for an
                # answer within `timeout`, not within connect_timeout.
                try:
                    async with asyncio.timeout_at(deadline):
                        await client.write(frame)
                except TimeoutError:
                    if future.done():
                        future.exception()  # the sweeper's timeout, superseded by this one
                    raise RequestTimeoutError(trace, timeout, sent=False) from None
            reply = await future
        finally:
            pending.pop(trace, None)
        if raise_unreachable and reply.meta.type == _TYPE_SYSTEM and reply.meta.msg in _REFUSALS:
            body = reply.payload if isinstance(reply.payload, dict) else {}
            raise UnreachableError(str(body.get("reason", reply.meta.msg)), str(body.get("original_dst", dst)),
                                   body.get("detail"))
        return reply

    async def reply(self, to: Message, payload: Any = None, *, msg_type: str | None = None,
                    msg: str | None = None, meta: Meta | None = None) -> None:
        """Answer ``to``: unicast to its sender's UUID with the same trace id."""
        await self._c.write(self._c.build(to.routing.src, payload, msg_type=msg_type or to.meta.type,
                                          msg=msg, trace_id=to.routing.trace_id, meta=meta))

    async def router_status(self, timeout: float = 5.0, *, page_limit: int | None = None) -> dict[str, Any]:
        """The router's status snapshot (nodes, routes, VPNs, counters), every node included.

        The router answers in frame-sized pages of nodes (a hive of ~900 nodes does not fit in one
        128 KiB frame); this follows ``next_cursor`` and returns the first page's snapshot with the
        nodes of all pages.  ``page_limit`` caps the nodes per page; ``timeout`` is per page.
        """
        payload: dict[str, Any] = {} if page_limit is None else {"limit": page_limit}
        status: dict[str, Any] | None = None
        nodes: list[Any] = []
        while True:
            reply = await self.request(self._c.router_uuid, payload or None, msg_type=wire.TYPE_SYSTEM,
                                       msg=wire.ROUTER_STATUS_GET, timeout=timeout)
            page = reply.payload
            if not isinstance(page, dict):
                raise SdkError(f"{wire.ROUTER_STATUS_GET_RESPONSE} payload is not an object")
            if page.get("status") == "error":
                raise SdkError(f"router status refused: {page.get('error_code')}: {page.get('error_detail')}")
            nodes.extend(page.get("nodes") or ())
            if status is None:
                status = page
            cursor = page.get("next_cursor")
            if not isinstance(cursor, str) or cursor == payload.get("cursor"):
                break  # the last page (or a router without paging)
            payload["cursor"] = cursor
        status["nodes"] = nodes
        status.pop("next_cursor", None)
        return status

    async def close(self) -> None:
        """Say WITHDRAW and close; pending requests fail with NotConnectedError."""
        await self._c.close()


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


class NodeReceiver:
    """The receiving half: ``await recv()`` or ``async for msg in receiver``."""

    def __init__(self, client: _Client) -> None:
        self._c = client

    async def recv(self, timeout: float | None = None) -> Message:
        inbox = self._c.inbox
        if inbox.items and timeout is None:
            return inbox.pop()
        async with asyncio.timeout(timeout):
            return await inbox.get()

    def recv_nowait(self) -> Message | None:
        inbox = self._c.inbox
        return inbox.pop() if inbox.items else None

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Message]:
        inbox = self._c.inbox
        while not self._c.closed:
            yield inbox.pop() if inbox.items else await inbox.get()


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def connect(config: NodeConfig) -> tuple[NodeSender, NodeReceiver]:
    """Connect (retrying with backoff up to ``config.connect_timeout``) and say HELLO."""
    client = _Client(config)
    await client.open_with_retry(time.monotonic() + config.connect_timeout)
    return NodeSender(client), NodeReceiver(client)


def text_v1(content: str, *, attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A canonical ``text/v1`` payload."""
    if len(content.encode()) > 64 * 1024:
        raise ValueError("text/v1 content over 64 KiB must go through a blob (content_ref)")
    payload: dict[str, Any] = {"type": "text", "content": content}
    if attachments:
        payload["attachments"] = attachments
    return payload


def text_of(message: Message) -> str | None:
    """The ``content`` of a ``text/v1`` payload, or None."""
    payload = message.payload
    if isinstance(payload, dict) and payload.get("type") == "text" and isinstance(payload.get("content"), str):
        return cast(str, payload["content"])
    return None


async def run_until_stopped(handler: Callable[[NodeSender, Message], Any], config: NodeConfig,
                            stop: asyncio.Event) -> None:
    """Connect and call ``handler(sender, msg)`` for each message until ``stop`` is set."""
    sender, receiver = await connect(config)

    async def loop() -> None:
        async for message in receiver:
            result = handler(sender, message)
            if asyncio.iscoroutine(result):
                await result

    task = asyncio.create_task(loop(), name=f"fluxbee-node-{config.name}")
    stopper = asyncio.create_task(stop.wait(), name=f"fluxbee-node-stop-{config.name}")
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()
        for t in (task, stopper):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await sender.close()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise cast(BaseException, task.exception())
