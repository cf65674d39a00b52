"""A router's links: listeners, uplinks with backoff, mesh peers, adverts, source binding, status.

The manager owns the sessions (:mod:`~fluxbee.dataplane.link.session`) and the path-vector table
(:mod:`~fluxbee.dataplane.link.table`); the router owns the manager and is told about frames that
pass the source binding (:meth:`LinkRouter.link_frame`) and about topology changes.  Adverts are
computed from the table (:meth:`LinkTable.desired`) and sent as the difference from what each
session was last told, at most once per :data:`ADVERT_DELAY` — so bursts of node churn cost one
advert, and a new session receives everything (the resync).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as p
from fluxbee.dataplane.link.session import LinkSession, client_context, server_context
from fluxbee.dataplane.link.settings import LinkConfigError, LinkSettings, format_address, parse_address
from fluxbee.dataplane.link.table import Learned, LinkTable, diff
from fluxbee.dataplane.link.tls import TlsChannel

log = logging.getLogger(__name__)

ADVERT_DELAY = 0.05
"""Seconds adverts are held after a change, so a burst of changes goes out as one."""
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class LinkRouter(Protocol):
    """What the manager needs from the router that owns it."""

    def local_nodes(self) -> Iterable[p.NodeAd]: ...

    def is_local_uuid(self, uuid: str) -> bool: ...

    def link_frame(self, session: LinkSession, env: wire.RawEnvelope, meta: wire.MetaView, src: p.NodeAd) -> None: ...

    def links_changed(self) -> None: ...

    def read_done(self) -> None: ...

    def fast_frames(self, session: LinkSession, frames: list[bytes], start: int) -> int: ...

    def forget_senders(self) -> None: ...


class LinkManager:
    """See the module docstring."""

    def __init__(self, settings: LinkSettings, router: LinkRouter, *, hive_id: str, router_id: str,
                 router_name: str, state_path: Path | None) -> None:
        settings.check()
        self.settings = settings
        self.router = router
        self.hive_id = hive_id
        self.router_id = router_id
        self.router_name = router_name
        self.state_path = state_path
        self.table = LinkTable(hive_id)
        self.sessions: dict[int, LinkSession] = {}  # every session not yet down
        self.recent: collections.deque[LinkSession] = collections.deque(maxlen=32)  # down ones, for status
        self.sent: dict[int, dict[str, Learned]] = {}
        self._versions = itertools.count(1)
        self._seqs: dict[int, itertools.count[int]] = {}
        self.drops: dict[str, collections.Counter[str]] = {"wan": collections.Counter(), "mesh": collections.Counter()}
        self._drop_logged: dict[str, float] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._dialers: dict[tuple[str, str], asyncio.Task[None]] = {}  # (role, address) -> dial loop
        self._address_hive: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._advert_timer: asyncio.TimerHandle | None = None
        self.dynamic_uplinks: list[str] = []
        self.refused_hives: set[str] = set()
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self._stopping = False
        self._self_addresses: set[str] = set()

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.insecure_dev:
            log.warning("LINKS ARE PLAINTEXT (--link-insecure-dev): peers are believed on their word and traffic is "
                        "readable on the network; never use this outside development")
        else:
            try:
                self._server_ctx = server_context(str(s.cert), str(s.key), str(s.ca_cert))
                self._client_ctx = client_context(str(s.cert), str(s.key), str(s.ca_cert))
            except (ssl.SSLError, OSError, ValueError) as err:
                raise LinkConfigError(f"cannot load the link certificate/key/CA: {err}") from err
        self._load_state()
        loop = asyncio.get_running_loop()
        listens: tuple[tuple[p.Role, tuple[str, int] | None], ...] = (("wan", s.wan_listen), ("mesh", s.mesh_listen))
        for role, addr in listens:
            if addr is None:
                continue
            try:
                server = await loop.create_server(functools.partial(self._accept, role), addr[0], addr[1],
                                                  reuse_address=True)
            except OSError as err:
                await self.stop()
                raise LinkConfigError(f"cannot listen for {role} links on {format_address(addr)}: "
                                      f"{err.strerror}") from err
            self._servers.append(server)
            log.info("listening for %s links on %s (%s)", role, format_address(addr),
                     "PLAINTEXT" if s.insecure_dev else "mutual TLS 1.3")
        for addr in s.uplinks:
            self._dial("wan", format_address(addr))
        for address in self.dynamic_uplinks:
            self._dial("wan", address)
        for addr in s.mesh_peers:
            self._dial("mesh", format_address(addr))
        if s.mesh_dns is not None:
            self._tasks.append(asyncio.create_task(self._mesh_dns_loop(), name="link-mesh-dns"))

    async def stop(self) -> None:
        self._stopping = True
        if self._advert_timer is not None:
            self._advert_timer.cancel()
        tasks = [*self._dialers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dialers.clear()
        for server in self._servers:
            server.close()
        for session in list(self.sessions.values()):
            session.close("SHUTDOWN", "the router is stopping", tell=False)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    def _accept(self, role: p.Role) -> asyncio.Protocol:
        # Not listed until its TLS handshake succeeds (session_started): the TLS channel tells the
        # session nothing before that, so a failed attempt leaves nothing behind.
        session = LinkSession(self, role, "in", "?", secure=self._server_ctx is not None)
        if self._server_ctx is None:
            return session
        return TlsChannel(self._server_ctx, server_side=True, app=session,
                          handshake_timeout=self.settings.dead_interval_s)

    def session_started(self, session: LinkSession) -> None:
        self.sessions[session.sid] = session

    def _dial(self, role: p.Role, address: str) -> None:
        if address in self._self_addresses:
            return
        key = (role, address)
        if key in self._dialers and not self._dialers[key].done():
            return
        self._dialers[key] = asyncio.create_task(self._dial_loop(role, address), name=f"link-dial-{role}-{address}")

    async def _dial_loop(self, role: p.Role, address: str) -> None:
        """Dial ``address`` for ever: after a link ends, or a dial fails, wait (0.5 s doubling to 30 s,
        back to 0.5 s once a link has been up) and dial again."""
        host, port = parse_address(address)
        delay = BACKOFF_FIRST_S
        loop = asyncio.get_running_loop()
        while True:
            session = LinkSession(self, role, "out", address, secure=self._client_ctx is not None)
            self.sessions[session.sid] = session
            try:
                if self._client_ctx is None:
                    await loop.create_connection(functools.partial(_same, session), host, port)
                else:
                    channel = TlsChannel(self._client_ctx, server_side=False, app=session,
                                         handshake_timeout=self.settings.dead_interval_s)
                    await loop.create_connection(functools.partial(_same, channel), host, port)
                    await channel.ready  # the handshake's outcome: raises what made it fail
            except (TimeoutError, OSError, ssl.SSLError) as err:
                session.reason = "CONNECT_FAILED"
                self.sessions.pop(session.sid, None)
                self._remember(session)
                log.info("%s link to %s failed (%s); will retry in %.1f s", role, address, err, delay)
            else:
                reason = await session.closed
                if reason == p.SELF_LINK:
                    self._self_addresses.add(address)
                    log.info("%s is this router itself; not dialling it again", address)
                    return
                was_up = session.was_up
                if session.hive is not None:
                    self._address_hive[address] = session.hive
                if was_up:
                    delay = BACKOFF_FIRST_S
                log.info("%s link to %s ended (%s); will redial in %.1f s", role, address, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _mesh_dns_loop(self) -> None:
        if self.settings.mesh_dns is None:
            return
        name, port = self.settings.mesh_dns
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as err:
                log.info("mesh DNS %s: %s; will retry in %.0f s", name, err, self.settings.mesh_dns_interval_s)
                infos = []
            wanted = {format_address((str(info[4][0]), port)) for info in infos}
            own = self._own_addresses() | self._self_addresses
            for address in sorted(wanted - own):
                self._dial("mesh", address)
            for (role, address), task in list(self._dialers.items()):
                if role == "mesh" and address not in wanted and address not in {
                        format_address(a) for a in self.settings.mesh_peers}:
                    task.cancel()
                    del self._dialers[(role, address)]
            await asyncio.sleep(self.settings.mesh_dns_interval_s)

    def _own_addresses(self) -> set[str]:
        """Addresses that are this router (a dial that reaches ourselves is refused SELF_LINK anyway)."""
        own: set[str] = set()
        for server in self._servers:
            for sock in getattr(server, "sockets", None) or ():
                with contextlib.suppress(OSError, IndexError):
                    name = sock.getsockname()
                    own.add(format_address((str(name[0]), int(name[1]))))
        return own

    # SessionOwner ---------------------------------------------------------------
    def expect(self, role: p.Role, direction: str = "in") -> p.Expect:
        refused = frozenset(self.refused_hives) if direction == "in" else frozenset()
        return p.Expect(own_hive=self.hive_id, own_router_id=self.router_id, role=role,
                        authorized=self.settings.authorized_hives, refused=refused)

    def timers(self) -> p.Timers:
        return p.Timers(int(self.settings.hello_interval_s * 1000), int(self.settings.dead_interval_s * 1000))

    def max_buffer(self) -> int:
        return self.settings.max_buffer

    def session_up(self, session: LinkSession) -> p.Reject | None:
        peer = session.peer
        if peer is None:
            raise RuntimeError("bug: a session is up before the peer's HELLO")
        if session.role == "mesh":
            for other in list(self.sessions.values()):
                if other is session or other.state != "up" or other.role != "mesh" or other.router_id != peer.router_id:
                    continue
                # Two links between the same two routers (both dialled): both sides keep the one dialled
                # by the lower router id, so they agree without talking about it.
                dialler = min(self.router_id, peer.router_id)
                keep_new = (session.direction == "out") == (dialler == self.router_id)
                if not keep_new:
                    return p.Reject(p.DUPLICATE_LINK, f"already linked to router {peer.router_id}")
                other.close(p.DUPLICATE_LINK, "replaced by the link both sides keep", tell=False)
        if session.direction == "out" and peer.hive_id in self.refused_hives:
            self.refused_hives.discard(peer.hive_id)
            self._save_state()
        if session.direction == "out":
            self._address_hive[session.address] = peer.hive_id
        self.table.add_peer(session.sid, session.role, peer.hive_id, peer.router_id)
        self.sent[session.sid] = {}
        self._seqs[session.sid] = itertools.count(1)
        self._changed()
        return None

    def session_down(self, session: LinkSession) -> None:
        self.sessions.pop(session.sid, None)
        self._remember(session)
        self.sent.pop(session.sid, None)
        self._seqs.pop(session.sid, None)
        if session.sid in self.table.peers:
            self.table.remove_peer(session.sid)
            self._changed()

    def _remember(self, session: LinkSession) -> None:
        self.recent = collections.deque((s for s in self.recent if not (
            s.address == session.address and s.direction == session.direction and s.role == session.role
            and session.direction == "out")), maxlen=32)
        self.recent.append(session)

    def on_lsa(self, session: LinkSession, raw: msgspec.Raw) -> None:
        lsa = p.parse_lsa(raw)
        if isinstance(lsa, p.Reject):
            self.drop(session.role, lsa.reason, f"{session.label()}: {lsa.message}")
            return
        last, _ = self.table.lsa_age(session.sid)
        if last is not None and lsa.seq <= last:
            session.close(p.STALE_SEQ, f"LSA seq {lsa.seq} after {last}")
            return
        refused = self.table.receive(session.sid, lsa)
        if refused is not None:
            self.drop(session.role, refused.reason, f"{session.label()}: {refused.message}")
            return
        self._changed()

    def on_data(self, session: LinkSession, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
        src_uuid = env.routing.src
        if session.role == "mesh":
            node = self.table.src_known(src_uuid)  # routers of our own hive vouch for each other's adverts
        else:
            node = self.table.src_node(session.sid, src_uuid)
        if node is None or self.router.is_local_uuid(src_uuid):
            self.drop(session.role, p.LINK_SRC_NOT_ADVERTISED,
                      f"{session.label()}: routing.src {src_uuid!r} is not a node this peer advertised")
            return
        if env.routing.dst is None:
            self.drop(session.role, "LINK_DST_NULL", f"{session.label()}: a data frame with dst null")
            return
        self.router.link_frame(session, env, meta, node)

    def read_done(self, session: LinkSession) -> None:
        """One read's frames of a link are routed: the router writes what they queued."""
        self.router.read_done()

    def fast_frames(self, session: LinkSession, frames: list[bytes], start: int) -> int:
        """How many frames from ``frames[start]`` on the router's fast path took (0: decide it one by one
        here).  It takes only frames whose sender passed :meth:`on_data` before (the router remembers
        those per session, and forgets them whenever the table or the local nodes change)."""
        return self.router.fast_frames(session, frames, start)

    def drop(self, role: p.Role, reason: str, detail: str) -> None:
        """Count a refused frame or advert; log it at most once a second per reason."""
        counter = self.drops[role]
        counter[reason] += 1
        now = time.monotonic()
        if now - self._drop_logged.get(reason, 0.0) >= 1.0:
            self._drop_logged[reason] = now
            log.warning("dropped (%s, %d so far on %s links): %s", reason, counter[reason], role, detail)

    # adverts ---------------------------------------------------------------------
    def nodes_changed(self) -> None:
        """Our local nodes changed: advertise soon (and check link senders afresh: a remote node may no
        longer claim a UUID that is now local)."""
        self.router.forget_senders()
        self._schedule()

    def _changed(self) -> None:
        self.router.links_changed()
        self._schedule()

    def _schedule(self) -> None:
        if self._advert_timer is None and not self._stopping and self.sessions:
            self._advert_timer = asyncio.get_running_loop().call_later(ADVERT_DELAY, self._flush)

    def flush_adverts(self) -> None:
        """Send held adverts now: called before a data frame goes out on a link, so the peer always
        learns a node before it sees a frame from it (a link is one ordered stream; a transit hive
        that just learned the node passes the advert on before the frame)."""
        if self._advert_timer is not None:
            self._advert_timer.cancel()
            self._flush()

    def _flush(self) -> None:
        self._advert_timer = None
        local = list(self.router.local_nodes())
        now_ms = int(time.time() * 1000)
        for sid, session in list(self.sessions.items()):
            if session.state != "up" or sid not in self.sent:
                continue
            want = self.table.desired(sid, local)
            changed, withdrawn = diff(self.sent[sid], want)
            seqs = self._seqs[sid]
            for origin, learned in changed.items():
                for payload in p.lsa_payloads(hive=self.hive_id, router_id=self.router_id,
                                              router_name=self.router_name, origin=origin, path=learned.path,
                                              version=next(self._versions), nodes=learned.nodes, seqs=seqs,
                                              now_ms=now_ms):
                    session.send_lsa(payload)
            for origin in withdrawn:
                for payload in p.lsa_payloads(hive=self.hive_id, router_id=self.router_id,
                                              router_name=self.router_name, origin=origin, path=(),
                                              version=next(self._versions), nodes=(), seqs=seqs, now_ms=now_ms):
                    session.send_lsa(payload)
            self.sent[sid] = want

    # where frames go -------------------------------------------------------------
    def session_for_hive(self, hive: str) -> LinkSession | None:
        route = self.table.route(hive)
        return None if route is None else self.sessions.get(route.sid)

    def session_for_uuid(self, uuid: str) -> tuple[LinkSession, p.NodeAd] | None:
        """The link toward a remote node (a mesh peer's, or another hive's), with its advert."""
        mesh = self.table.mesh_nodes.get(uuid)
        if mesh is not None:
            session = self.sessions.get(mesh[0])
            return None if session is None else (session, mesh[1])
        remote = self.table.by_uuid.get(uuid)
        if remote is None:
            return None
        session = self.session_for_hive(remote[0])
        return None if session is None else (session, remote[1])

    def up_sessions(self, role: p.Role) -> list[LinkSession]:
        return [s for s in self.sessions.values() if s.state == "up" and s.role == role]

    # router control ----------------------------------------------------------------
    def add_uplink(self, address: str) -> tuple[str, str] | None:
        """LINK_ADD: dial ``address`` as a WAN uplink and remember it; (error_code, detail) on failure."""
        try:
            addr = parse_address(address)
        except ValueError as err:
            return "INVALID_ADDRESS", str(err)
        if self._client_ctx is None and not self.settings.insecure_dev:
            return "NO_WAN", "this router has no link certificate"
        address = format_address(addr)
        if address not in self.dynamic_uplinks and addr not in self.settings.uplinks:
            self.dynamic_uplinks.append(address)
            try:
                self._save_state()
            except OSError as err:
                self.dynamic_uplinks.remove(address)
                return "PERSIST_FAILED", f"cannot store the link: {err}"
        self._dial("wan", address)
        return None

    def remove_hive(self, hive: str) -> dict[str, Any]:
        """LINK_REMOVE: close every WAN link with ``hive``, forget uplinks that led there, refuse it."""
        closed = [s for s in list(self.sessions.values()) if s.role == "wan" and s.hive == hive]
        addresses = {a for a, h in self._address_hive.items() if h == hive}
        known = bool(closed or addresses or hive in self.table.routes)
        if not known:
            return {"status": "error", "hive_id": hive, "closed": 0, "forgotten": [],
                    "error_code": "LINK_NOT_FOUND", "error_detail": f"no link with hive {hive!r}"}
        static = {format_address(a) for a in self.settings.uplinks}
        forgotten = sorted(a for a in addresses if a in self.dynamic_uplinks or a in static)
        for address in addresses:
            task = self._dialers.pop(("wan", address), None)
            if task is not None:
                task.cancel()
            if address in self.dynamic_uplinks:
                self.dynamic_uplinks.remove(address)
        for session in closed:
            session.close("LINK_REMOVED", "unlinked by LINK_REMOVE")
        self.refused_hives.add(hive)
        try:
            self._save_state()
        except OSError as err:
            return {"status": "error", "hive_id": hive, "closed": len(closed), "forgotten": forgotten,
                    "error_code": "PERSIST_FAILED", "error_detail": f"closed, but not stored: {err}"}
        return {"status": "ok", "hive_id": hive, "closed": len(closed), "forgotten": forgotten}

    # state file ------------------------------------------------------------------------
    def _load_state(self) -> None:
        path = self.state_path
        if path is None or not path.exists():
            return
        try:
            doc = json.loads(path.read_text())
            uplinks = [format_address(parse_address(a)) for a in doc.get("uplinks", [])]
            refused = [h for h in doc.get("refused_hives", []) if isinstance(h, str)]
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise LinkConfigError(f"cannot read the stored links in {path}: {err}") from err
        self.dynamic_uplinks = uplinks
        self.refused_hives = set(refused)

    def _save_state(self) -> None:
        path = self.state_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"uplinks": self.dynamic_uplinks, "refused_hives": sorted(self.refused_hives)},
                                  indent=2))
        os.replace(tmp, path)

    # status ---------------------------------------------------------------------------
    def _link_entry(self, s: LinkSession) -> dict[str, Any]:
        seq, age = self.table.lsa_age(s.sid) if s.state == "up" else (None, None)
        return {"hive_id": s.hive, "router_id": s.router_id, "address": s.address, "direction": s.direction,
                "state": s.state, "since": s.since_ms, "last_lsa_seq": seq,
                "last_lsa_age_ms": None if age is None else int(age * 1000), "rtt_ms": s.rtt_ms,
                "reason": s.reason, "read_pauses": s.read_pauses}

    def status(self) -> dict[str, Any]:
        s = self.settings
        live = list(self.sessions.values())
        live_out = {(x.role, x.address) for x in live if x.direction == "out"}
        out: dict[str, Any] = {}
        for role, listen in (("wan", s.wan_listen), ("mesh", s.mesh_listen)):
            links = [self._link_entry(x) for x in live if x.role == role]
            links += [self._link_entry(x) for x in self.recent
                      if x.role == role and x.direction == "out" and (role, x.address) not in live_out
                      and (role, x.address) in self._dialers]
            section: dict[str, Any] = {"hive_id": self.hive_id,
                                       "listen": None if listen is None else format_address(listen), "links": links,
                                       "drops": dict(self.drops[role]),
                                       "remote_nodes": len(self.table.by_uuid) if role == "wan"
                                       else len(self.table.mesh_nodes)}
            if role == "wan":
                section["routes"] = self.table.routes_view()
                section["refused_hives"] = sorted(self.refused_hives)
                section["insecure_dev"] = s.insecure_dev
            out[role] = section
        return out


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    """``protocol`` itself (a protocol factory for one connection, with ``functools.partial``)."""
    return protocol
