"""Routing decisions, without I/O: where a message goes, or why it does not.

The router (:mod:`fluxbee.dataplane.router.server`) keeps the registry of connected nodes (by UUID,
by full name, by base name) and the route table; the functions here read them and return a decision —
:class:`Deliver` to a node, :class:`Refuse` with the UNREACHABLE reason and detail the sender gets,
:class:`Drop` silently (counted under a key) — or, for a broadcast, the nodes it fans out to. The
router carries the decision out (encodes, queues, counts, answers). The fast path asks the same
registry and steps aside to the general path, and so to these functions, for anything else: a new
rule goes here once. Nodes are anything with the few fields a rule reads (:class:`Peer`), so the
rules are tested with plain objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Generic, Protocol, TypeVar

from fluxbee.dataplane import wire
from fluxbee.dataplane.router.config import CompiledRoute, is_system_name, split_name
from fluxbee.models import RouteAction


class Peer(Protocol):
    """What the rules read of a connected node."""

    @property
    def name(self) -> str: ...  # full L2 name, name@hive

    @property
    def base(self) -> str: ...  # name without @hive

    @property
    def vpn_id(self) -> int: ...

    @property
    def congested_since(self) -> float | None: ...  # None unless its outbound buffer is over high water


P = TypeVar("P", bound=Peer)


@dataclass(slots=True)
class Names(Generic[P]):
    """Nodes sharing one name, with a round-robin cursor."""

    conns: list[P] = field(default_factory=list)
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class Deliver(Generic[P]):
    """Send the frame to ``target``."""

    target: P


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not route; answer the sender UNREACHABLE with ``reason`` and ``detail``
    (and count under ``dropped[dropped]`` too, when set)."""

    reason: str
    detail: str
    dropped: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the frame over a link toward another hive (``hive``'s best next hop), addressed to
    ``dst`` when set: a ``next_hop_hive`` route or a ``name@*`` choice names the hive it picked, so
    the routers after this one do not decide again (and cannot send it back)."""

    hive: str
    dst: str | None = None


class HiveReach(Protocol):
    """What the rules read of the links: which hives are reachable, and which have a base name."""

    def reaches(self, hive: str) -> bool: ...

    def hives_with(self, base: str) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Drop:
    """Do not route and do not answer; count under ``dropped[counter]``."""

    counter: str


def pick(names: Names[P]) -> P:
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


def may_reach(src: Peer, dst: Peer, meta: wire.MetaView) -> bool:
    """The VPN rule: same VPN, a global system message, or a system node at either end."""
    if src.vpn_id == dst.vpn_id:
        return True
    if meta.type == wire.TYPE_SYSTEM and meta.scope == "global":
        return True
    return is_system_name(src.base) or is_system_name(dst.base)


def unicast(src: P, dst: P, meta: wire.MetaView) -> Deliver[P] | Refuse:
    """A message from ``src`` to the connected node ``dst``."""
    if src.vpn_id != dst.vpn_id and not may_reach(src, dst, meta):
        return Refuse(wire.VPN_BLOCKED, f"{src.name} (vpn {src.vpn_id}) may not reach {dst.name} (vpn {dst.vpn_id})")
    return Deliver(dst)


def by_uuid(dst: str, nodes: Mapping[str, P]) -> P | Refuse:
    """The node a UUID destination (in any spelling) names, or NODE_NOT_FOUND."""
    target = nodes.get(wire.canonical_uuid(dst))
    if target is None:
        return Refuse(wire.NODE_NOT_FOUND, "no node with this UUID is connected")
    return target


def full_name(dst: str, hive_id: str) -> tuple[str, str]:
    """Full and base name of a destination string (``name``, ``name@hive`` or ``name@*``)."""
    if dst.endswith("@*"):
        base = dst[:-2]
        return f"{base}@{hive_id}", base
    if "@" in dst:
        base, _ = split_name(dst)
        return dst, base
    return f"{dst}@{hive_id}", dst


def by_name(dst: str, full: str, base: str, route: CompiledRoute | None, hive_id: str,
            names: Mapping[str, Names[P]], bases: Mapping[str, Sequence[P]],
            links: HiveReach | None = None) -> P | Refuse | Drop | Forward:
    """The node a name destination reaches: ``route`` (the route deciding ``full``) first, then the
    live nodes of that name (round robin; a mesh peer's nodes are among them), then for ``name@*``
    any node of ours with that base name, then the nearest hive that has it.  A name of another hive,
    or a ``next_hop_hive`` route, is a :class:`Forward` when a link reaches that hive and
    ``WAN_UNAVAILABLE`` when none does."""
    if route is not None:
        spec = route.spec
        if spec.action is RouteAction.DROP:
            return Drop("ROUTE_DROP")
        if spec.next_hop_hive and spec.next_hop_hive != hive_id:
            if links is not None and links.reaches(spec.next_hop_hive):
                return Forward(spec.next_hop_hive, f"{base}@{spec.next_hop_hive}")
            return Refuse(wire.WAN_UNAVAILABLE, f"route {spec.prefix!r} forwards to hive {spec.next_hop_hive!r}, "
                                                "which no link reaches")
    group = names.get(full)
    if group is not None and group.conns:
        return pick(group)
    if dst.endswith("@*"):
        candidates = bases.get(base)
        if candidates:
            return candidates[0]
        hives = links.hives_with(base) if links is not None else ()
        if hives:
            return Forward(hives[0], f"{base}@{hives[0]}")
    _, hive = split_name(full)
    if hive != hive_id:
        if links is not None and links.reaches(hive):
            return Forward(hive)
        return Refuse(wire.WAN_UNAVAILABLE, f"{full} is in hive {hive!r}, which no link reaches")
    return Refuse(wire.NODE_NOT_FOUND, f"no node named {full} is connected")


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
