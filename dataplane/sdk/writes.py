"""Writing frames: wait while the router is not reading, coalesce a burst's frames into few writes.

A mixin of the SDK's connection (:class:`fluxbee.dataplane.sdk.client._Client`), which owns the
state declared here and keeps ``up``/``ready`` in step with its events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from fluxbee.dataplane.sdk.discovery import NodeConfig
from fluxbee.dataplane.sdk.errors import NotConnectedError, SdkError

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns
_BURST_NS = 10_000
"""Writes closer together than this are taken for a burst and coalesced (see :meth:`_Writes._queue`)."""
_CHUNK = 64 * 1024
"""A burst's coalesced frames are written once they reach this size (256 KiB was tried: in A/B runs
inside one bench session the difference was within the noise)."""



async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class _Connection(Protocol):
    """The connection's socket protocol, as far as writing needs it."""

    transport: asyncio.Transport | None


class _Writes:
    """Queues and writes frames (mixed into the connection)."""

    config: NodeConfig
    proto: _Connection | None
    loop: asyncio.AbstractEventLoop | None
    up: bool
    ready: bool
    closed: bool
    failure: SdkError | None
    connected: asyncio.Event
    writable: asyncio.Event
    dead: asyncio.Event
    _out: list[bytes]
    _out_bytes: int
    _flush_handle: asyncio.Handle | None
    _last_write: int

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
        (that iteration is a visible share of a round trip's CPU when every
        process runs on one CPU).
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
