"""The hive router: one asyncio process that moves frames between node sockets.

The rules live in :mod:`fluxbee.dataplane.router.decide`, which returns a
decision (deliver, refuse with reason and detail, drop, fan out) from the
registry kept here (nodes by UUID, by full name, by base name), the route
table, VPNs and L3; this module carries decisions out.  The general path
(:meth:`Router.on_frame`) decodes ``routing`` and the few meta fields it
decides on; ``meta`` and ``payload`` stay raw bytes and are written out
unchanged (see :mod:`fluxbee.dataplane.wire`).  The fast path
(:meth:`Router.route_frames`) takes only the case whose decision is a plain
delivery (a user message to a connected UUID, or to a name no route decides,
in the sender's VPN, with room) without decoding, and hands every other frame
to the general path.  **A new rule goes into ``decide``; if it can change the
outcome of that plain case, the fast path must step aside for it** — and the
rule gets a case in ``tests/unit/test_router_fastpath.py``, which checks that
both paths agree.  Per-name route decisions are memoised until the config or
the connected nodes change.  Connections and backpressure are in
:mod:`~fluxbee.dataplane.router.connection`, the system messages the router
answers itself in :mod:`~fluxbee.dataplane.router.control`, the config state in
:mod:`~fluxbee.dataplane.router.config_state`, the probes in
:mod:`~fluxbee.dataplane.router.probes`.

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
import collections
import contextlib
import logging
import os
import signal
import socket
import time
import uuid as uuid_mod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fluxbee.dataplane import alloc, fastpath, shm, wire
from fluxbee.dataplane.router import config_state, control, decide, handshake, scheduling, trust
from fluxbee.dataplane.router import status as _status
from fluxbee.dataplane.router.config import (
    ROUTE_CACHE_LIMIT,
    CompiledRoute,
    RouteTable,
)
from fluxbee.dataplane.router.config_state import SectionVersions
from fluxbee.dataplane.router.connection import Conn
from fluxbee.dataplane.router.counters import Counters
from fluxbee.dataplane.router.decide import Names, pick
from fluxbee.dataplane.router.l3 import L3Resolver, with_src_ilk
from fluxbee.dataplane.router.settings import RouterError, RouterSettings
from fluxbee.models import RouteSpec, VpnSpec
from fluxbee.models.resources import HIVE_ID_RE

__all__ = ["Conn", "Router", "RouterError", "RouterSettings", "run_router"]

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

# Hot path: the wire module's codecs, without the error-translating wrappers.
_decode_raw = wire.raw_decoder.decode
_decode_meta = wire.meta_decoder.decode
META_CACHE_BYTES = 512
"""Metas up to this size are memoised (decoded once per distinct byte string)."""
META_CACHE_ENTRIES = 4096
"""The memo is emptied when it reaches this many distinct metas."""

MAX_SOCKET_PATH = 107


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
        self.by_name: dict[str, Names[Conn]] = {}
        self.by_base: dict[str, list[Conn]] = {}
        self.table = RouteTable.build(0, (), ())
        self._dst_cache: dict[str, tuple[str, str, CompiledRoute | None]] = {}
        self._fast_names: dict[str, Names[Conn]] = {}  # fast path: destination -> live nodes; emptied on any change
        self._meta_cache: dict[bytes, wire.MetaView] = {}
        self.config_version = 0
        self.section_versions = SectionVersions()
        self._seen_broadcasts: dict[str, float] = {}
        self.config_sig: tuple[int, int, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._probes: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes_shm: shm.NodeTableWriter | None = None
        self._config_shm: shm.ConfigRegionWriter | None = None
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self.batching = False
        self.dirty: list[Conn] = []
        self.paused_producers = 0
        self.stopped = asyncio.Event()
        self.l3 = L3Resolver(settings.hive_id, settings.identity_frontdesk, run_dir=settings.run_dir)
        self.claims = trust.Claims.empty()
        self.claims_sig: object = None
        self.pending_by_uid: collections.Counter[int] = collections.Counter()
        self.unclaimed_by_uid: collections.Counter[int] = collections.Counter()
        self.unclaimed_by_pid: collections.Counter[int] = collections.Counter()

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
            self.claims_sig = trust.dir_signature(s.claims_dir)
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
            config_state.load_initial_config(self)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: Conn(self), path=str(path), backlog=1024)
            _secure(path, 0o660, group)
            if s.metrics_addr is not None:
                host, port = s.metrics_addr
                # Imported only when probes are served: aiohttp's web server is a large share of a
                # router's RSS, and a router without --metrics-addr has no use for it.
                from fluxbee.dataplane.router import probes

                try:
                    self._probes = await probes.start(self, host, port)
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
        if self.stopped.is_set():
            return
        self.stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        if self._probes is not None:
            await self._probes.cleanup()
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
                        target = pick(names)
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

    def _fast_name(self, dst: str) -> Names[Conn] | None:
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
            handshake.hello(self, conn, body)
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
            self.unreachable(conn, routing, wire.SRC_MISMATCH,
                              f"routing.src {routing.src!r} is not this connection's node")
            return
        if meta.msg in trust.PRIVILEGED and not trust.may_send(meta.msg, conn.base, conn.claimed, conn.grants):
            control.refuse_privileged(self, conn, env, meta.msg)
            return
        if meta.type == wire.TYPE_SYSTEM and meta.msg is not None and control.handle_system(self, conn, env, meta):
            return
        if routing.ttl == 0:
            self.counters.ttl_exceeded += 1
            self.reply(conn, routing, wire.TTL_EXCEEDED,
                        wire.TtlExceededPayload(original_dst=_dst_text(routing.dst), last_hop=f"router:{self.uuid}"))
            return
        routing.src_l2_name = conn.name
        dst = routing.dst
        if dst is None:
            if self._route_l3(conn, env, meta):
                return
            self.unreachable(conn, routing, wire.OPA_ERROR, "no routing policy is loaded for dst=null")
            return
        if dst == wire.BROADCAST:
            self._broadcast(conn, env, meta)
            return
        target = self.by_uuid.get(dst)
        if target is not None:
            self._deliver(conn, target, env, meta)
            return
        if wire.is_uuid(dst):
            found = decide.by_uuid(dst, self.by_uuid)
            if isinstance(found, decide.Refuse):
                self._refuse(conn, routing, found)
            else:
                self._deliver(conn, found, env, meta)
            return
        self._route_name(conn, env, meta, dst)

    # handshake (handshake.py) -------------------------------------------
    def admit_pending(self, conn: Conn) -> bool:
        """Count a fresh connection against its uid's pre-HELLO allowance; close it if over."""
        return handshake.admit_pending(self, conn)

    def end_pending(self, conn: Conn) -> None:
        handshake.end_pending(self, conn)

    def register(self, conn: Conn) -> None:
        if conn.uuid is None:
            raise RuntimeError("bug: registering a connection before its HELLO")
        self.by_uuid[conn.uuid] = conn
        handshake.tally(self, conn, +1)
        self._fast_names.clear()
        self.by_name.setdefault(conn.name, Names[Conn]()).conns.append(conn)
        self.by_base.setdefault(conn.base, []).append(conn)
        self.shm_put(conn)

    def unregister(self, conn: Conn) -> None:
        if conn.uuid is None or self.by_uuid.get(conn.uuid) is not conn:
            return
        del self.by_uuid[conn.uuid]
        handshake.tally(self, conn, -1)
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

    def shm_put(self, conn: Conn) -> None:
        if self._nodes_shm is None or conn.uuid is None:
            return
        try:
            self._nodes_shm.put(shm.NodeRecord(conn.uuid, conn.name, conn.vpn_id, conn.connected_at_ms))
        except shm.ShmError as err:
            log.error("node table: cannot record %s: %s", conn.name, err)

    def on_disconnect(self, conn: Conn, reason: str, *, counted: bool = False) -> None:
        """Forget a node whose connection ended (``counted``: the caller has counted the reason)."""
        if conn.uuid is not None and self.by_uuid.get(conn.uuid) is conn:
            self.unregister(conn)
            if not counted:
                self.counters.disconnects[reason] += 1
            log.info("node %s (%s) disconnected (%s)", conn.name, conn.uuid, reason)

    # routing: decisions in decide.py, carried out here ----------------------------
    def _deliver(self, src: Conn, dst: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
        if src.vpn_id != dst.vpn_id:
            decision = decide.unicast(src, dst, meta)
            if isinstance(decision, decide.Refuse):
                self.unreachable(src, env.routing, decision.reason, decision.detail)
                return
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError as err:
            self.unreachable(src, env.routing, wire.FRAME_TOO_LARGE, str(err))
            return
        if dst.send(frame):
            self.counters.delivered += 1
            if dst is not src and (dst.congested_since is not None or dst.out_bytes >= self.settings.high_water):
                src.block(dst)
        else:
            self.counters.dropped[wire.DST_CONGESTED] += 1
            self.unreachable(src, env.routing, wire.DST_CONGESTED, f"{dst.name} is not reading; message dropped")

    def _refuse(self, src: Conn, routing: wire.Routing, decision: decide.Refuse | decide.Drop) -> None:
        if isinstance(decision, decide.Drop):
            self.counters.dropped[decision.counter] += 1
            return
        if decision.dropped is not None:
            self.counters.dropped[decision.dropped] += 1
        self.unreachable(src, routing, decision.reason, decision.detail)

    def _resolve(self, dst: str) -> tuple[str, str, CompiledRoute | None]:
        """Full name, base name and deciding route of a destination string (cached per config)."""
        cached = self._dst_cache.get(dst)
        if cached is not None:
            return cached
        full, base = decide.full_name(dst, self.hive_id)
        cached = (full, base, self.table.route_for(full))
        if len(self._dst_cache) >= ROUTE_CACHE_LIMIT:
            self._dst_cache.clear()
        self._dst_cache[dst] = cached
        return cached

    def _route_name(self, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView, dst: str) -> None:
        full, base, route = self._resolve(dst)
        target = decide.by_name(dst, full, base, route, self.hive_id, self.by_name, self.by_base)
        if isinstance(target, decide.Refuse | decide.Drop):
            self._refuse(src, env.routing, target)
        else:
            self._deliver(src, target, env, meta)

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
        refused = decide.broadcast(routing.trace_id, self._seen_broadcasts)
        if refused is not None:
            self._refuse(src, routing, refused)
            return
        self._seen_broadcasts[routing.trace_id] = time.monotonic() + self.settings.dedupe_window_s
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError as err:
            self.unreachable(src, routing, wire.FRAME_TOO_LARGE, str(err))
            return
        self.counters.broadcasts += 1
        for conn in decide.fan_out(src, self.by_uuid.values(), meta):
            if conn.send(frame):
                self.counters.delivered += 1
            else:
                self.counters.dropped[wire.DST_CONGESTED] += 1

    def reply(self, conn: Conn, routing: wire.Routing, msg: str, payload: Any) -> None:
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
            self.unreachable(conn, routing, wire.FRAME_TOO_LARGE, f"the {msg} answer does not fit in a frame: "
                                                                   f"{err.detail}")
            return
        conn.send(frame)

    def unreachable(self, conn: Conn, routing: wire.Routing, reason: str, detail: str) -> None:
        self.counters.unreachable[reason] += 1
        self.reply(conn, routing, wire.UNREACHABLE,
                    wire.UnreachablePayload(original_dst=_dst_text(routing.dst), reason=reason, detail=detail))

    # config --------------------------------------------------------------
    def apply_config(self, routes: list[RouteSpec], vpns: list[VpnSpec], *, source: str) -> None:
        """Install a new config version atomically and re-VPN connected nodes live."""
        config_state.apply_config(self, routes, vpns, source=source)

    def _poll_config(self) -> None:
        config_state.poll_config(self)

    def _poll_claims(self) -> None:
        config_state.poll_claims(self)

    # status --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The whole snapshot, every node included (HTTP ``/status``, which has no frame limit)."""
        return _status.snapshot(self)

    def status_page(self, limit: int | None, cursor: str | None) -> dict[str, Any]:
        """The snapshot as a frame-sized page of nodes (:func:`status.status_page`)."""
        return _status.status_page(self, limit, cursor)

    def prometheus(self) -> str:
        return _status.prometheus(self)


def _dst_text(dst: str | None) -> str:
    return "null" if dst is None else dst


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
