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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from fluxbee.dataplane import _native, wire
from fluxbee.dataplane.sdk.client import _Client, _Inbox, _Protocol
from fluxbee.dataplane.sdk.control import NodeStatus
from fluxbee.dataplane.sdk.discovery import (
    CREDENTIAL_FILE_ENV,
    NodeConfig,
    credential_file_from_env,
    default_run_dir,
    find_router_socket,
    read_credential,
    resolve_uuid,
)
from fluxbee.dataplane.sdk.errors import (
    CredentialError,
    FrameTooLargeError,
    HandshakeError,
    NotConnectedError,
    ReplacedError,
    RequestTimeoutError,
    SdkError,
    UnreachableError,
)
from fluxbee.dataplane.sdk.framing import encode_frame
from fluxbee.dataplane.sdk.writes import _first
from fluxbee.dataplane.wire import Message, Meta

__all__ = [
    "CREDENTIAL_FILE_ENV", "CredentialError", "FrameTooLargeError", "HandshakeError", "NodeConfig",
    "NodeReceiver", "NodeSender", "NodeStatus", "NotConnectedError", "ReplacedError", "RequestTimeoutError",
    "SdkError", "UnreachableError", "connect", "credential_file_from_env", "default_run_dir",
    "find_router_socket", "read_credential", "resolve_uuid", "run_until_stopped", "text_of", "text_v1",
    "_Client", "_Inbox", "_Protocol",
]

log = logging.getLogger(__name__)

_new_trace_id = _native.choose(__name__, "_new_trace_id", "trace_id", wire.new_trace_id_py)
_DEFAULT_TTL = wire.DEFAULT_TTL
_TYPE_USER, _TYPE_SYSTEM = wire.TYPE_USER, wire.TYPE_SYSTEM
_REFUSALS = frozenset((wire.UNREACHABLE, wire.TTL_EXCEEDED))


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
        await self._c.write(encode_frame(message))

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


async def connect(config: NodeConfig) -> tuple[NodeSender, NodeReceiver]:
    """Connect (retrying with backoff up to ``config.connect_timeout``) and say HELLO."""
    client = _Client(config)
    await client.open_with_retry(time.monotonic() + config.connect_timeout)
    sender, receiver = NodeSender(client), NodeReceiver(client)
    client.release_callback()  # on_message gets what came before this returned, from the next iteration
    return sender, receiver


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
