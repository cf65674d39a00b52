"""The router's hot loop: one read's frames, in order, delivering the plain ones without decoding them.

A frame is *plain* when every rule of :mod:`~fluxbee.dataplane.router.decide` would simply deliver it:
its envelope passes :func:`fluxbee.dataplane.fastpath.scan` (well-formed, ``routing.src`` is the
connection's node, ``ttl > 0`` — what :func:`decide.screen` and :func:`decide.expired` check), its meta
needs no rule (:func:`decide.needs_rules`, memoised per meta), it is not a broadcast, and the registry
knows its destination: a connected UUID, or a name no route decides
(:meth:`Registry.reach <fluxbee.dataplane.router.registry.Registry.reach>`). The loop then queues it for
a node of the sender's VPN with room. Every other frame goes to the general path
(:meth:`Router.on_frame <fluxbee.dataplane.router.server.Router.on_frame>`, then
:mod:`~fluxbee.dataplane.router.dispatch`), and a plain frame that the VPN rule or the destination's
buffer would stop is handed to :func:`dispatch.deliver`, so every refusal, and every rule, is written
once. ``tests/unit/test_router_fastpath.py`` runs each case through both paths and compares.

A ``dst: null`` frame whose policy decision is cached is taken by the policy's fast lane
(:mod:`~fluxbee.dataplane.router.nullroute`, one call where ``scan`` declines a frame), which queues it
into the same buffers; anything the lane does not take goes to the general path.

Decoded metas are memoised by their bytes: most traffic repeats a handful of metas. Once a frame is
queued for a node, :func:`fastpath.extend <fluxbee.dataplane.fastpath.extend>` takes the frames after it
that go to the same ``dst`` with the same meta as one run (one join, one step of this loop), up to the
point where this loop would block the producer (the destination's high-water mark) or refuse a frame
(its buffer cap); the loop then decides that frame itself. A name shared by several nodes gets no
runs: each frame picks its node.

The loop writes into its targets' output queues directly, so every registry entry it delivers to is a
connection of this router; an entry of another kind must make it hand the frame to the general path.
A plain frame for a node behind a link (a mesh peer's entry, or a destination the registry does not
know) is offered to :meth:`LinkRoute.forward <fluxbee.dataplane.router.linkroute.LinkRoute.forward>`
first, which forwards it (and the run after it) or declines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fluxbee.dataplane import fastpath, wire
from fluxbee.dataplane.router import decide, dispatch
from fluxbee.dataplane.router.connection import Conn
from fluxbee.dataplane.router.registry import pick

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

_decode_raw = wire.raw_decoder.decode
_decode_meta = wire.meta_decoder.decode
META_CACHE_BYTES = 512
"""Metas up to this size are memoised (decoded once per distinct byte string)."""
META_CACHE_ENTRIES = 4096
"""The memo is emptied when it reaches this many distinct metas."""


class FastPath:
    """The hot loop of one router (see the module docstring); :meth:`route` is ``Router.route_frames``."""

    __slots__ = ("_by_uuid", "_metas", "_reached", "_registry", "_router")

    def __init__(self, router: Router) -> None:
        self._router = router
        self._registry = registry = router.registry
        self._by_uuid, self._reached = registry.by_uuid, registry.reached  # live views, looked up per frame
        self._metas: dict[bytes, tuple[wire.MetaView, bool]] = {}  # meta bytes -> (decoded, needs rules)

    def forget_metas(self) -> None:
        """Decide every meta afresh (the policy that says whether actions need it changed)."""
        self._metas.clear()
        if self._router.links is not None:
            self._router.links.fast.forget_metas()

    def route(self, conn: Conn, frames: list[bytes]) -> None:
        """Route one read's frames of ``conn`` in order; hold the rest once a destination blocks it."""
        router = self._router
        scan, extend = fastpath.scan, fastpath.extend
        general, deliver = router.on_frame, dispatch.deliver
        metas = self._metas
        take_null = router.policy.lane.take
        registry, by_uuid, reached = self._registry, self._by_uuid, self._reached
        dirty = router.dirty
        high_water = router.settings.high_water
        room = router.settings.max_buffer
        broadcast = wire.BROADCAST
        node, node_b, stamp, vpn = conn.uuid, conn.uuid_bytes, conn.stamp, conn.vpn_id
        link_route = router.links.fast if router.links is not None else None
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
                    general(conn, body)  # the HELLO
                    node, node_b, stamp, vpn = conn.uuid, conn.uuid_bytes, conn.stamp, conn.vpn_id
                    continue
                hit = scan(body, node_b, stamp)
                if hit is None:
                    taken = take_null(conn, frames, index)  # dst:null with a cached decision (nullroute)
                    if taken:
                        routed += taken
                        index += taken - 1
                        continue
                    general(conn, body)
                    vpn = conn.vpn_id  # a CONFIG_CHANGED from this node may have moved it
                    continue
                dst, raw_meta, frame = hit
                known = metas.get(raw_meta)
                if known is None:
                    try:
                        decoded = _decode_meta(raw_meta)
                    except msgspec.DecodeError as err:
                        dispatch.malformed(router, conn, err)
                        break
                    known = (decoded, decide.needs_rules(decoded, router.policy.guards_actions))
                    if len(raw_meta) <= META_CACHE_BYTES:
                        if len(metas) >= META_CACHE_ENTRIES:
                            metas.clear()
                        metas[raw_meta] = known
                meta, needs_rules = known
                if needs_rules or dst == broadcast:
                    general(conn, body)
                    vpn = conn.vpn_id
                    continue
                single = True
                target = by_uuid.get(dst)
                if target is None:
                    names = reached.get(dst)
                    if names is None:
                        names = registry.reach(dst)
                        if names is None:
                            if link_route is not None:
                                taken = link_route.forward(conn, frames, index, dst, raw_meta, None, True)
                                if taken:
                                    index += taken - 1
                                    continue
                            general(conn, body)
                            vpn = conn.vpn_id
                            continue
                    conns = names.conns
                    if len(conns) == 1:
                        target = conns[0]
                    else:
                        target = pick(names)
                        single = False  # round robin: each frame picks its node
                transport = target.transport
                if transport is None and link_route is not None:
                    taken = link_route.forward(conn, frames, index, dst, raw_meta, target, single)  # type: ignore[arg-type]
                    if taken:
                        index += taken - 1
                        continue
                if target.vpn_id != vpn or target.closing or transport is None:
                    router.counters.frames_in += 1
                    deliver(router, conn, target, _decode_raw(body), meta)  # refusal, with the reply
                    continue
                out = target.out
                size = len(frame)
                base = target.out_base if out else transport.get_write_buffer_size()
                if base + target.out_bytes + size > room:
                    router.counters.frames_in += 1
                    deliver(router, conn, target, _decode_raw(body), meta)  # dropped, with the reply
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
            counters = router.counters
            counters.frames_in += routed
            counters.frames_out += routed
            counters.delivered += routed
