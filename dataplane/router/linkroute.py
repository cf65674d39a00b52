"""The fast path across links: plain frames go out to a link and in from one without being decoded.

Outbound (:meth:`LinkRoute.forward`, called by :mod:`~fluxbee.dataplane.router.fastroute` for a plain
frame whose destination is not a local node): the destination is a mesh peer's node (a
:class:`~fluxbee.dataplane.router.links.RemoteNode` the registry found), or a string whose decision the
general rules give as "forward on this link, unchanged" — a node of another hive by name
(:func:`decide.by_name <fluxbee.dataplane.router.decide.by_name>` answers :class:`~.decide.Forward`
without a new ``dst``) or a remote node by UUID.  Those decisions are memoised per destination and
forgotten whenever the link table or the route table changes.  The frame and the ones after it that
go the same way are re-written by :func:`fastpath.hop <fluxbee.dataplane.fastpath.hop>` (``ttl - 1``,
a frame with ``ttl`` 1 is the general path's TTL_EXCEEDED) and appended to the session's write as one
piece; the session writes once per loop iteration.  The run is remembered as one unconfirmed entry
(:meth:`RouterLinks.track <fluxbee.dataplane.router.links.RouterLinks.track>`).  Past the link's
high-water mark the producer is held, as for a slow local node.

Inbound (:meth:`LinkRoute.inbound`, called by the session for each frame it reads): a frame in the
canonical layout whose ``routing.src`` is a node this session's peer advertised — the general path
(:meth:`LinkManager.on_data <fluxbee.dataplane.link.manager.LinkManager.on_data>`) checked that sender
once and :class:`~fluxbee.dataplane.router.links.RouterLinks` remembers it — is checked and stamped by
:func:`fastpath.scan <fluxbee.dataplane.fastpath.scan>` with the advertised name, and queued for the
one local node it names, with the frames after it that go the same way as one run
(:func:`fastpath.extend <fluxbee.dataplane.fastpath.extend>`).  A node that cannot take more makes the
session stop reading (:meth:`LinkSession.block <fluxbee.dataplane.link.session.LinkSession.block>`)
instead of refusing the frame: the sending router's buffer fills and it holds its producer.

Anything else returns 0 and takes the general path (decide/dispatch), so every rule is written once:
metas that need rules (:func:`decide.needs_rules <fluxbee.dataplane.router.decide.needs_rules>`),
broadcasts, VPN crossings, round robin among several nodes, transit, unknown senders or destinations,
frames in another layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fluxbee.dataplane import fastpath, wire
from fluxbee.dataplane.link.session import LinkSession
from fluxbee.dataplane.router import decide
from fluxbee.dataplane.router.config import split_name
from fluxbee.dataplane.router.connection import Conn

if TYPE_CHECKING:
    from fluxbee.dataplane.router.links import RouterLinks
    from fluxbee.dataplane.router.remote import RemoteNode
    from fluxbee.dataplane.router.server import Router

_decode_meta = wire.meta_decoder.decode
PREFIX = b'{"routing":{"src":"'
"""How a canonical envelope starts; ``routing.src`` follows."""
MEMO_ENTRIES = 4096
"""Each memo is emptied when it reaches this many entries."""


class LinkRoute:
    """The link fast path of one router (see the module docstring)."""

    __slots__ = ("_links", "_metas", "_router", "_table", "_to")

    def __init__(self, router: Router, links: RouterLinks) -> None:
        self._router = router
        self._links = links
        self._to: dict[str, tuple[LinkSession, int | None]] = {}  # dst -> (session, the node's VPN or None)
        self._table = router.registry.table
        self._metas: dict[bytes, bool] = {}  # meta bytes -> needs rules

    def forget(self) -> None:
        """Decide every destination afresh (the link table changed)."""
        self._to.clear()

    def forget_metas(self) -> None:
        """Decide every meta afresh (the policy changed)."""
        self._metas.clear()

    # outbound ------------------------------------------------------------------------------------
    def _decide(self, dst: str) -> tuple[LinkSession, int | None] | None:
        """The session a frame to ``dst`` is forwarded on unchanged, as the general rules decide it."""
        registry = self._router.registry
        manager = self._links.manager
        if wire.is_uuid(dst):
            if dst != wire.canonical_uuid(dst) or registry.get(dst) is not None:
                return None
            found = manager.session_for_uuid(dst)
            return None if found is None else (found[0], found[1].vpn_id)
        full, _, _ = registry.resolve(dst)
        if split_name(full)[1] == registry.hive_id:
            return None  # a name of this hive: a local or mesh node, found by the registry, or a refusal
        decision = decide.by_name(dst, registry, self._links)
        if not isinstance(decision, decide.Forward) or decision.dst not in (None, dst):
            return None
        session = manager.session_for_hive(decision.hive)
        return None if session is None else (session, None)

    def forward(self, conn: Conn, frames: list[bytes], index: int, dst: str, meta: bytes,
                target: RemoteNode | None, single: bool) -> int:
        """Forward ``frames[index]`` (and the frames after it that go the same way, when ``single``)
        from the local node ``conn``; how many were taken (0: the general path decides it)."""
        vpn: int | None
        if target is not None:
            session, vpn = target.session, target.vpn_id
        else:
            registry = self._router.registry
            if registry.table is not self._table:
                self._table = registry.table
                self._to.clear()
            found = self._to.get(dst)
            if found is None:
                found = self._decide(dst)
                if found is None:
                    return 0
                if len(self._to) >= MEMO_ENTRIES:
                    self._to.clear()
                self._to[dst] = found
            session, vpn = found
            if vpn is None:
                vpn = conn.vpn_id  # a name of another hive: its router applies the VPN rule
        transport = session.transport
        if session.state != "up" or transport is None or vpn != conn.vpn_id:
            return 0
        links = self._links
        links.manager.flush_adverts()  # the peer learns a node before a frame from it
        used = session.buffered()
        data, count = fastpath.hop(frames, index, conn.uuid_bytes, dst, meta,
                                   links.manager.max_buffer() - used, len(frames) if single else 1)
        if not count:
            return 0  # ttl 1, too big, not canonical, or no room: the general path answers
        router = self._router
        if router.batching:  # routing one read of the node: written with the rest of it at its end
            if session.queue(data, count, soon=False):
                router.dirty.append(session)
        else:
            session.queue(data, count)
        links.track(session, conn, data, count)
        counters = router.counters
        counters.frames_in += count
        counters.forwarded[session.role] += count
        if session.congested_since is not None or used + len(data) >= session.high_water:
            conn.block(session)  # the producer waits for the link, as for a slow local node
        return count

    # inbound -------------------------------------------------------------------------------------
    def inbound(self, session: LinkSession, frames: list[bytes], index: int) -> int:
        """Deliver ``frames[index]`` (and the frames after it that go the same way) read from ``session``
        to a local node; how many were taken (0: the general path, or the session now waits for a node)."""
        body = frames[index]
        if not body.startswith(PREFIX):
            return 0
        senders = self._links.senders.get(session.sid)
        if senders is None:
            return 0
        src = body[19:body.find(b'"', 19)]
        known = senders.get(src)
        if known is None:
            return 0
        stamp, sender = known
        hit = fastpath.scan(body, src, stamp)
        if hit is None:
            return 0
        dst, raw_meta, frame = hit
        router = self._router
        needs_rules = self._metas.get(raw_meta)
        if needs_rules is None:
            try:
                needs_rules = decide.needs_rules(_decode_meta(raw_meta), router.policy.guards_actions)
            except msgspec.DecodeError:
                return 0  # the general path closes the link, saying why
            if len(self._metas) >= MEMO_ENTRIES:
                self._metas.clear()
            self._metas[raw_meta] = needs_rules
        if needs_rules or dst == wire.BROADCAST:
            return 0
        registry = router.registry
        target = registry.by_uuid.get(dst)
        if target is None:
            names = registry.reached.get(dst)
            if names is None:
                names = registry.reach(dst)
            if names is None or len(names.conns) != 1:
                return 0
            target = names.conns[0]
        transport = target.transport
        if transport is None or target.closing or target.vpn_id != sender.vpn_id or not isinstance(target, Conn):
            return 0
        settings = router.settings
        room, high_water = settings.max_buffer, settings.high_water
        out = target.out
        base = target.out_base if out else transport.get_write_buffer_size()
        size = len(frame)
        if base + target.out_bytes + size > room:
            session.block(target)  # not read until the node drains: the sending router holds its producer
            return 0
        if not out:
            router.dirty.append(target)
            target.out_base = base
        out.append(frame)
        size += target.out_bytes
        taken = 1
        if index + 1 < len(frames) and target.congested_since is None and size < high_water:
            data, more = fastpath.extend(frames, index + 1, src, stamp, dst, raw_meta, high_water - size,
                                         room - base - size)
            if more:
                out.append(data)
                size += len(data)
                taken += more
        target.out_bytes = size
        counters = router.counters
        counters.frames_in += taken
        counters.frames_out += taken
        counters.delivered += taken
        if target.congested_since is not None or size >= high_water:
            session.block(target)
        return taken
