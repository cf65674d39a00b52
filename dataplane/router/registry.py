"""Who the router can reach: nodes by UUID, by full name and by base name, and the route table (pure).

The registry is the one place that knows which nodes are reachable and under which names; the routing
rules (:mod:`fluxbee.dataplane.router.decide`), the general and the fast path, the status snapshot and
the config changes all read or change it through the methods here, and keep no copy of their own.
It holds the route table too, because both a node's VPN and the route that decides a name come from
it: installing a table moves every node into its VPN in the same step.

Several nodes may share one full name (``WF.sink@prod`` twice): they take turns (:func:`pick`).

Two memos spare the per-message path repeated work. A destination string's full name, base name and
deciding route are kept until the table changes; the nodes a name reaches when no route decides it
(the fast path's question, :meth:`Registry.reach`) until the table or any node changes.

Entries are anything with the fields the rules read (:class:`Peer`): today the router's own
connections. An entry reached through another router can be added next to them under its UUID and
name, and is then found, load-balanced, VPN-checked and listed like a local one; what is done with a
decision to reach it is up to whoever carries decisions out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

from fluxbee.dataplane.router.config import ROUTE_CACHE_LIMIT, CompiledRoute, RouteTable, split_name


class Peer(Protocol):
    """What the registry and the rules read of a node (the registry also sets its VPN)."""

    vpn_id: int

    @property
    def name(self) -> str: ...  # full L2 name, name@hive

    @property
    def base(self) -> str: ...  # name without @hive

    @property
    def congested_since(self) -> float | None: ...  # None unless its outbound buffer is over high water


P = TypeVar("P", bound=Peer)


@dataclass(slots=True)
class Names(Generic[P]):
    """Nodes sharing one full name, with a round-robin cursor."""

    conns: list[P] = field(default_factory=list)
    cursor: int = 0


def pick(names: Names[P]) -> P:
    """Round-robin over the nodes of one name, skipping congested ones when possible."""
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


class Resolved(NamedTuple):
    """A destination string as the table sees it."""

    full: str  # name@hive
    base: str  # name
    route: CompiledRoute | None  # the route that decides ``full``, if any


def full_name(dst: str, hive_id: str) -> tuple[str, str]:
    """Full and base name of a destination string (``name``, ``name@hive`` or ``name@*``)."""
    if dst.endswith("@*"):
        base = dst[:-2]
        return f"{base}@{hive_id}", base
    if "@" in dst:
        return dst, split_name(dst)[0]
    return f"{dst}@{hive_id}", dst


class Registry(Generic[P]):
    """The reachable nodes of one router and the route table in force (see the module docstring)."""

    __slots__ = ("_by_base", "_by_name", "_by_uuid", "_reach", "_resolved", "_table", "generation", "hive_id")

    def __init__(self, hive_id: str, table: RouteTable | None = None) -> None:
        self.hive_id = hive_id
        self._table = table if table is not None else RouteTable.build(0, (), ())
        self._by_uuid: dict[str, P] = {}
        self._by_name: dict[str, Names[P]] = {}
        self._by_base: dict[str, list[P]] = {}
        self._resolved: dict[str, Resolved] = {}
        self._reach: dict[str, Names[P]] = {}
        self.generation = 0
        """Counts changes of the node set or the table: a memo of what names reach keeps it to know
        it is still right (the policy fast lane's candidate names)."""

    # reading -------------------------------------------------------------
    @property
    def table(self) -> RouteTable:
        """The route table in force (replaced only by :meth:`install`)."""
        return self._table

    @property
    def by_uuid(self) -> Mapping[str, P]:
        """Nodes by canonical UUID (a live view: a hot loop may keep it across calls)."""
        return self._by_uuid

    @property
    def reached(self) -> Mapping[str, Names[P]]:
        """The memo of :meth:`reach` (a live view): look here first, call :meth:`reach` on a miss."""
        return self._reach

    def __len__(self) -> int:
        return len(self._by_uuid)

    def get(self, node_uuid: str) -> P | None:
        """The node with this canonical UUID."""
        return self._by_uuid.get(node_uuid)

    def nodes(self) -> ValuesView[P]:
        """Every node (a live view: copy it before anything may add or remove a node)."""
        return self._by_uuid.values()

    def uuids(self) -> list[str]:
        """Every node's UUID, in order (stable paging while nodes come and go)."""
        return sorted(self._by_uuid)

    def named(self, full: str) -> Names[P] | None:
        """The nodes with this full name (never an empty group)."""
        return self._by_name.get(full)

    def of_base(self, base: str) -> Sequence[P]:
        """The nodes with this base name, in the order they came."""
        return self._by_base.get(base, ())

    def vpn_for(self, name: str) -> int:
        return self._table.vpn_for(name)

    def resolve(self, dst: str) -> Resolved:
        """Full name, base name and deciding route of a destination string (memoised per table)."""
        cached = self._resolved.get(dst)
        if cached is not None:
            return cached
        full, base = full_name(dst, self.hive_id)
        cached = Resolved(full, base, self._table.route_for(full))
        if len(self._resolved) >= ROUTE_CACHE_LIMIT:
            self._resolved.clear()
        self._resolved[dst] = cached
        return cached

    def reach(self, dst: str) -> Names[P] | None:
        """The nodes a name destination reaches when no route decides it; None for anything else.

        None also for a string that may be a UUID in another spelling (32 or 36 characters): the
        rules for those are in :func:`~fluxbee.dataplane.router.decide.to_node`. Memoised in
        :attr:`reached` until a node or the table changes.
        """
        if len(dst) in (32, 36):
            return None
        full, _, route = self.resolve(dst)
        names = self._by_name.get(full) if route is None else None
        if names is None or not names.conns:
            return None
        if len(self._reach) >= ROUTE_CACHE_LIMIT:
            self._reach.clear()
        self._reach[dst] = names
        return names

    # changing ------------------------------------------------------------
    def add(self, node_uuid: str, node: P) -> None:
        """Register ``node`` under its UUID and names, in the VPN the table gives its name."""
        if node_uuid in self._by_uuid:
            raise ValueError(f"bug: {node_uuid} is registered already; remove the incumbent first")
        node.vpn_id = self._table.vpn_for(node.name)
        self._by_uuid[node_uuid] = node
        self._reach.clear()
        self.generation += 1
        self._by_name.setdefault(node.name, Names[P]()).conns.append(node)
        self._by_base.setdefault(node.base, []).append(node)

    def remove(self, node_uuid: str, node: P) -> bool:
        """Forget ``node``; False (and nothing changed) if another node holds this UUID or none does."""
        if self._by_uuid.get(node_uuid) is not node:
            return False
        del self._by_uuid[node_uuid]
        self._unlist(node)
        return True

    def add_remote(self, node: P) -> None:
        """List a node another router of this hive serves (a mesh peer's) under its full and base name.

        Not under its UUID: :meth:`nodes` and :meth:`get` stay this router's own connections (the node
        table, broadcasts, status); a remote UUID is the links' business.  Its VPN is the one its
        router advertised, and :meth:`install` leaves it alone.
        """
        self._reach.clear()
        self.generation += 1
        self._by_name.setdefault(node.name, Names[P]()).conns.append(node)
        self._by_base.setdefault(node.base, []).append(node)

    def remove_remote(self, node: P) -> None:
        """Undo :meth:`add_remote`."""
        self._unlist(node)

    def _unlist(self, node: P) -> None:
        """Take ``node`` off its full and base name (a local node's UUID is :meth:`remove`'s business)."""
        self._reach.clear()
        self.generation += 1
        names = self._by_name.get(node.name)
        if names is not None:
            with contextlib.suppress(ValueError):
                names.conns.remove(node)
            if not names.conns:
                del self._by_name[node.name]
        bases = self._by_base.get(node.base)
        if bases is not None:
            with contextlib.suppress(ValueError):
                bases.remove(node)
            if not bases:
                del self._by_base[node.base]

    def install(self, table: RouteTable) -> list[P]:
        """Put ``table`` in force and every node in the VPN it gives; returns the nodes that moved."""
        self._table = table
        self._resolved.clear()
        self._reach.clear()
        self.generation += 1
        moved = []
        for node in self._by_uuid.values():
            vpn = table.vpn_for(node.name)
            if vpn != node.vpn_id:
                node.vpn_id = vpn
                moved.append(node)
        return moved
