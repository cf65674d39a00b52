"""The hive router: one asyncio process that moves frames between node sockets.

This module wires the parts together and runs them: it accepts connections
(:mod:`~fluxbee.dataplane.router.connection`: backpressure and output batching), hands each read to
the hot loop (:mod:`~fluxbee.dataplane.router.fastroute`), which delivers the plain frames and passes
every other one to the general path (:mod:`~fluxbee.dataplane.router.dispatch`). Both ask the same
registry (:mod:`~fluxbee.dataplane.router.registry`: nodes by UUID and name, round robin, the route
table and VPNs), and every rule is written once, in :mod:`~fluxbee.dataplane.router.decide`. The
handshake is in :mod:`~fluxbee.dataplane.router.handshake`, the system messages the router answers
itself in :mod:`~fluxbee.dataplane.router.control`, the config state in
:mod:`~fluxbee.dataplane.router.config_state`, the snapshot in :mod:`~fluxbee.dataplane.router.status`,
the probes in :mod:`~fluxbee.dataplane.router.probes`, and the links to other routers (mesh and WAN:
:mod:`fluxbee.dataplane.link`, put into the router by :mod:`~fluxbee.dataplane.router.links`).
Here: start and stop, the periodic tasks (shared-memory heartbeats, broadcast de-duplication expiry,
cutting off slow consumers, config and claims polling), and putting nodes into and out of the
registry and the node-table region.

Decisions the original left open, as this router makes them (the rules in ``decide``, the
mechanics in ``connection`` and ``handshake``):

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
  delivery does not decrement (as in the original); every hop to another
  router needs ``ttl > 1`` and sends ``ttl - 1``.
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
from typing import TYPE_CHECKING

from fluxbee.dataplane import alloc, fastpath, shm, wire
from fluxbee.dataplane.link.settings import LinkConfigError
from fluxbee.dataplane.names import ROUTER_PREFIX, hive_id_problem
from fluxbee.dataplane.router import config_state, dispatch, handshake, scheduling, trust
from fluxbee.dataplane.router.busypoll import BusyPoll
from fluxbee.dataplane.router.config_state import SectionVersions
from fluxbee.dataplane.router.connection import Batched, Conn
from fluxbee.dataplane.router.counters import Counters
from fluxbee.dataplane.router.fastroute import FastPath
from fluxbee.dataplane.router.l3 import L3Resolver
from fluxbee.dataplane.router.policy import PolicyRuntime
from fluxbee.dataplane.router.policy_dir import PolicyDirLoader
from fluxbee.dataplane.router.registry import Registry
from fluxbee.dataplane.router.settings import RouterError, RouterSettings
from fluxbee.models.routing import RouteSpec, VpnSpec

__all__ = ["Conn", "Router", "RouterError", "RouterSettings", "run_router"]

if TYPE_CHECKING:
    from aiohttp import web

    from fluxbee.dataplane.router.links import RouterLinks

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107


class Router:
    """One hive router: its state, its parts, and their lifecycle (see the module docstring)."""

    def __init__(self, settings: RouterSettings, router_uuid: str | None = None) -> None:
        if (problem := hive_id_problem(settings.hive_id)) is not None:
            raise RouterError(problem)
        if not settings.router_name.startswith(ROUTER_PREFIX) or "@" in settings.router_name:
            raise RouterError(f"router name {settings.router_name!r} must be an RT.* name without @hive")
        self.settings = settings
        self.hive_id = settings.hive_id
        self.uuid = router_uuid or _load_or_create_uuid(settings)
        self.name = f"{settings.router_name}@{settings.hive_id}"
        self.socket_path = settings.run_dir / "routers" / f"{uuid_mod.UUID(self.uuid).hex}.sock"
        self.counters = Counters()
        self.registry: Registry[Conn] = Registry(settings.hive_id)
        self.config_version = 0
        self.section_versions = SectionVersions()
        self.config_sig: tuple[int, int, int] | None = None
        self.seen_broadcasts: dict[str, float] = {}  # broadcast trace id -> when it may be seen again
        self.l3 = L3Resolver(settings.hive_id, settings.identity_frontdesk, run_dir=settings.run_dir)
        self.claims = trust.Claims.empty()
        self.claims_sig: object = None
        self.pending_by_uid: collections.Counter[int] = collections.Counter()
        self.unclaimed_by_uid: collections.Counter[int] = collections.Counter()
        self.unclaimed_by_pid: collections.Counter[int] = collections.Counter()
        # Output batching (Conn.send / Conn.process): connections with frames queued in this read.
        self.batching = False
        self.dirty: list[Batched] = []
        self.busy_poll: BusyPoll | None = None  # made in start(), when the loop runs
        self.paused_producers = 0
        self.fast_path = FastPath(self)
        self.route_frames: Callable[[Conn, list[bytes]], None] = self.fast_path.route
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._probes: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes_shm: shm.NodeTableWriter | None = None
        self._config_shm: shm.ConfigRegionWriter | None = None
        self.policy = PolicyRuntime(self)
        self.policy_dir = PolicyDirLoader(self, settings.policy_dir) if settings.policy_dir is not None else None
        self.links: RouterLinks | None = None
        if settings.links.enabled:
            # Imported only when links are configured: the link manager, its TLS sessions and the
            # certificate code (the `cryptography` package) are about 13 MB of a router's RSS, and a
            # router without links never uses them.
            from fluxbee.dataplane.router.links import RouterLinks

            try:
                self.links = RouterLinks(self)
            except LinkConfigError as err:
                raise RouterError(f"links: {err}") from err

    # lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.busy_poll_us > 0:
            self.busy_poll = BusyPoll(asyncio.get_running_loop(), s.busy_poll_us)
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
        if self.links is not None:
            try:
                await self.links.manager.start()
            except LinkConfigError as err:
                if self._server is not None:
                    self._server.close()
                if self._probes is not None:
                    await self._probes.cleanup()
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._close_shm()
                raise RouterError(f"links: {err}") from err
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
        await self.policy.close()
        if self.policy_dir is not None:
            self.policy_dir.close()
        if self.links is not None:
            await self.links.manager.stop()
        if self._server is not None:
            self._server.close()
        if self._probes is not None:
            await self._probes.cleanup()
        for conn in list(self.registry.nodes()):
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
        if self.policy_dir is not None:
            self.policy_dir.heartbeat()

    def policy_changed(self) -> None:
        """A new policy (or identity data) runs: the fast path forgets which metas it may take."""
        self.fast_path.forget_metas()

    def _housekeeping(self) -> None:
        if self.policy_dir is not None:
            self.policy_dir.poll()
        self.policy.tick()
        now = time.monotonic()
        seen = self.seen_broadcasts
        if seen:
            expired = [k for k, t in seen.items() if t < now]
            for key in expired:
                del seen[key]
        limit = self.settings.slow_consumer_timeout_s
        for conn in list(self.registry.nodes()):
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
        if self.busy_poll is not None:
            self.busy_poll.kick()

    def on_frame(self, conn: Conn, body: bytes) -> None:
        """The general path for one frame (HELLO included): :func:`dispatch.on_frame`."""
        dispatch.on_frame(self, conn, body)

    # nodes ---------------------------------------------------------------
    def admit_pending(self, conn: Conn) -> bool:
        """Count a fresh connection against its uid's pre-HELLO allowance; close it if over."""
        return handshake.admit_pending(self, conn)

    def end_pending(self, conn: Conn) -> None:
        handshake.end_pending(self, conn)

    def register(self, conn: Conn) -> None:
        """Put a connection whose HELLO was accepted into the registry (its VPN set) and the node table."""
        if conn.uuid is None:
            raise RuntimeError("bug: registering a connection before its HELLO")
        self.registry.add(conn.uuid, conn)
        handshake.tally(self, conn, +1)
        self.shm_put(conn)
        if self.links is not None:
            self.links.manager.nodes_changed()

    def unregister(self, conn: Conn) -> None:
        if conn.uuid is None or not self.registry.remove(conn.uuid, conn):
            return
        handshake.tally(self, conn, -1)
        if self._nodes_shm is not None:
            self._nodes_shm.remove(conn.uuid)
        if self.links is not None:
            self.links.manager.nodes_changed()

    def shm_put(self, conn: Conn) -> None:
        """Write a node's record (UUID, name, VPN, since when) into the node-table region."""
        if self._nodes_shm is None or conn.uuid is None:
            return
        try:
            self._nodes_shm.put(shm.NodeRecord(conn.uuid, conn.name, conn.vpn_id, conn.connected_at_ms))
        except shm.ShmError as err:
            log.error("node table: cannot record %s: %s", conn.name, err)

    def on_disconnect(self, conn: Conn, reason: str, *, counted: bool = False) -> None:
        """Forget a node whose connection ended (``counted``: the caller has counted the reason)."""
        if conn.uuid is not None and self.registry.get(conn.uuid) is conn:
            self.unregister(conn)
            if not counted:
                self.counters.disconnects[reason] += 1
            log.info("node %s (%s) disconnected (%s)", conn.name, conn.uuid, reason)

    # config --------------------------------------------------------------
    def apply_config(self, routes: list[RouteSpec], vpns: list[VpnSpec], *, source: str) -> None:
        """Install a new config version atomically and re-VPN connected nodes live."""
        config_state.apply_config(self, routes, vpns, source=source)

    def _poll_config(self) -> None:
        config_state.poll_config(self)

    def _poll_claims(self) -> None:
        config_state.poll_claims(self)

    def publish_config(self) -> None:
        """Write the config in force into the config region (for readers outside the router)."""
        if self._config_shm is not None:
            self._config_shm.write(self.config_version, self.registry.table.to_json())


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
