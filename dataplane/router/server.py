"""The hive router: one asyncio process that moves frames between node sockets.

Two paths make every routing decision.  The general path
(:meth:`Router.on_frame`) decodes ``routing`` and the few meta fields it
decides on; ``meta`` and ``payload`` stay raw bytes and are written out
unchanged (see :mod:`fluxbee.dataplane.wire`).  The fast path
(:meth:`Router.route_frames`) takes the common case without decoding at all
(:mod:`fluxbee.dataplane.fastpath`) and hands every other frame to the general
path.  **A new rule for user messages to a UUID or a name (a policy, a
quota, a new refusal) must be added to the fast path's conditions too, or
make it step aside** — and get a case in ``tests/unit/test_router_fastpath.py``,
which checks that both paths agree.  Lookups are dict hits: nodes by UUID,
nodes by full name, nodes by base name, and per-name route decisions
memoised until the config or the connected nodes change.

Decisions the original left open, made here:

* ``routing.src`` is bound to the connection: a frame claiming any other UUID
  is not routed, is counted, and the sender gets UNREACHABLE ``SRC_MISMATCH``.
* One UUID is one connection: a second HELLO with a connected UUID replaces
  the older connection, which is closed with PROTOCOL_ERROR ``REPLACED`` —
  unless the UUID's name is claimed and the newcomer has not proven it, or
  two processes keep taking it from each other (then the incumbent keeps it).
* Trust (:mod:`fluxbee.dataplane.router.trust`): the socket is owner + hive
  group only; peer credentials are read at accept; claimed names need proof;
  ``CONFIG_CHANGED`` / ``ADMIN_COMMAND`` need an authenticated system node or
  a grant; undeclared names are limited per uid and per process and never get
  the slots reserved for claimed names.
* Several live nodes with one L2 name share the load round-robin.
* A matching DROP route wins over a connected node (silent to the sender, as
  in the original, but counted).
* Backpressure (slow consumers) holds producers instead of losing data.
  When a frame takes a destination's outbound buffer past ``high_water``,
  the router stops reading from the producer and keeps the rest of that
  read's frames, in order, until the destination drains; then it resumes.
  Only past the hard cap ``max_buffer`` (many producers at once, or a
  broadcast fan-out) is a frame dropped, counted and, for unicast, answered
  UNREACHABLE ``DST_CONGESTED``.  A connection that stays congested for
  ``slow_consumer_timeout_s`` is cut off (``SLOW_CONSUMER``): aborted, not
  closed — a graceful close waits for the buffer to drain, which a consumer
  that never reads never lets happen — so its queued output is dropped
  (counted in ``dropped_bytes``), it leaves the node table, and the producers
  held behind it resume at once.  Router memory is therefore bounded by
  ``max_buffer × connections`` whatever the consumers do.
* Malformed or oversize frames close only the offending connection, after a
  PROTOCOL_ERROR frame that says why.
* TTL: a frame arriving with ``ttl == 0`` is answered TTL_EXCEEDED; local
  delivery does not decrement (as in the original).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import msgspec

from fluxbee.dataplane import alloc, fastpath, shm, wire
from fluxbee.dataplane.router import scheduling, trust
from fluxbee.dataplane.router.config import (
    ROUTE_CACHE_LIMIT,
    CompiledRoute,
    ConfigError,
    HiveConfigDoc,
    RouteTable,
    is_system_name,
    load_config_file,
    parse_routes,
    parse_vpns,
    split_name,
)
from fluxbee.dataplane.router.counters import Counters
from fluxbee.dataplane.router.l3 import L3Resolver, with_src_ilk
from fluxbee.models import RouteAction, RouteSpec, VpnSpec, validate_node_name
from fluxbee.models.resources import HIVE_ID_RE

log = logging.getLogger(__name__)

# Hot path: the wire module's codecs, without the error-translating wrappers.
_decode_raw = wire.raw_decoder.decode
_decode_meta = wire.meta_decoder.decode
META_CACHE_BYTES = 512
"""Metas up to this size are memoised (decoded once per distinct byte string)."""
META_CACHE_ENTRIES = 4096
"""The memo is emptied when it reaches this many distinct metas."""

MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """How one router runs.  Built once at the entry point and passed in."""

    hive_id: str
    """Hive this router serves; appended as ``@hive`` to names without one."""
    run_dir: Path
    """Root of ``routers/<uuid>.sock`` and ``state/``."""
    router_name: str = "RT.gateway"
    """L2 base name of the router (``RT.*``); not addressable by nodes."""
    config_path: Path | None = None
    """Hive config file (routes, VPNs); polled and reloaded live when it changes."""
    metrics_addr: tuple[str, int] | None = None
    """Serve /healthz, /readyz, /metrics and /status over HTTP here."""
    max_nodes: int = 4096
    """Capacity of the shared-memory node table (and of connections)."""
    hello_timeout_s: float = 5.0
    """A connection that sends no HELLO within this time is closed."""
    high_water: int = 256 * 1024
    """Outbound buffer size at which a connection counts as congested."""
    max_buffer: int = 1024 * 1024
    """Outbound buffer cap per connection; frames beyond it are dropped."""
    slow_consumer_timeout_s: float = 10.0
    """A connection congested for this long is closed (SLOW_CONSUMER)."""
    dedupe_window_s: float = 30.0
    """Broadcast trace ids are remembered this long."""
    heartbeat_interval_s: float = 2.0
    """Shared-memory heartbeat period."""
    config_poll_s: float = 1.0
    """How often the config file's stat is checked."""
    identity_frontdesk: str = "SY.frontdesk.gov"
    """Where ``dst: null`` messages from temporary ILKs go (L3, :mod:`fluxbee.dataplane.router.l3`)."""
    scheduling: str = "batch"
    """CPU scheduling class of the router process, set by :func:`run_router`: ``batch`` or
    ``inherit`` (:mod:`fluxbee.dataplane.router.scheduling` says why and what it costs)."""
    claims_dir: Path | None = None
    """Claimed names and their proofs (:mod:`fluxbee.dataplane.router.trust`), polled like the config
    file.  Without it no claims file exists: ``SY.*``/``RT.*`` names cannot register at all."""
    socket_group: int | None = None
    """Group of the socket directory (0750) and socket (0660); default the router's primary gid.
    Processes outside the owner and this group cannot connect at all."""
    claimed_reserve: int = 256
    """Node-table slots only proven claimed names may use: undeclared names are refused once
    ``max_nodes - claimed_reserve`` nodes are registered, so a flood never locks the hive out."""
    max_unclaimed_per_uid: int = 2048
    """Registered nodes with unclaimed names per peer uid (SO_PEERCRED)."""
    max_unclaimed_per_pid: int = 1024
    """Registered nodes with unclaimed names per peer process."""
    max_pending_per_uid: int = 256
    """Connections of one uid that have not said HELLO yet; more are closed at once."""
    takeover_window_s: float = 30.0
    """Window in which repeated takeovers of one live UUID count as flapping."""
    takeover_limit: int = 3
    """Takeovers of one live UUID (by another process) allowed in the window; the next HELLO is
    refused ``UUID_IN_USE`` and the incumbent keeps the UUID for as long as it stays connected."""


