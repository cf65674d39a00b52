"""The router's side of links (:mod:`fluxbee.dataplane.link`): remote nodes, forwarding, control.

The link manager decides who is reachable over which link; this module puts that into the router:

* nodes of our hive on mesh peers become :class:`RemoteNode` entries next to the local connections
  under their full and base names, so round robin, VPNs and ``name@*`` treat them like local ones
  (a UUID is looked up in the link table instead: the node table stays the local nodes);
* a decision to reach a :class:`RemoteNode`, another hive, or a ``next_hop_hive`` route becomes a
  forward: ``ttl > 1`` is required and ``ttl - 1`` is sent (else TTL_EXCEEDED), on the link the table
  chose;
* a frame arriving from a link, once the manager has checked its source (the peer advertised that
  node), is routed as if a :class:`RemoteNode` had sent it: answers to it travel back over links;
* broadcasts go on to mesh peers when ``ttl >= 2`` and to WAN peers when ``ttl >= 3``, never back to
  the link they came from and never from mesh to mesh;
* ``LINK_ADD`` / ``LINK_REMOVE`` and the status sections.

Plain frames take a fast path both ways (:mod:`~fluxbee.dataplane.router.linkroute`); this module keeps
what it needs: the senders each session's peer advertised that the general path already accepted
(:attr:`RouterLinks.senders`), and the frames written to a link that its peer has not confirmed yet
(:meth:`RouterLinks.track`: one entry per written run, not per frame).

A remote ``SY.*`` node counts as authenticated (``claimed``): its own router proved it before it
advertised it (unproven ``SY.*`` names cannot register anywhere), and that router is a certificate
holder we accepted.  So ADMIN_COMMAND from ``SY.admin@A`` reaches ``SY.orchestrator@B``, and a
CONFIG_CHANGED from a remote ``SY.*`` node is applied like a local one.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from fluxbee.dataplane import fastpath, wire
from fluxbee.dataplane.link import protocol as lp
from fluxbee.dataplane.link.manager import LinkManager
from fluxbee.dataplane.link.session import LinkSession
from fluxbee.dataplane.router import answers, decide, dispatch
from fluxbee.dataplane.router.config import is_system_name, split_name
from fluxbee.dataplane.router.linkroute import LinkRoute
from fluxbee.dataplane.router.remote import RemoteNode

if TYPE_CHECKING:
    from fluxbee.dataplane.router.connection import Conn
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)
_decode_raw = wire.raw_decoder.decode


Unconfirmed: TypeAlias = "tuple[float, Conn | RemoteNode, bytes, int]"
"""Frames written to a link as one piece: our clock (ms) then, their sender, the frames (length headers
included), how many."""
PROBE_AFTER = 256
"""Unconfirmed frames on a session before a ping is sent out of turn to confirm them (bounds the memory
kept per session by the traffic of one round trip, not of one hello interval)."""


class Pending:
    """The frames written to one session that its peer has not confirmed, oldest first."""

    __slots__ = ("entries", "frames", "session")

    def __init__(self, session: LinkSession) -> None:
        self.session = session
        self.entries: collections.deque[Unconfirmed] = collections.deque()
        self.frames = 0


class RouterLinks:
    """The :class:`~fluxbee.dataplane.link.manager.LinkRouter` of one router (see the module docstring)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        s = router.settings
        self.manager = LinkManager(s.links, self, hive_id=router.hive_id, router_id=router.uuid,
                                   router_name=router.name,
                                   state_path=s.run_dir / "state" / f"{router.name}.links.json")
        self._mesh_entries: list[RemoteNode] = []
        self._senders: dict[tuple[int, str], RemoteNode] = {}  # (session, node) of frames from links
        self._generation = -1
        self._mesh_generation = -1
        self._unconfirmed: dict[int, Pending] = {}
        self.senders: dict[int, dict[bytes, tuple[bytes, RemoteNode]]] = {}
        """Per session: the senders the general path accepted from it (UUID bytes -> their stamp, entry)."""
        self.fast = LinkRoute(router, self)

    # LinkRouter --------------------------------------------------------------
    def local_nodes(self) -> Iterable[lp.NodeAd]:
        """Our nodes, and the router itself: the frames it generates (UNREACHABLE, TTL_EXCEEDED, answers
        to ROUTER_STATUS_GET) carry its UUID as ``routing.src`` and must pass the peers' source binding."""
        yield lp.NodeAd(self.router.uuid, self.router.name, 0)
        for conn in self.router.registry.nodes():
            if conn.uuid is not None:
                yield lp.NodeAd(conn.uuid, conn.name, conn.vpn_id)

    def is_local_uuid(self, uuid: str) -> bool:
        return self.router.registry.get(uuid) is not None or uuid == self.router.uuid

    def links_changed(self) -> None:
        """The table changed: refuse what died with a session, re-list mesh peers' nodes, drop name caches."""
        for sid, pending in list(self._unconfirmed.items()):
            if pending.session.state == "down":
                del self._unconfirmed[sid]
                self._refuse_unconfirmed(pending)
        table = self.manager.table
        if table.generation == self._generation:
            return
        self._generation = table.generation
        self.forget_senders()
        self.fast.forget()
        if table.mesh_generation == self._mesh_generation:
            return
        self._mesh_generation = table.mesh_generation
        registry = self.router.registry
        for entry in self._mesh_entries:
            registry.remove_remote(entry)  # type: ignore[arg-type]
        entries: list[RemoteNode] = []
        for sid, ad in table.mesh_nodes.values():
            session = self.manager.sessions.get(sid)
            if session is None or registry.get(ad.uuid) is not None:
                continue
            entry = RemoteNode(ad, session)
            registry.add_remote(entry)  # type: ignore[arg-type]
            entries.append(entry)
        self._mesh_entries = entries

    def forget_senders(self) -> None:
        """Check every link sender afresh (the table or the local nodes changed)."""
        self._senders.clear()
        self.senders.clear()

    def fast_frames(self, session: LinkSession, frames: list[bytes], start: int) -> int:
        return self.fast.inbound(session, frames, start)

    def link_frame(self, session: LinkSession, env: wire.RawEnvelope, meta: wire.MetaView, src: lp.NodeAd) -> None:
        key = (session.sid, src.uuid)
        sender = self._senders.get(key)
        if sender is None or sender.name != src.name or sender.vpn_id != src.vpn_id:
            sender = self._senders[key] = RemoteNode(src, session)
            if src.uuid.isascii() and '"' not in src.uuid and "\\" not in src.uuid:
                self.senders.setdefault(session.sid, {})[src.uuid.encode()] = (fastpath.make_stamp(src.name), sender)
        router = self.router
        router.counters.frames_in += 1
        router.batching = True  # output is written once per read of the link (read_done)
        dispatch.route_decoded(router, sender, env, meta)  # type: ignore[arg-type]

    def read_done(self) -> None:
        router = self.router
        router.batching = False
        router.flush()

    # forwarding ---------------------------------------------------------------
    def forward(self, src: Conn | RemoteNode, session: LinkSession | None, env: wire.RawEnvelope, why: str) -> None:
        """Send ``env`` over ``session`` (one router hop: ttl > 1 needed, ttl - 1 sent)."""
        router = self.router
        routing = env.routing
        if session is None or session.state != "up":
            answers.unreachable(router, src, routing, wire.WAN_UNAVAILABLE, f"{why}: the link is down")  # type: ignore[arg-type]
            return
        if isinstance(src, RemoteNode) and src.session is session:
            self.manager.drop(session.role, "LINK_LOOP", f"{why}: would go back over the link it came from")
            answers.unreachable(router, src, routing, wire.NODE_NOT_FOUND, f"{why}: no way on from here")  # type: ignore[arg-type]
            return
        if routing.ttl <= 1:
            router.counters.ttl_exceeded += 1
            answers.reply(router, src, routing, wire.TTL_EXCEEDED,  # type: ignore[arg-type]
                         wire.TtlExceededPayload(original_dst=str(routing.dst), last_hop=f"router:{router.uuid}"))
            return
        routing.ttl -= 1
        self.manager.flush_adverts()
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError as err:
            answers.unreachable(router, src, routing, wire.FRAME_TOO_LARGE, str(err))  # type: ignore[arg-type]
            return
        if session.send(frame):
            router.counters.forwarded[session.role] += 1
            self.track(session, src, frame, 1)
        else:
            router.counters.dropped[wire.DST_CONGESTED] += 1
            answers.unreachable(router, src, routing, wire.DST_CONGESTED,  # type: ignore[arg-type]
                               f"the {session.role} link to {session.hive} is full; message dropped")

    # frames the peer has not confirmed ------------------------------------------
    def track(self, session: LinkSession, src: Conn | RemoteNode, data: bytes, count: int) -> None:
        """Remember ``count`` frames (``data``) written to ``session`` until the peer confirms it read them
        (a pong to a later ping): if the session dies first, their sender is told (UNREACHABLE) instead of
        never hearing back.  One entry per written piece; the frames are only decoded if that happens."""
        pending = self._unconfirmed.get(session.sid)
        if pending is None:
            pending = self._unconfirmed[session.sid] = Pending(session)
        entries = pending.entries
        confirmed = session.confirmed_ms
        while entries and entries[0][0] <= confirmed:
            pending.frames -= entries.popleft()[3]
        entries.append((session.clock() * 1000, src, data, count))
        pending.frames += count
        if pending.frames >= PROBE_AFTER:
            session.probe()

    def _refuse_unconfirmed(self, pending: Pending) -> None:
        session = pending.session
        reason = wire.WAN_UNAVAILABLE if session.role == "wan" else wire.PEER_UNAVAILABLE
        detail = (f"the {session.role} link to {session.hive} went down ({session.reason}) before the peer "
                  f"confirmed receiving it: it may or may not have been delivered")
        refused = 0
        for sent_ms, src, data, _ in pending.entries:
            if sent_ms <= session.confirmed_ms or (isinstance(src, RemoteNode) and src.session.state == "down"):
                continue
            for body in wire.FrameReader().feed(data):
                routing = _decode_raw(body).routing
                answers.unreachable(self.router, src, routing, reason, detail)  # type: ignore[arg-type]
                refused += 1
        if refused:
            log.warning("%d frames sent on %s were not confirmed before it went down: their senders are told "
                        "UNREACHABLE %s", refused, session.label(), reason)
            self.router.flush()

    def deliver_remote(self, src: Conn | RemoteNode, target: RemoteNode, env: wire.RawEnvelope,
                       meta: wire.MetaView) -> None:
        """A decision to deliver to a mesh peer's node: forward it there (VPN rule first).  A frame that
        already crossed the mesh goes to a local instance of the name instead: one mesh hop only."""
        router = self.router
        if isinstance(src, RemoteNode) and src.session.role == "mesh":
            group = router.registry.named(target.name)
            local = [c for c in (group.conns if group is not None else ()) if not isinstance(c, RemoteNode)]
            if not local:
                answers.unreachable(router, src, env.routing, wire.NODE_NOT_FOUND,  # type: ignore[arg-type]
                                    f"no node named {target.name} is on this router")
                return
            dispatch.deliver(router, src, local[0], env, meta)  # type: ignore[arg-type]
            return
        if src.vpn_id != target.vpn_id:
            decision = decide.unicast(src, target, meta)
            if isinstance(decision, decide.Refuse):
                dispatch.refuse(router, src, env.routing, decision)  # type: ignore[arg-type]
                return
        self.forward(src, target.session, env, f"{target.name} is on another router")

    def to_hive(self, src: Conn | RemoteNode, hive: str, env: wire.RawEnvelope) -> None:
        self.forward(src, self.manager.session_for_hive(hive), env, f"hive {hive!r}")

    def by_uuid(self, src: Conn | RemoteNode, dst: str, env: wire.RawEnvelope, meta: wire.MetaView) -> bool:
        """Forward to a remote node by UUID; False when no link knows it."""
        found = self.manager.session_for_uuid(wire.canonical_uuid(dst))
        if found is None:
            return False
        session, ad = found
        if src.vpn_id != ad.vpn_id and not _may_reach(src, ad, meta):
            answers.unreachable(self.router, src, env.routing, wire.VPN_BLOCKED,  # type: ignore[arg-type]
                                    f"{src.name} (vpn {src.vpn_id}) may not reach {ad.name} (vpn {ad.vpn_id})")
            return True
        self.forward(src, session, env, ad.name)
        return True

    def reaches(self, hive: str) -> bool:
        return self.manager.table.route(hive) is not None

    def hives_with(self, base: str) -> list[str]:
        return self.manager.table.remote_bases.get(base, [])

    def broadcast(self, src: Conn | RemoteNode, env: wire.RawEnvelope) -> None:
        """Flood a broadcast on (see the module docstring); the frame was de-duplicated already."""
        routing = env.routing
        ttl = routing.ttl
        came_from = src.session if isinstance(src, RemoteNode) else None
        targets = []
        if ttl >= 2 and (came_from is None or came_from.role != "mesh"):
            targets += self.manager.up_sessions("mesh")
        if ttl >= 3:
            targets += self.manager.up_sessions("wan")
        targets = [s for s in targets if s is not came_from]
        if not targets:
            return
        routing.ttl = ttl - 1
        self.manager.flush_adverts()
        try:
            frame = wire.encode_frame(env)
        except wire.FrameTooLargeError:
            return
        finally:
            routing.ttl = ttl
        for session in targets:
            if session.send(frame):
                self.router.counters.forwarded[session.role] += 1
            else:
                self.router.counters.dropped[wire.DST_CONGESTED] += 1

    # control ------------------------------------------------------------------------
    def control(self, src: Conn | RemoteNode, env: wire.RawEnvelope, msg: str) -> None:
        """LINK_ADD / LINK_REMOVE (the sender's privilege was checked by the router)."""
        try:
            body = msgspec.json.decode(env.payload) if env.payload else None
        except msgspec.DecodeError:
            body = None
        router = self.router
        if msg == lp.LINK_ADD:
            address = body.get("address") if isinstance(body, dict) else None
            answer: dict[str, Any] = {"address": address}
            if not isinstance(address, str):
                answer.update(status="error", error_code="INVALID_ADDRESS",
                              error_detail="the payload must be {\"address\": \"HOST:PORT\"}")
            else:
                failed = self.manager.add_uplink(address)
                if failed is None:
                    answer.update(status="ok")
                    log.info("LINK_ADD %s by %s", address, src.name)
                else:
                    answer.update(status="error", error_code=failed[0], error_detail=failed[1])
            answers.reply(router, src, env.routing, lp.LINK_ADD_RESPONSE, answer)  # type: ignore[arg-type]
            return
        hive = body.get("hive_id") if isinstance(body, dict) else None
        if not isinstance(hive, str):
            answers.reply(router, src, env.routing, lp.LINK_REMOVE_RESPONSE,  # type: ignore[arg-type]
                         {"status": "error", "hive_id": hive, "closed": 0, "forgotten": [],
                          "error_code": "INVALID_REQUEST", "error_detail": "the payload must be {\"hive_id\": ID}"})
            return
        log.info("LINK_REMOVE %s by %s", hive, src.name)
        answers.reply(router, src, env.routing, lp.LINK_REMOVE_RESPONSE, self.manager.remove_hive(hive))  # type: ignore[arg-type]


def _may_reach(src: Conn | RemoteNode, dst: lp.NodeAd, meta: wire.MetaView) -> bool:
    if meta.type == wire.TYPE_SYSTEM and meta.scope == "global":
        return True
    return is_system_name(src.base) or is_system_name(split_name(dst.name)[0])
