"""Routing decisions, without I/O: where a message goes, or why it does not.

Every rule of the router is written here once, as a function of the frame's routing fields and meta,
the sender, and the registry (:mod:`fluxbee.dataplane.router.registry`: reachable nodes, names, the
route table and VPNs). The answer is a decision — :class:`Deliver` to a node, :class:`Refuse` with the
UNREACHABLE reason and detail the sender gets, :class:`Drop` silently (counted under a key),
:class:`Forbidden` for a privileged message the sender may not send, :class:`Expired` for a spent TTL —
or, for a broadcast, the nodes it fans out to. The general path
(:mod:`fluxbee.dataplane.router.dispatch`) asks in this order — :func:`screen` (the sender may send
this), the router's own system messages, :func:`expired`, then the destination — and carries the
answer out (encodes, queues, counts, replies). The fast path (:mod:`fluxbee.dataplane.router.fastroute`)
only ever delivers: it takes a frame only when :func:`needs_rules` is false for its meta and the
envelope checks it shares with :func:`screen` and :func:`expired` pass, and for anything else it hands
the frame to the general path, so a new rule needs no second copy there. New kinds of decision are new
classes here, matched by whoever carries decisions out.

Nodes are anything with the few fields a rule reads (:class:`~fluxbee.dataplane.router.registry.Peer`),
so the rules are tested with plain objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Generic, Protocol

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import trust
from fluxbee.dataplane.router.config import is_system_name, split_name
from fluxbee.dataplane.router.registry import P, Peer, Registry, pick
from fluxbee.models.routing import RouteAction


class Sender(Protocol):
    """What the rules read of the connection a frame came from: the node it said HELLO as, what it proved."""

    @property
    def uuid(self) -> str | None: ...  # the UUID of its accepted HELLO (None before one)

    @property
    def name(self) -> str: ...

    @property
    def base(self) -> str: ...

    @property
    def claimed(self) -> bool: ...  # registered under a claimed name it proved

    @property
    def grants(self) -> frozenset[str]: ...  # privileged messages its claim grants


@dataclass(frozen=True, slots=True)
class Deliver(Generic[P]):
    """Send the frame to ``target``."""

    target: P


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not route; answer the sender UNREACHABLE with ``reason`` and ``detail`` (and count under
    ``dropped[dropped]`` or ``rejected[rejected]`` too, when set)."""

    reason: str
    detail: str
    dropped: str | None = None
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the frame over a link toward another hive (``hive``'s best next hop), addressed to
    ``dst`` when set: a ``next_hop_hive`` route or a ``name@*`` choice names the hive it picked, so
    the routers after this one do not decide again (and cannot send it back)."""

    hive: str
    dst: str | None = None


class HiveReach(Protocol):
    """What the rules read of the links (:mod:`fluxbee.dataplane.link`): which hives are reachable,
    and which hives have a node with a base name (nearest first)."""

    def reaches(self, hive: str) -> bool: ...

    def hives_with(self, base: str) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Drop:
    """Do not route and do not answer; count under ``dropped[counter]``."""

    counter: str


@dataclass(frozen=True, slots=True)
class Forbidden:
    """A privileged message its sender may not send: refuse it with the answer the sender waits for
    (an ADMIN_COMMAND_RESPONSE or CONFIG_RESPONSE with ``FORBIDDEN``), counted under ``forbidden[msg]``."""

    msg: str


@dataclass(frozen=True, slots=True)
class Expired:
    """The frame's TTL is spent: answer TTL_EXCEEDED (local delivery never decrements it, as in the original)."""


EXPIRED = Expired()


def screen(sender: Sender, src: str, msg: str | None) -> Refuse | Forbidden | None:
    """What may stop a frame with ``routing.src`` ``src`` and ``meta.msg`` ``msg`` before anything else.

    ``routing.src`` is bound to the connection: a frame claiming any other UUID than the one its
    connection said HELLO with, in that spelling, is refused SRC_MISMATCH. Then ``CONFIG_CHANGED`` and
    ``ADMIN_COMMAND`` need an authenticated system node or a grant (:func:`trust.may_send`) — whatever
    ``meta.type`` says.
    """
    if src != sender.uuid:
        return Refuse(wire.SRC_MISMATCH, f"routing.src {src!r} is not this connection's node",
                      rejected=wire.SRC_MISMATCH)
    if msg is not None and msg in trust.PRIVILEGED and not trust.may_send(msg, sender.base, sender.claimed,
                                                                            sender.grants):
        return Forbidden(msg)
    return None  # nothing stops it


def expired(ttl: int) -> Expired | None:
    """A frame that arrives with ``ttl == 0`` goes no further (asked after the router's own messages)."""
    return EXPIRED if ttl == 0 else None


def needs_rules(meta: wire.MetaView, guard_actions: bool = False) -> bool:
    """Whether a frame's meta alone calls for more than delivery to its destination.

    System messages may be the router's own or cross VPNs; privileged messages need :func:`screen`;
    with ``guard_actions`` (the loaded policy has an ``allow`` rule) a meta carrying an action needs
    the policy. The fast path takes only frames for which this is false (and memoises the answer per
    meta, forgetting it when the policy changes).
    """
    msg = meta.msg
    return (meta.type == wire.TYPE_SYSTEM or (msg is not None and msg in trust.PRIVILEGED)
            or (guard_actions and isinstance(meta.action, str)))


def may_reach(src: Peer, dst: Peer, meta: wire.MetaView) -> bool:
    """The VPN rule: same VPN, a global system message, or a system node at either end."""
    if src.vpn_id == dst.vpn_id:
        return True
    if meta.type == wire.TYPE_SYSTEM and meta.scope == "global":
        return True
    return is_system_name(src.base) or is_system_name(dst.base)


def unicast(src: P, dst: P, meta: wire.MetaView) -> Deliver[P] | Refuse:
    """A message from ``src`` to the reachable node ``dst``."""
    if src.vpn_id != dst.vpn_id and not may_reach(src, dst, meta):
        return Refuse(wire.VPN_BLOCKED, f"{src.name} (vpn {src.vpn_id}) may not reach {dst.name} (vpn {dst.vpn_id})")
    return Deliver(dst)


def to_node(dst: str, registry: Registry[P],
            links: HiveReach | None = None) -> Deliver[P] | Refuse | Drop | Forward:
    """The node a unicast destination names: a UUID (in any spelling) or a name."""
    target = registry.get(dst)
    if target is not None:
        return Deliver(target)
    if wire.is_uuid(dst):
        return by_uuid(dst, registry)
    return by_name(dst, registry, links)


def by_uuid(dst: str, registry: Registry[P]) -> Deliver[P] | Refuse:
    """The node a UUID destination (in any spelling) names, or NODE_NOT_FOUND."""
    target = registry.get(wire.canonical_uuid(dst))
    if target is None:
        return Refuse(wire.NODE_NOT_FOUND, "no node with this UUID is connected")
    return Deliver(target)


def by_name(dst: str, registry: Registry[P], links: HiveReach | None = None) -> Deliver[P] | Refuse | Drop | Forward:
    """The node a name destination reaches: the route deciding its full name first, then the nodes of
    that name (round robin; a mesh peer's nodes are among them), then for ``name@*`` any node of ours
    with that base name, then the nearest hive that has it.  A name of another hive, or a
    ``next_hop_hive`` route, is a :class:`Forward` when a link reaches that hive and
    ``WAN_UNAVAILABLE`` when none does."""
    full, base, route = registry.resolve(dst)
    hive_id = registry.hive_id
    if route is not None:
        spec = route.spec
        if spec.action is RouteAction.DROP:
            return Drop("ROUTE_DROP")
        if spec.next_hop_hive and spec.next_hop_hive != hive_id:
            if links is not None and links.reaches(spec.next_hop_hive):
                return Forward(spec.next_hop_hive, f"{base}@{spec.next_hop_hive}")
            return Refuse(wire.WAN_UNAVAILABLE, f"route {spec.prefix!r} forwards to hive {spec.next_hop_hive!r}, "
                                                "which no link reaches")
    group = registry.named(full)
    if group is not None and group.conns:
        return Deliver(pick(group))
    if dst.endswith("@*"):
        candidates = registry.of_base(base)
        if candidates:
            return Deliver(candidates[0])
        hives = links.hives_with(base) if links is not None else ()
        if hives:
            return Forward(hives[0], f"{base}@{hives[0]}")
    _, hive = split_name(full)
    if hive != hive_id:
        if links is not None and links.reaches(hive):
            return Forward(hive)
        return Refuse(wire.WAN_UNAVAILABLE, f"{full} is in hive {hive!r}, which no link reaches")
    return Refuse(wire.NODE_NOT_FOUND, f"no node named {full} is connected")


class Holders(Protocol):
    """What the policy target rules read of the identity data the policy was loaded with."""

    def handler_of(self, ilk: str) -> str | None: ...  # the node handling an ILK (aliases followed)

    def holders(self, tag: str) -> Sequence[str] | None: ...  # nodes of the ILKs with that capability or role


def policy_route(target: str, registry: Registry[P], links: HiveReach | None,
                 holders: Holders) -> tuple[str | None, tuple[str, ...]] | Refuse:
    """The names a policy's ``target`` may send a ``dst: null`` message to, and the key its turns are
    kept under (None: one fixed name, no turns).

    ``ilk:<uuid>`` is the node handling that ILK. A capability or role some ILK holds is the live
    nodes handling such ILKs (a node of this hive with a connection, or of a hive a link reaches),
    taken in turn under the tag. Anything else is the name itself (``name``, ``name@hive``,
    ``name@*``). Nothing live for an ILK, capability or role is ``OPA_NO_TARGET``.
    """
    if target.startswith("ilk:"):
        handler = holders.handler_of(target)
        if not handler:
            return Refuse(wire.OPA_NO_TARGET, f"policy target {target}: no node handles that ILK")
        return None, (handler,)
    nodes = holders.holders(target)
    if nodes is None:
        return None, (target,)
    hive_id = registry.hive_id
    live: list[str] = []
    for node in nodes:
        full = node if "@" in node else f"{node}@{hive_id}"
        hive = split_name(full)[1]
        group = registry.named(full)
        if (group is not None and group.conns) or (hive != hive_id and links is not None and links.reaches(hive)):
            live.append(full)
    if not live:
        return Refuse(wire.OPA_NO_TARGET, f"policy target {target!r}: no live node handles an identity "
                                          "with that capability or role")
    return target, tuple(live)


def policy_target(target: str, registry: Registry[P], links: HiveReach | None, holders: Holders,
                  turns: dict[str, int]) -> Deliver[P] | Refuse | Drop | Forward:
    """Where a policy's ``target`` sends a ``dst: null`` message: one of :func:`policy_route`'s names,
    in turn when there are several (``turns`` keeps each tag's round-robin position), routed as
    :func:`by_name` routes it."""
    route = policy_route(target, registry, links, holders)
    if isinstance(route, Refuse):
        return route
    key, names = route
    if key is None:
        return _stamped(names[0], registry, links)
    turn = turns.get(key, 0)
    turns[key] = turn + 1
    return _stamped(names[turn % len(names)], registry, links)


def _stamped(name: str, registry: Registry[P], links: HiveReach | None) -> Deliver[P] | Refuse | Drop | Forward:
    """:func:`by_name`, with a forward addressed to the name the policy chose (decided here, once)."""
    decision = by_name(name, registry, links)
    if isinstance(decision, Forward) and decision.dst is None:
        return Forward(decision.hive, name)
    return decision


def broadcast(trace_id: str, seen: Mapping[str, float]) -> Refuse | Drop | None:
    """Whether a broadcast may fan out (None) given the trace ids seen in the de-duplication window."""
    if not wire.is_uuid(trace_id):
        return Refuse(wire.NODE_NOT_FOUND, "a broadcast needs a UUID trace_id (the de-duplication key)",
                      dropped="BROADCAST_TRACE_ID_NOT_UUID")
    if trace_id in seen:
        return Drop("BROADCAST_DUPLICATE")
    return None


def fan_out(src: P, peers: Iterable[P], meta: wire.MetaView) -> Iterator[P]:
    """The nodes a broadcast from ``src`` reaches: every other node that ``meta.target`` matches (a name,
    a base name, or a pattern with ``*``) and that ``src`` may reach."""
    pattern = meta.target or None
    for conn in peers:
        if conn is src:
            continue
        if pattern is not None:
            if "*" in pattern:
                if not (fnmatchcase(conn.name, pattern) or fnmatchcase(conn.base, pattern)):
                    continue
            elif pattern not in (conn.name, conn.base):
                continue
        if may_reach(src, conn, meta):
            yield conn