class RouterError(Exception):
    """The router cannot start (socket path, busy regions, bad config)."""


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
        self.blocked_sources: set[Conn] = set()  # producers paused because this connection is congested
        self.blocked_on: set[Conn] = set()  # congested destinations this producer waits for
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
        self.cred = _peer_cred(transport)
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

    def block(self, dst: Conn) -> None:
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


@dataclass(slots=True)
class _SectionVersions:
    routes: int = 0
    vpns: int = 0


@dataclass(slots=True)
class _Names:
    """Nodes sharing one name, with a round-robin cursor."""

    conns: list[Conn] = field(default_factory=list)
    cursor: int = 0


class Router:
    """State and decisions of one hive router (see the module docstring)."""

    def __init__(self, settings: RouterSettings, router_uuid: str | None = None) -> None:
        if not HIVE_ID_RE.match(settings.hive_id):
            raise RouterError(f"hive id {settings.hive_id!r} must match {HIVE_ID_RE.pattern}")
        if not settings.router_name.startswith("RT.") or "@" in settings.router_name:
            raise RouterError(f"router name {settings.router_name!r} must be an RT.* name without @hive")
        self.settings = settings
        self.hive_id = settings.hive_id
        self.uuid = router_uuid or _load_or_create_uuid(settings)
        self.name = f"{settings.router_name}@{settings.hive_id}"
        self.socket_path = settings.run_dir / "routers" / f"{uuid_mod.UUID(self.uuid).hex}.sock"
        self.counters = Counters()
        self.by_uuid: dict[str, Conn] = {}
        self.by_name: dict[str, _Names] = {}
        self.by_base: dict[str, list[Conn]] = {}
        self.table = RouteTable.build(0, (), ())
        self._dst_cache: dict[str, tuple[str, str, CompiledRoute | None]] = {}
        self._fast_names: dict[str, _Names] = {}  # fast path: destination -> live nodes; emptied on any change
        self._meta_cache: dict[bytes, wire.MetaView] = {}
        self.config_version = 0
        self._section_versions = _SectionVersions()
        self._seen_broadcasts: dict[str, float] = {}
        self._config_sig: tuple[int, int, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes_shm: shm.NodeTableWriter | None = None
        self._config_shm: shm.ConfigRegionWriter | None = None
        self._started_at = time.time()
        self.ready = asyncio.Event()
        self.batching = False
        self.dirty: list[Conn] = []
        self.paused_producers = 0
        self._stopped = asyncio.Event()
        self.l3 = L3Resolver(settings.hive_id, settings.identity_frontdesk, run_dir=settings.run_dir)
        self.claims = trust.Claims.empty()
        self._claims_sig: object = None
        self._pending_by_uid: collections.Counter[int] = collections.Counter()
        self._unclaimed_by_uid: collections.Counter[int] = collections.Counter()
        self._unclaimed_by_pid: collections.Counter[int] = collections.Counter()

    # lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        path = self.socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise RouterError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --run-dir")
        path.parent.mkdir(parents=True, exist_ok=True)
        (s.run_dir / "state").mkdir(parents=True, exist_ok=True)
        group = os.getgid() if s.socket_group is None else s.socket_group
        _secure(path.parent, 0o750, group)
        if s.claims_dir is not None:
            self._claims_sig = trust.dir_signature(s.claims_dir)
            try:
                self.claims = trust.Claims(trust.load_claims_dir(s.claims_dir))
            except trust.ClaimsError as err:
                raise RouterError(f"claims: {err}") from err
        if path.exists():
            if _socket_alive(path):
                raise RouterError(f"another router is listening on {path}")
            path.unlink()
        try:
            self._nodes_shm = shm.NodeTableWriter(
                shm.node_table_name(self.uuid), owner_uuid=self.uuid, hive_id=self.hive_id,
                owner_name=self.name, capacity=s.max_nodes,
            )
            self._config_shm = shm.ConfigRegionWriter(
                shm.config_region_name(self.uuid), owner_uuid=self.uuid, hive_id=self.hive_id,
                owner_name=self.name,
            )
        except shm.ShmError as err:
            self._close_shm()
            raise RouterError(f"shared memory: {err}") from err
        try:
            self._load_initial_config()
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: Conn(self), path=str(path), backlog=1024)
            _secure(path, 0o660, group)
            if s.metrics_addr is not None:
                host, port = s.metrics_addr
                try:
                    self._metrics_server = await asyncio.start_server(self._serve_http, host, port)
                except OSError as err:
                    raise RouterError(f"cannot serve metrics on {host}:{port}: {err.strerror}") from err
        except BaseException:
            # Leave nothing behind: no socket file, no shared-memory region of a router that never ran.
            if self._server is not None:
                self._server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._close_shm()
            raise
        self._tasks = [
            asyncio.create_task(self._periodic(s.heartbeat_interval_s, self._heartbeat), name="router-heartbeat"),
            asyncio.create_task(self._periodic(1.0, self._housekeeping), name="router-housekeeping"),
        ]
        if s.config_path is not None:
            self._tasks.append(
                asyncio.create_task(self._periodic(s.config_poll_s, self._poll_config), name="router-config-poll")
            )
        if s.claims_dir is not None:
            self._tasks.append(
                asyncio.create_task(self._periodic(s.config_poll_s, self._poll_claims), name="router-claims-poll")
            )
        self.ready.set()
        log.info("router %s (%s) listening on %s; config version %d; fast path: %s; scheduling: %s; allocator: %s",
                 self.name, self.uuid, path, self.config_version, fastpath.IMPLEMENTATION, scheduling.current(),
                 alloc.state())
        log.info("socket group %d; %d claims from %s", group, len(self.claims.by_name), s.claims_dir or "(none)")

    async def stop(self) -> None:
        """Stop accepting, close every connection, remove the socket and the regions."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        for conn in list(self.by_uuid.values()):
            if conn.transport is not None:
                conn.transport.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._close_shm()
        self.l3.close()
        log.info("router %s stopped", self.name)

    def _close_shm(self) -> None:
        for region in (self._nodes_shm, self._config_shm):
            if region is not None:
                region.close(unlink=True)
        self._nodes_shm = None
        self._config_shm = None

    async def _periodic(self, every: float, fn: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                fn()
            except Exception:  # a housekeeping failure must not stop the router
                log.exception("periodic %s failed; will retry in %.1f s", fn.__name__, every)

    def _heartbeat(self) -> None:
        if self._nodes_shm is not None:
            self._nodes_shm.heartbeat()
        if self._config_shm is not None:
            self._config_shm.heartbeat()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        seen = self._seen_broadcasts
        if seen:
            expired = [k for k, t in seen.items() if t < now]
            for key in expired:
                del seen[key]
        limit = self.settings.slow_consumer_timeout_s
        for conn in list(self.by_uuid.values()):
            since = conn.congested_since
            if since is not None and now - since > limit and conn.transport is not None:
                if conn.transport.get_write_buffer_size() >= self.settings.high_water:
                    self.counters.rejected[wire.SLOW_CONSUMER] += 1
                    conn.cut_off(wire.SLOW_CONSUMER, f"outbound buffer over the limit for more than {limit:g} s")

    def flush(self) -> None:
        """Write what :meth:`Conn.send` collected during a batch."""
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()

    # connections -------------------------------------------------------
    def route_frames(self, conn: Conn, frames: list[bytes]) -> None:
        """Route one read's frames in order: the hot path.

        The common case is decided here: a user message whose ``src`` is the
        connection's node, with ``ttl > 0``, addressed to a connected UUID or
        to a name that no route decides, for a node of the same VPN whose
        buffer has room.  :func:`fluxbee.dataplane.fastpath.scan` checks the
        envelope and stamps ``src_l2_name`` without building Python objects;
        every other frame goes through :meth:`on_frame`, the general path,
        which makes the same decisions (``tests/unit/test_router_fastpath.py``
        runs each case through both).  Decoded metas are memoised by their
        bytes: most traffic repeats a handful of metas.

        Once a frame is queued for a node, :func:`fastpath.extend` takes the
        frames after it that go to the same ``dst`` with the same meta as one
        run (one join, one step of this loop), up to the point where this loop
        would block the producer (the destination's high-water mark) or refuse
        a frame (its buffer cap); the loop then decides that frame itself.  A
        name shared by several nodes gets no runs: each frame picks its node.
        """
        scan, extend = fastpath.scan, fastpath.extend
        metas = self._meta_cache
        by_uuid = self.by_uuid
        fast_names = self._fast_names
        dirty = self.dirty
        high_water = self.settings.high_water
        room = self.settings.max_buffer
        system, broadcast, privileged = wire.TYPE_SYSTEM, wire.BROADCAST, trust.PRIVILEGED
        node, node_b, stamp, vpn = conn.uuid, conn.uuid_bytes, conn.stamp, conn.vpn_id
        routed = 0
        count = len(frames)
        index = -1
        try:
            while True:
                index += 1
                if index >= count or conn.closing:
                    break
                if conn.blocked_on:
                    conn.backlog.extend(frames[index:])
                    break
                body = frames[index]
                if node is None:
                    self.on_frame(conn, body)  # the HELLO
                    node, node_b, stamp, vpn = conn.uuid, conn.uuid_bytes, conn.stamp, conn.vpn_id
                    continue
                hit = scan(body, node_b, stamp)
                if hit is None:
                    vpn = self._general(conn, body)
                    continue
                dst, raw_meta, frame = hit
                meta = metas.get(raw_meta)
                if meta is None:
                    try:
                        meta = _decode_meta(raw_meta)
                    except msgspec.DecodeError as err:
                        self._malformed(conn, err)
                        break
                    if len(raw_meta) <= META_CACHE_BYTES:
                        if len(metas) >= META_CACHE_ENTRIES:
                            metas.clear()
                        metas[raw_meta] = meta
                if meta.type == system or dst == broadcast or (meta.msg is not None and meta.msg in privileged):
                    vpn = self._general(conn, body)
                    continue
                single = True
                target = by_uuid.get(dst)
                if target is None:
                    names = fast_names.get(dst)
                    if names is None:
                        names = self._fast_name(dst)
                        if names is None:
                            vpn = self._general(conn, body)
                            continue
                    conns = names.conns
                    if len(conns) == 1:
                        target = conns[0]
                    else:
                        target = self._pick(names)
                        single = False  # round robin: each frame picks its node
                transport = target.transport
                if target.vpn_id != vpn or target.closing or transport is None:
                    self.counters.frames_in += 1
                    self._deliver(conn, target, _decode_raw(body), meta)  # refusal, with the reply
                    continue
                out = target.out
                size = len(frame)
                base = target.out_base if out else transport.get_write_buffer_size()
                if base + target.out_bytes + size > room:
                    self.counters.frames_in += 1
                    self._deliver(conn, target, _decode_raw(body), meta)  # dropped, with the reply
                    continue
                if not out:
                    dirty.append(target)
                    target.out_base = base
                out.append(frame)
                size += target.out_bytes
                routed += 1
                if single and index + 1 < count:
                    # The frames after it that go the same way, as one run (a burst costs one step).
                    if target is conn:
                        soft = room
                    elif target.congested_since is not None:
                        soft = 0
                    else:
                        soft = high_water - size
                    if soft > 0:
                        data, more = extend(frames, index + 1, node_b, stamp, dst, raw_meta, soft, room - base - size)
                        if more:
                            out.append(data)
                            size += len(data)
                            routed += more
                            index += more
                target.out_bytes = size
                if target is not conn and (target.congested_since is not None or size >= high_water):
                    conn.block(target)
        finally:
            counters = self.counters
            counters.frames_in += routed
            counters.frames_out += routed
            counters.delivered += routed

    def _general(self, conn: Conn, body: bytes) -> int:
        """One frame through the general path; returns the connection's VPN for the rest of the batch.

        The frame may have changed it: a CONFIG_CHANGED from this node re-VPNs every connected node.
        """
        self.on_frame(conn, body)
        return conn.vpn_id

    def _fast_name(self, dst: str) -> _Names | None:
        """The live nodes a name reaches when no route decides it (memoised until nodes or config change)."""
        if len(dst) in (32, 36):  # maybe a UUID in another spelling: the general path knows
            return None
        full, _, route = self._resolve(dst)
        names = self.by_name.get(full) if route is None else None
        if names is None or not names.conns:
            return None
        if len(self._fast_names) >= ROUTE_CACHE_LIMIT:
            self._fast_names.clear()
        self._fast_names[dst] = names
        return names

    def _malformed(self, conn: Conn, err: Exception) -> None:
        self.counters.frames_in += 1
        self.counters.rejected[wire.MALFORMED_FRAME] += 1
        conn.fail(wire.MALFORMED_FRAME, str(err))

    def on_frame(self, conn: Conn, body: bytes) -> None:
        """The general path for one frame (HELLO included)."""
        if conn.uuid is None:
            self.counters.frames_in += 1
            self._on_hello(conn, body)
            return
        try:
            env = _decode_raw(body)
            meta = _decode_meta(env.meta)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            self._malformed(conn, err)
            return
        self.counters.frames_in += 1
        self.route_decoded(conn, env, meta)

    def route_decoded(self, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
        """Every routing decision for a decoded frame of a registered connection."""
        routing = env.routing
        if routing.src != conn.uuid:
            self.counters.rejected[wire.SRC_MISMATCH] += 1
            self._unreachable(conn, routing, wire.SRC_MISMATCH,
                              f"routing.src {routing.src!r} is not this connection's node")
            return
        if meta.msg in trust.PRIVILEGED and not trust.may_send(meta.msg, conn.base, conn.claimed, conn.grants):
            self._forbidden(conn, env, meta.msg)
            return
        if meta.type == wire.TYPE_SYSTEM and meta.msg is not None and self._system(conn, env, meta):
            return
        if routing.ttl == 0:
            self.counters.ttl_exceeded += 1
            self._reply(conn, routing, wire.TTL_EXCEEDED,
                        wire.TtlExceededPayload(original_dst=_dst_text(routing.dst), last_hop=f"router:{self.uuid}"))
            return
        routing.src_l2_name = conn.name
        dst = routing.dst
        if dst is None:
            if self._route_l3(conn, env, meta):
                return
            self._unreachable(conn, routing, wire.OPA_ERROR, "no routing policy is loaded for dst=null")
            return
        if dst == wire.BROADCAST:
            self._broadcast(conn, env, meta)
            return
        target = self.by_uuid.get(dst)
        if target is not None:
            self._deliver(conn, target, env, meta)
            return
        if wire.is_uuid(dst):
            target = self.by_uuid.get(wire.canonical_uuid(dst))
            if target is not None:
                self._deliver(conn, target, env, meta)
            else:
                self._unreachable(conn, routing, wire.NODE_NOT_FOUND, "no node with this UUID is connected")
            return
        self._route_name(conn, env, meta, dst)

    def _on_hello(self, conn: Conn, body: bytes) -> None:
        self.end_pending(conn)
        try:
            msg = wire.decode_message(body)
        except wire.ProtocolError as err:
            self.counters.rejected[wire.HELLO_REQUIRED] += 1
            conn.fail(wire.HELLO_REQUIRED, f"first frame must be a HELLO: {err.detail}")
            return
        if msg.meta.type != wire.TYPE_SYSTEM or msg.meta.msg != wire.HELLO:
            self.counters.rejected[wire.HELLO_REQUIRED] += 1
            conn.fail(wire.HELLO_REQUIRED, f"first frame must be a HELLO, got {msg.meta.type}/{msg.meta.msg}")
            return
        reason = None
        proof: str | None = None
        try:
            hello = msgspec.convert(msg.payload, wire.HelloPayload)
            credential = msg.payload.get("credential") if isinstance(msg.payload, dict) else None
            if credential is not None:
                if not isinstance(credential, str):
                    raise ValueError("payload.credential must be a string")
                # Hashed at once: the router keeps no token, only what claims files hold.
                proof = trust.token_sha256(credential[:4096])
            node_uuid = wire.canonical_uuid(hello.uuid)
            if wire.canonical_uuid(msg.routing.src) != node_uuid:
                reason = "payload.uuid differs from routing.src"
            name = hello.name if "@" in hello.name else f"{hello.name}@{self.hive_id}"
            base, hive = split_name(name)
            if hive != self.hive_id:
                reason = f"node name {name!r} names hive {hive!r}, but this router serves {self.hive_id!r}"
            validate_node_name(name)
            if base.startswith("RT."):
                reason = "RT.* names are reserved for routers"
        except (msgspec.ValidationError, ValueError) as err:
            reason = str(err)
        if reason is not None:
            self.counters.rejected[wire.INVALID_HELLO] += 1
            conn.fail(wire.INVALID_HELLO, reason)
            return
        verdict = self.claims.check(base, conn.cred, proof)
        if not verdict.ok:
            self._refuse_hello(conn, trust.NAME_CLAIMED, verdict.detail)
            return
        old = self.by_uuid.get(node_uuid)
        if old is not None:
            taken = self._takeover_refusal(old, conn, proof)
            if taken is not None:
                self._refuse_hello(conn, trust.UUID_IN_USE, taken)
                return
        else:
            full = self._limit_refusal(conn, verdict.claimed)
            if full is not None:
                self._refuse_hello(conn, *full)
                return
        if old is not None:
            self._unregister(old)
            conn.takeover_times = old.takeover_times
            conn.replacements = old.replacements + 1
            conn.takeovers_refused = old.takeovers_refused
            old.fail(wire.REPLACED, "a new connection said HELLO with this node's UUID")
        conn.claimed = verdict.claimed
        conn.grants = verdict.grants
        conn.proof = proof
        if conn.hello_timer is not None:
            conn.hello_timer.cancel()
            conn.hello_timer = None
        conn.uuid = node_uuid
        conn.uuid_bytes = node_uuid.encode()
        conn.name = name
        conn.stamp = fastpath.make_stamp(name)
        conn.base = base
        conn.vpn_id = self.table.vpn_for(name)
        conn.connected_at_ms = int(time.time() * 1000)
        self._register(conn)
        conn.send(
            wire.system_frame(
                self.uuid, node_uuid, wire.ANNOUNCE,
                wire.AnnouncePayload(uuid=node_uuid, name=name, status="registered",
                                     vpn_id=conn.vpn_id, router_name=self.name),
                trace_id=msg.routing.trace_id, ttl=1,
            )
        )
        log.info("node %s (%s) registered, vpn %d", name, node_uuid, conn.vpn_id)

    # trust -------------------------------------------------------------
    def admit_pending(self, conn: Conn) -> bool:
        """Count a fresh connection against its uid's pre-HELLO allowance; close it if over."""
        cred = conn.cred
        if cred is None:
            return True
        if self._pending_by_uid[cred.uid] >= self.settings.max_pending_per_uid:
            self.counters.hello_refused[trust.PEER_LIMIT] += 1
            conn.fail(wire.INVALID_HELLO, f"{trust.PEER_LIMIT}: uid {cred.uid} has "
                                          f"{self.settings.max_pending_per_uid} connections waiting for HELLO")
            return False
        self._pending_by_uid[cred.uid] += 1
        conn.pending = True
        return True

    def end_pending(self, conn: Conn) -> None:
        if conn.pending and conn.cred is not None:
            conn.pending = False
            left = self._pending_by_uid[conn.cred.uid] - 1
            if left > 0:
                self._pending_by_uid[conn.cred.uid] = left
            else:
                del self._pending_by_uid[conn.cred.uid]

    def _refuse_hello(self, conn: Conn, reason: str, detail: str) -> None:
        self.counters.hello_refused[reason] += 1
        conn.fail(wire.INVALID_HELLO, detail if detail.startswith(reason) else f"{reason}: {detail}")

    def _limit_refusal(self, conn: Conn, claimed: bool) -> tuple[str, str] | None:
        """Why a new node may not take a table slot (None: it may)."""
        s = self.settings
        count = len(self.by_uuid)
        if count >= s.max_nodes:
            self.counters.rejected["NODE_TABLE_FULL"] += 1
            return "NODE_TABLE_FULL", f"the router is full ({s.max_nodes} nodes)"
        if claimed:
            return None  # the reserve is theirs
        if count >= s.max_nodes - s.claimed_reserve:
            return trust.PEER_LIMIT, (f"the last {s.claimed_reserve} of {s.max_nodes} node slots are reserved "
                                      "for the hive's claimed names")
        cred = conn.cred
        if cred is not None:
            if self._unclaimed_by_uid[cred.uid] >= s.max_unclaimed_per_uid:
                return trust.PEER_LIMIT, f"uid {cred.uid} already has {s.max_unclaimed_per_uid} undeclared nodes"
            if self._unclaimed_by_pid[cred.pid] >= s.max_unclaimed_per_pid:
                return trust.PEER_LIMIT, f"pid {cred.pid} already has {s.max_unclaimed_per_pid} undeclared nodes"
        return None

    def _takeover_refusal(self, old: Conn, new: Conn, proof: str | None) -> str | None:
        """Why ``new`` may not take ``old``'s UUID (None: it may, and the takeover is recorded).

        A UUID bound to a claimed name is only taken over by a connection that proves that claim.
        Two live processes with one UUID (two nodes sharing a UUID file; the original SDKs
        reconnect 500 ms after any close) would evict each other forever: after
        ``takeover_limit`` takeovers in ``takeover_window_s`` the incumbent keeps the UUID for as
        long as it stays connected.  A process taking over its own connection does not count.
        """
        s = self.settings
        if old.claimed and not self.claims.check(old.base, new.cred, proof).ok:
            old.takeovers_refused += 1
            self.counters.takeovers["refused"] += 1
            return (f"{old.uuid} belongs to {old.name} ({_who(old)}), a claimed name this connection "
                    "has not proven; the incumbent stays")
        if old.cred is not None and new.cred is not None and old.cred.pid == new.cred.pid:
            self.counters.takeovers["replaced"] += 1  # the same process again: not two processes fighting
            return None
        now = time.monotonic()
        recent = [t for t in old.takeover_times if now - t < s.takeover_window_s]
        old.takeover_times = recent
        if old.holds_uuid or len(recent) >= s.takeover_limit:
            old.takeovers_refused += 1
            self.counters.takeovers["refused"] += 1
            if not old.holds_uuid or _power_of_ten(old.takeovers_refused):
                log.warning("node %s (%s): two live processes use one UUID (%s now, %s before); after %d takeovers "
                            "in %.0f s the incumbent keeps it (%d refused so far)", old.name, old.uuid, _who(new),
                            _who(old), len(recent), s.takeover_window_s, old.takeovers_refused)
            old.holds_uuid = True
            return (f"{old.uuid} is in use by {old.name} ({_who(old)}) and was taken over {len(recent)} times in "
                    f"{s.takeover_window_s:g} s; the incumbent keeps it")
        recent.append(now)
        self.counters.takeovers["replaced"] += 1
        log.warning("node %s (%s) taken over: %s replaces %s (%d in %.0f s)", old.name, old.uuid, _who(new),
                    _who(old), len(recent), s.takeover_window_s)
        return None

    def _tally(self, conn: Conn, delta: int) -> None:
        """Per-uid and per-pid counts of registered unclaimed nodes (the limits of _limit_refusal)."""
        cred = conn.cred
        if conn.claimed or cred is None:
            return
        for tally, key in ((self._unclaimed_by_uid, cred.uid), (self._unclaimed_by_pid, cred.pid)):
            value = tally[key] + delta
            if value > 0:
                tally[key] = value
            else:
                tally.pop(key, None)

    def _forbidden(self, conn: Conn, env: wire.RawEnvelope, msg: str) -> None:
        """Refuse a privileged message with the answer its sender waits for."""
        self.counters.forbidden[msg] += 1
        routing = env.routing
        detail = (f"{conn.name} may not send {msg}: only authenticated SY.* nodes and names granted {msg} "
                  "in the hive's claims may")
        log.warning("%s from %s (%s) refused FORBIDDEN", msg, conn.name, _who(conn))
        if msg == wire.ADMIN_COMMAND:
            try:
                body = msgspec.json.decode(env.payload)
            except msgspec.DecodeError:
                body = None
            action = body.get("action") if isinstance(body, dict) else None
            payload: dict[str, Any] = {"status": "error", "action": action if isinstance(action, str) else None,
                                       "payload": None, "error_code": trust.FORBIDDEN, "error_detail": detail}
            if isinstance(body, dict) and body.get("request_id") is not None:
                payload["request_id"] = body["request_id"]
            conn.send(wire.encode_frame(wire.Message(
                routing=wire.Routing(src=self.uuid, dst=conn.uuid, ttl=wire.DEFAULT_TTL, trace_id=routing.trace_id,
                                     src_l2_name=self.name),
                meta=wire.Meta(type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND_RESPONSE), payload=payload)))
            return
        try:
            body = msgspec.json.decode(env.payload)
        except msgspec.DecodeError:
            body = None
        subsystem = body.get("subsystem") if isinstance(body, dict) else None
        self._reply(conn, routing, wire.CONFIG_RESPONSE,
                    {"subsystem": subsystem, "hive": self.hive_id, "status": "error",
                     "error_code": trust.FORBIDDEN, "error_detail": detail})

    def _poll_claims(self) -> None:
        """Reload the claims directory when it changes; a bad one keeps the claims in force."""
        directory = self.settings.claims_dir
        if directory is None:
            return
        sig = trust.dir_signature(directory)
        if sig == self._claims_sig:
            return
        try:
            claims = trust.Claims(trust.load_claims_dir(directory))
        except trust.ClaimsError as err:
            self.counters.config_errors["claims"] += 1
            log.error("claims change refused; keeping the %d claims in force: %s", len(self.claims.by_name), err)
            self._claims_sig = sig
            return
        self._claims_sig = sig
        self.claims = claims
        self.counters.config_applied["claims"] += 1
        log.info("claims reloaded from %s: %d names", directory, len(claims.by_name))
        for conn in list(self.by_uuid.values()):
            verdict = claims.check(conn.base, conn.cred, conn.proof)
            if not verdict.ok:  # e.g. an undeclared node squatting a name the hive now declares
                self.counters.hello_refused[trust.NAME_CLAIMED] += 1
                conn.fail(wire.INVALID_HELLO, verdict.detail)
                continue
            if verdict.claimed != conn.claimed:
                self._tally(conn, -1)
                conn.claimed = verdict.claimed
                self._tally(conn, +1)
            conn.grants = verdict.grants

    def _register(self, conn: Conn) -> None:
        if conn.uuid is None:
            raise RuntimeError("bug: registering a connection before its HELLO")
        self.by_uuid[conn.uuid] = conn
        self._tally(conn, +1)
        self._fast_names.clear()
        self.by_name.setdefault(conn.name, _Names()).conns.append(conn)
        self.by_base.setdefault(conn.base, []).append(conn)
        self._shm_put(conn)

    def _unregister(self, conn: Conn) -> None:
        if conn.uuid is None or self.by_uuid.get(conn.uuid) is not conn:
            return
        del self.by_uuid[conn.uuid]
        self._tally(conn, -1)
        self._fast_names.clear()
        names = self.by_name.get(conn.name)
        if names is not None:
            with contextlib.suppress(ValueError):
                names.conns.remove(conn)
            if not names.conns:
                del self.by_name[conn.name]
        bases = self.by_base.get(conn.base)
        if bases is not None:
            with contextlib.suppress(ValueError):
                bases.remove(conn)
            if not bases:
                del self.by_base[conn.base]
        if self._nodes_shm is not None:
            self._nodes_shm.remove(conn.uuid)

    def _shm_put(self, conn: Conn) -> None:
        if self._nodes_shm is None or conn.uuid is None:
            return
        try:
            self._nodes_shm.put(shm.NodeRecord(conn.uuid, conn.name, conn.vpn_id, conn.connected_at_ms))
        except shm.ShmError as err:
            log.error("node table: cannot record %s: %s", conn.name, err)

    def on_disconnect(self, conn: Conn, reason: str, *, counted: bool = False) -> None:
        """Forget a node whose connection ended (``counted``: the caller has counted the reason)."""
        if conn.uuid is not None and self.by_uuid.get(conn.uuid) is conn:
            self._unregister(conn)
            if not counted:
                self.counters.disconnects[reason] += 1
            log.info("node %s (%s) disconnected (%s)", conn.name, conn.uuid, reason)

    # routing -----------------------------------------------------------
    def _allowed(self, src: Conn, dst: Conn, meta: wire.MetaView) -> bool:
        if src.vpn_id == dst.vpn_id:
            return True
        if meta.type == wire.TYPE_SYSTEM and meta.scope == "global":
            return True
        return is_system_name(src.base) or is_system_name(dst.base)

    def _deliver(self, src: Conn, dst: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
        if src.vpn_id != dst.vpn_id and not self._allowed(src, dst, meta):
            self._unreachable(src, env.routing, wire.VPN_BLOCKED,
                              f"{src.name} (vpn {src.vpn_id}) may not reach {dst.name} (vpn {dst.vpn_id})")
            return
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError as err:
            self._unreachable(src, env.routing, wire.FRAME_TOO_LARGE, str(err))
            return
        if dst.send(frame):
            self.counters.delivered += 1
            if dst is not src and (dst.congested_since is not None or dst.out_bytes >= self.settings.high_water):
                src.block(dst)
        else:
            self.counters.dropped[wire.DST_CONGESTED] += 1
            self._unreachable(src, env.routing, wire.DST_CONGESTED, f"{dst.name} is not reading; message dropped")

    def _pick(self, names: _Names) -> Conn:
        """Round-robin over live nodes with one name, skipping congested ones when possible."""
        conns = names.conns
        count = len(conns)
        start = names.cursor
        for i in range(count):
            conn = conns[(start + i) % count]
            if conn.congested_since is None:
                names.cursor = (start + i + 1) % count
                return conn
        names.cursor = (start + 1) % count
        return conns[start % count]

    def _resolve(self, dst: str) -> tuple[str, str, CompiledRoute | None]:
        """Full name, base name and deciding route of a destination string (cached per config)."""
        cached = self._dst_cache.get(dst)
        if cached is not None:
            return cached
        if dst.endswith("@*"):
            base = dst[:-2]
            full = f"{base}@{self.hive_id}"
        elif "@" in dst:
            full = dst
            base, _ = split_name(dst)
        else:
            full = f"{dst}@{self.hive_id}"
            base = dst
        cached = (full, base, self.table.route_for(full))
        if len(self._dst_cache) >= ROUTE_CACHE_LIMIT:
            self._dst_cache.clear()
        self._dst_cache[dst] = cached
        return cached

    def _route_name(self, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView, dst: str) -> None:
        routing = env.routing
        full, base, route = self._resolve(dst)
        if route is not None:
            spec = route.spec
            if spec.action is RouteAction.DROP:
                self.counters.dropped["ROUTE_DROP"] += 1
                return
            if spec.next_hop_hive and spec.next_hop_hive != self.hive_id:
                self._unreachable(src, routing, wire.WAN_UNAVAILABLE,
                                  f"route {spec.prefix!r} forwards to hive {spec.next_hop_hive!r}; "
                                  "this router has no inter-hive gateway")
                return
        names = self.by_name.get(full)
        if names is not None and names.conns:
            self._deliver(src, self._pick(names), env, meta)
            return
        if dst.endswith("@*"):
            candidates = self.by_base.get(base)
            if candidates:
                self._deliver(src, candidates[0], env, meta)
                return
        _, hive = split_name(full)
        if hive != self.hive_id:
            self._unreachable(src, routing, wire.WAN_UNAVAILABLE,
                              f"{full} is in hive {hive!r}; this router has no inter-hive gateway")
            return
        self._unreachable(src, routing, wire.NODE_NOT_FOUND, f"no node named {full} is connected")

    def _route_l3(self, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> bool:
        """Identity pre-resolve of ``dst: null`` (see :mod:`fluxbee.dataplane.router.l3`); True if routed."""
        decision = self.l3.resolve(meta.src_ilk, meta.dst_ilk)
        if decision is None:
            return False
        if decision.canonical_src_ilk is not None:
            env.meta = with_src_ilk(env.meta, decision.canonical_src_ilk)
        self._route_name(src, env, meta, decision.target)
        return True

    def _broadcast(self, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
        routing = env.routing
        trace_id = routing.trace_id
        if not wire.is_uuid(trace_id):
            self.counters.dropped["BROADCAST_TRACE_ID_NOT_UUID"] += 1
            self._unreachable(src, routing, wire.NODE_NOT_FOUND,
                              "a broadcast needs a UUID trace_id (the de-duplication key)")
            return
        if trace_id in self._seen_broadcasts:
            self.counters.dropped["BROADCAST_DUPLICATE"] += 1
            return
        self._seen_broadcasts[trace_id] = time.monotonic() + self.settings.dedupe_window_s
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError as err:
            self._unreachable(src, routing, wire.FRAME_TOO_LARGE, str(err))
            return
        pattern = meta.target or None
        self.counters.broadcasts += 1
        for conn in self.by_uuid.values():
            if conn is src:
                continue
            if pattern is not None:
                if "*" in pattern:
                    if not (fnmatchcase(conn.name, pattern) or fnmatchcase(conn.base, pattern)):
                        continue
                elif pattern not in (conn.name, conn.base):
                    continue
            if not self._allowed(src, conn, meta):
                continue
            if conn.send(frame):
                self.counters.delivered += 1
            else:
                self.counters.dropped[wire.DST_CONGESTED] += 1

    def _reply(self, conn: Conn, routing: wire.Routing, msg: str, payload: Any) -> None:
        """Answer ``conn``; an answer that outgrows a frame becomes UNREACHABLE ``FRAME_TOO_LARGE``.

        Without the fallback the error would escape ``data_received`` and asyncio would drop the
        asker's connection (and everything it had in flight) over a reply it never saw. No
        ``src_l2_name``: like the original, router-generated frames (ANNOUNCE, UNREACHABLE,
        TTL_EXCEEDED, PROTOCOL_ERROR) never carry it; ``routing.src`` is the router's UUID.
        """
        try:
            frame = wire.system_frame(self.uuid, conn.uuid, msg, payload, trace_id=routing.trace_id)
        except wire.FrameTooLargeError as err:
            log.error("%s to %s does not fit in a frame: %s", msg, conn.name, err)
            self._unreachable(conn, routing, wire.FRAME_TOO_LARGE, f"the {msg} answer does not fit in a frame: "
                                                                   f"{err.detail}")
            return
        conn.send(frame)

    def _unreachable(self, conn: Conn, routing: wire.Routing, reason: str, detail: str) -> None:
        self.counters.unreachable[reason] += 1
        self._reply(conn, routing, wire.UNREACHABLE,
                    wire.UnreachablePayload(original_dst=_dst_text(routing.dst), reason=reason, detail=detail))

    # system messages ---------------------------------------------------
    def _system(self, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> bool:
        """Handle system messages meant for the router; True if consumed."""
        msg = meta.msg
        routing = env.routing
        to_router = routing.dst in (self.uuid, self.name, self.settings.router_name)
        if msg == wire.WITHDRAW:
            self._unregister(conn)
            self.counters.disconnects["withdraw"] += 1
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
            return True
        if msg == wire.CONFIG_CHANGED:
            return self._config_changed(conn, env)
        if to_router and msg in (wire.ROUTER_STATUS_GET, wire.NODE_STATUS_GET):
            reply = wire.ROUTER_STATUS_GET_RESPONSE if msg == wire.ROUTER_STATUS_GET else wire.NODE_STATUS_GET_RESPONSE
            try:
                limit, cursor = _status_page_request(env.payload)
            except ValueError as err:
                self._reply(conn, routing, reply,
                            {"status": "error", "error_code": "INVALID_REQUEST", "error_detail": str(err)})
                return True
            self._reply(conn, routing, reply, self.status_page(limit, cursor))
            return True
        if to_router:
            self._unreachable(conn, routing, wire.NODE_NOT_FOUND, f"the router does not handle {msg}")
            return True
        return False

    def _config_changed(self, conn: Conn, env: wire.RawEnvelope) -> bool:
        try:
            payload = msgspec.json.decode(env.payload)
        except msgspec.DecodeError:
            payload = None
        if not isinstance(payload, dict) or payload.get("subsystem") not in ("routes", "vpn", "vpns"):
            return False  # for nodes: routed like any other message
        subsystem = payload["subsystem"]
        routing = env.routing
        response: dict[str, Any] = {"subsystem": subsystem, "hive": self.hive_id}
        try:
            if not trust.may_send(wire.CONFIG_CHANGED, conn.base, conn.claimed, conn.grants):
                raise _ConfigRefused(trust.FORBIDDEN, f"{conn.name} may not change the hive config")
            version = payload.get("version", 0)
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise _ConfigRefused("INVALID_PAYLOAD", "version must be a non-negative integer")
            section = "routes" if subsystem == "routes" else "vpns"
            last = getattr(self._section_versions, section)
            if version != 0 and version <= last:
                raise _ConfigRefused("STALE_VERSION", f"version {version} is not newer than {last}")
            config = payload.get("config")
            try:
                if section == "routes":
                    routes, vpns = parse_routes(config), list(self.table.vpn_specs)
                else:
                    routes, vpns = list(self.table.route_specs), parse_vpns(config)
            except ConfigError as err:
                raise _ConfigRefused("INVALID_CONFIG", str(err)) from err
            setattr(self._section_versions, section, version or last + 1)
            self.apply_config(routes, vpns, source="message")
            response.update(status="ok", version=getattr(self._section_versions, section),
                            config_version=self.config_version)
        except _ConfigRefused as refused:
            self.counters.config_errors["message"] += 1
            response.update(status="error", error_code=refused.code, error_detail=refused.detail)
        self._reply(conn, routing, wire.CONFIG_RESPONSE, response)
        if response["status"] == "ok":
            routing.src_l2_name = conn.name
            frame = wire.encode_frame(env)
            for other in self.by_uuid.values():
                if other is not conn:
                    other.send(frame)
        return True

    # config --------------------------------------------------------------
    def apply_config(self, routes: list[RouteSpec], vpns: list[VpnSpec], *, source: str) -> None:
        """Install a new config version atomically and re-VPN connected nodes live."""
        self.config_version += 1
        self.table = RouteTable.build(self.config_version, routes, vpns)
        self._dst_cache = {}
        self._fast_names.clear()
        for conn in self.by_uuid.values():
            vpn = self.table.vpn_for(conn.name)
            if vpn != conn.vpn_id:
                conn.vpn_id = vpn
                self._shm_put(conn)
        if self._config_shm is not None:
            self._config_shm.write(self.config_version, self.table.to_json())
        self.counters.config_applied[source] += 1
        self._persist()
        log.info("config version %d applied from %s: %d routes, %d vpn rules",
                 self.config_version, source, len(routes), len(vpns))

    def _state_path(self) -> Path:
        return self.settings.run_dir / "state" / f"{self.name}.config.json"

    def _persist(self) -> None:
        doc = {
            "saved_at": time.time(),
            "config_version": self.config_version,
            "section_versions": {"routes": self._section_versions.routes, "vpns": self._section_versions.vpns},
            "routes": [r.model_dump(mode="json") for r in self.table.route_specs],
            "vpns": [v.model_dump(mode="json") for v in self.table.vpn_specs],
        }
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # also if it was removed under a running router
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, path)
        except OSError as err:
            log.error("cannot persist the applied config to %s: %s; it is lost on restart", path, err)

    def _load_initial_config(self) -> None:
        """Config at start: the most recent of the config file and the last applied state."""
        routes: list[RouteSpec] = []
        vpns: list[VpnSpec] = []
        source = "default"
        file_mtime = -1.0
        path = self.settings.config_path
        if path is not None:
            try:
                doc = load_config_file(path)
            except ConfigError as err:
                raise RouterError(str(err)) from err
            self._check_hive(doc, path)
            routes, vpns, source = list(doc.routes), list(doc.vpns), "file"
            st = path.stat()
            file_mtime = st.st_mtime
            self._config_sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        state = self._state_path()
        if state.exists():
            try:
                saved = json.loads(state.read_text())
                # the version only grows, across restarts too, whichever config wins below
                self.config_version = max(self.config_version, int(saved.get("config_version", 0)))
                if float(saved.get("saved_at", 0)) >= file_mtime:
                    routes = parse_routes(saved.get("routes", []))
                    vpns = parse_vpns(saved.get("vpns", []))
                    versions = saved.get("section_versions", {})
                    self._section_versions = _SectionVersions(int(versions.get("routes", 0)),
                                                              int(versions.get("vpns", 0)))
                    source = "state"
            except (OSError, ValueError, ConfigError, TypeError, AttributeError) as err:
                log.error("ignoring unreadable saved config %s: %s", state, err)
        self.apply_config(routes, vpns, source=source)

    def _check_hive(self, doc: HiveConfigDoc, path: Path) -> None:
        if doc.hive_id is not None and doc.hive_id != self.hive_id:
            raise ConfigError(f"{path}: hive_id {doc.hive_id!r} does not match this router's {self.hive_id!r}")

    def _poll_config(self) -> None:
        path = self.settings.config_path
        if path is None:
            return
        try:
            st = path.stat()
        except OSError:
            return  # a ConfigMap swap in progress, or removed: keep the current config
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._config_sig:
            return
        self._config_sig = sig
        try:
            doc = load_config_file(path)
            self._check_hive(doc, path)
        except ConfigError as err:
            self.counters.config_errors["file"] += 1
            log.error("config file change refused; keeping version %d: %s", self.config_version, err)
            return
        self._section_versions = _SectionVersions()
        self.apply_config(list(doc.routes), list(doc.vpns), source="file")

    # status --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The whole snapshot, every node included (HTTP ``/status``, which has no frame limit)."""
        return self._status_head([self._node_entry(c) for c in self.by_uuid.values()])

    def status_page(self, limit: int | None, cursor: str | None) -> dict[str, Any]:
        """The snapshot as a frame-sized page of nodes, for ROUTER_STATUS_GET / NODE_STATUS_GET.

        Nodes come in UUID order after ``cursor`` (the last UUID of the previous page), at most
        ``limit`` of them and no more than fit in :data:`wire.PAYLOAD_BUDGET` once encoded — a count
        alone cannot bound the size, names are up to 256 bytes.  ``next_cursor`` is None on the last
        page; ``node_count`` is the total.  UUID order keeps paging stable while nodes come and go:
        a node connected throughout is listed exactly once.  Every page repeats the rest of the
        snapshot (router, config, counters), so an asker that stops after one page still has it.
        """
        head = self._status_head([])
        head["node_count"] = len(self.by_uuid)
        head["next_cursor"] = None
        used = len(wire.encode(head)) + 40  # + the cursor, a quoted UUID, if there is a next page
        budget = wire.PAYLOAD_BUDGET
        order = sorted(self.by_uuid)
        start = bisect.bisect_right(order, cursor) if cursor is not None else 0
        page: list[dict[str, Any]] = []
        for node_uuid in order[start:]:
            if limit is not None and len(page) >= limit:
                break
            entry = self._node_entry(self.by_uuid[node_uuid])
            size = len(wire.encode(entry)) + 1
            if page and used + size > budget:
                break
            used += size
            page.append(entry)
        if page and start + len(page) < len(order):
            head["next_cursor"] = page[-1]["uuid"]
        head["nodes"] = page
        return head

    @staticmethod
    def _node_entry(c: Conn) -> dict[str, Any]:
        return {"uuid": c.uuid, "name": c.name, "vpn_id": c.vpn_id, "connected_at_ms": c.connected_at_ms,
                "congested": c.congested_since is not None,
                "peer": None if c.cred is None else {"pid": c.cred.pid, "uid": c.cred.uid, "gid": c.cred.gid},
                "claimed": c.claimed, "replacements": c.replacements, "takeovers_refused": c.takeovers_refused,
                "flapping": c.holds_uuid}

    def _status_head(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "router": {"uuid": self.uuid, "name": self.name, "hive_id": self.hive_id,
                       "socket": str(self.socket_path), "pid": os.getpid(),
                       "uptime_s": round(time.time() - self._started_at, 3),
                       "fast_path": fastpath.IMPLEMENTATION, "scheduling": scheduling.current(),
                       "allocator": alloc.state()},
            "config_version": self.config_version,
            "nodes": nodes,
            "trust": {"claims_dir": None if self.settings.claims_dir is None else str(self.settings.claims_dir),
                      "claimed_names": len(self.claims.by_name),  # a count: the head repeats on every status page
                      "limits": {"max_nodes": self.settings.max_nodes,
                                 "claimed_reserve": self.settings.claimed_reserve,
                                 "max_unclaimed_per_uid": self.settings.max_unclaimed_per_uid,
                                 "max_unclaimed_per_pid": self.settings.max_unclaimed_per_pid,
                                 "max_pending_per_uid": self.settings.max_pending_per_uid,
                                 "takeover_window_s": self.settings.takeover_window_s,
                                 "takeover_limit": self.settings.takeover_limit}},
            "routes": [r.model_dump(mode="json") for r in self.table.route_specs],
            "vpns": [v.model_dump(mode="json") for v in self.table.vpn_specs],
            "counters": {**self.counters.snapshot(), "producer_pauses": self.paused_producers},
            "l3": self.l3.snapshot(),
        }

    def prometheus(self) -> str:
        return self.counters.prometheus({
            "nodes": len(self.by_uuid),
            "config_version": self.config_version,
            "congested_nodes": sum(1 for c in self.by_uuid.values() if c.congested_since is not None),
            "producer_pauses": self.paused_producers,
            "rss_bytes": _rss_bytes(),
        }) + self.l3.prometheus()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 responder for probes and scraping (GET only)."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, target = (line[0], line[1]) if len(line) >= 2 else ("", "")
            path = target.split("?", 1)[0]
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            if method != "GET":
                status, body = "405 Method Not Allowed", b"GET only\n"
            elif path == "/healthz":
                status, body = "200 OK", b"ok\n"
            elif path == "/readyz":
                ok = self.ready.is_set() and not self._stopped.is_set()
                status, body = ("200 OK", b"ready\n") if ok else ("503 Service Unavailable", b"not ready\n")
            elif path == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", self.prometheus().encode()
            elif path == "/status":
                status, ctype, body = "200 OK", "application/json", json.dumps(self.status()).encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class _ConfigRefused(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _status_page_request(raw: msgspec.Raw | bytes) -> tuple[int | None, str | None]:
    """``(limit, cursor)`` from a status request's payload: null, ``{}`` or ``{limit?, cursor?}``.

    Other keys are ignored (the original SDKs send their own); a bad limit or cursor is a ValueError.
    """
    try:
        body = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError as err:
        raise ValueError(f"the payload is not JSON: {err}") from None
    if body is None:
        return None, None
    if not isinstance(body, dict):
        raise ValueError("the payload must be null or an object with `limit` and `cursor`")
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    cursor = body.get("cursor")
    if cursor is not None:
        if not isinstance(cursor, str) or not wire.is_uuid(cursor):
            raise ValueError(f"cursor must be the next_cursor of a previous page, not {cursor!r}")
        cursor = wire.canonical_uuid(cursor)
    return limit, cursor


def _dst_text(dst: str | None) -> str:
    return "null" if dst is None else dst


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_PEERCRED = struct.Struct("3i")


def _peer_cred(transport: asyncio.BaseTransport) -> trust.PeerCred | None:
    """``SO_PEERCRED`` of a Unix-socket connection (None where the kernel cannot say)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (OSError, AttributeError, struct.error):
        return None
    return trust.PeerCred(pid, uid, gid)


def _who(conn: Conn) -> str:
    cred = conn.cred
    return "pid ?" if cred is None else f"pid {cred.pid} uid {cred.uid}"


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _secure(path: Path, mode: int, group: int) -> None:
    """Owner + hive group, nothing for others: the socket dir and socket are never world-writable."""
    try:
        if os.stat(path).st_gid != group:
            os.chown(path, -1, group)
        os.chmod(path, mode)
    except OSError as err:
        raise RouterError(f"cannot give {path} mode {mode:o} and group {group}: {err.strerror}") from err


def _socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def _load_or_create_uuid(settings: RouterSettings) -> str:
    """The router's UUID persists in ``state/`` so nodes and tools see a stable socket name."""
    path = settings.run_dir / "state" / f"{settings.router_name}@{settings.hive_id}.uuid"
    try:
        return wire.canonical_uuid(path.read_text().strip())
    except (OSError, ValueError):
        pass
    value = str(uuid_mod.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return value


async def run_router(settings: RouterSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly (in the scheduling class ``settings`` asks for)."""
    scheduling.apply(settings.scheduling)
    alloc.tune()
    router = Router(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await router.start()
    try:
        await stop.wait()
    finally:
        await router.stop()
