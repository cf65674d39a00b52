"""The link-state table: what each peer advertised, the best path to each hive, what to advertise.

Pure code with an injectable clock: sessions are plain integers (``sid``), adverts are
:class:`~fluxbee.dataplane.link.protocol.LsaPayload` values, and the outcome of every call is data
(a :class:`~fluxbee.dataplane.link.protocol.Reject`, or nothing).  The rules are the package
docstring's "Link-state adverts: a path vector"; the invariants kept here:

* a stored path never contains our hive beyond a mesh peer's first hop, never repeats a hive, and
  starts with the peer's hive — so forwarding along best paths cannot loop;
* every node a peer advertised is known by UUID under that peer (``src_node``), which is what the
  source binding of frames arriving on that link checks;
* :meth:`LinkTable.desired` is a pure function of the table and our local nodes: the session layer
  diffs it against what it last sent, so a change anywhere reaches every peer that must hear it,
  and a new session simply receives all of it (the resync after a reconnect).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fluxbee.dataplane.link.protocol import BAD_LSA, LsaPayload, NodeAd, Reject, Role

Clock = Callable[[], float]

MAX_ORIGINS = 4096
"""Origin hives one session may advertise; more are refused (a peer cannot grow our memory at will)."""
MAX_PENDING = 64
"""Origins one session may have half-sent (some parts still missing)."""


@dataclass(slots=True)
class PeerInfo:
    sid: int
    role: Role
    hive: str
    router_id: str


@dataclass(frozen=True, slots=True)
class Learned:
    """One origin as one peer advertised it."""

    path: tuple[str, ...]
    nodes: tuple[NodeAd, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """The best way to an origin hive: through session ``sid``; ``tail`` is the path beyond our hive."""

    origin: str
    sid: int
    role: Role
    hops: int
    tail: tuple[str, ...]
    nodes: tuple[NodeAd, ...]


@dataclass(slots=True)
class _Parts:
    version: int
    parts: int
    path: tuple[str, ...]
    got: dict[int, list[NodeAd]] = field(default_factory=dict)


class LinkTable:
    """Adverts by session, best routes by origin hive, and node indexes (see the module docstring)."""

    def __init__(self, hive_id: str, clock: Clock = time.monotonic) -> None:
        self.hive_id = hive_id
        self.clock = clock
        self.peers: dict[int, PeerInfo] = {}
        self.learned: dict[int, dict[str, Learned]] = {}
        self._parts: dict[tuple[int, str], _Parts] = {}
        self._src: dict[int, dict[str, NodeAd]] = {}  # per session: every node it advertised, by UUID
        self.routes: dict[str, Route] = {}
        self.by_uuid: dict[str, tuple[str, NodeAd]] = {}  # remote node UUID -> (origin hive, node)
        self.mesh_nodes: dict[str, tuple[int, NodeAd]] = {}  # our hive's nodes on mesh peers, by UUID
        self.mesh_names: dict[str, list[tuple[int, NodeAd]]] = {}  # full name -> mesh instances
        self.remote_bases: dict[str, list[str]] = {}  # base name -> origin hives that have it (nearest first)
        self._base_hops: dict[str, dict[str, int]] = {}  # base name -> {origin: hops}
        self.last_lsa: dict[int, tuple[int, float]] = {}  # sid -> (seq, when)
        self.generation = 0
        """Grows whenever routes or node indexes change (callers drop caches keyed on it)."""
        self.mesh_generation = 0
        """Grows whenever the mesh peers' nodes (``mesh_nodes``) may have changed."""

    # sessions -------------------------------------------------------------
    def add_peer(self, sid: int, role: Role, hive: str, router_id: str) -> None:
        self.peers[sid] = PeerInfo(sid, role, hive, router_id)
        self.learned[sid] = {}
        self._src[sid] = {}

    def remove_peer(self, sid: int) -> None:
        """Forget a session and everything learned through it (its adverts are withdrawn at once)."""
        if sid not in self.peers:
            return
        origins = list(self.learned.pop(sid, {}))
        self._src.pop(sid, None)
        self.last_lsa.pop(sid, None)
        for key in [k for k in self._parts if k[0] == sid]:
            del self._parts[key]
        self._update(sid, origins)
        del self.peers[sid]

    # adverts ----------------------------------------------------------------
    def receive(self, sid: int, lsa: LsaPayload) -> Reject | None:
        """Apply one LSA frame from session ``sid``; a Reject is counted by the caller, the link stays."""
        peer = self.peers.get(sid)
        if peer is None:
            return Reject(BAD_LSA, "no such session")
        self.last_lsa[sid] = (lsa.seq, self.clock())
        if lsa.hive != peer.hive:
            return Reject(BAD_LSA, f"LSA from hive {lsa.hive!r} on a link with hive {peer.hive!r}")
        origin = lsa.origin
        path = tuple(lsa.path)
        if path:
            problem = self._path_problem(peer, origin, path)
            if problem is not None:
                return Reject(BAD_LSA, problem)
        key = (sid, origin)
        pending = self._parts.get(key)
        if origin not in self.learned[sid] and path and len(self.learned[sid]) >= MAX_ORIGINS:
            return Reject(BAD_LSA, f"more than {MAX_ORIGINS} origin hives on one link")
        if pending is None and sum(1 for k in self._parts if k[0] == sid) >= MAX_PENDING:
            return Reject(BAD_LSA, f"more than {MAX_PENDING} adverts half-sent on one link")
        if pending is None or pending.version != lsa.version or pending.parts != lsa.parts or pending.path != path:
            pending = self._parts[key] = _Parts(lsa.version, lsa.parts, path)
        pending.got[lsa.part] = lsa.nodes
        if len(pending.got) < pending.parts:
            return None
        del self._parts[key]
        learned = self.learned[sid]
        if not path:
            if learned.pop(origin, None) is not None:
                self._update(sid, [origin])
            return None
        nodes = tuple(n for i in range(pending.parts) for n in pending.got[i])
        if peer.role == "mesh" and origin == self.hive_id:
            nodes = tuple(n for n in nodes if n.name.endswith("@" + self.hive_id))
        learned[origin] = Learned(path, nodes)
        self._update(sid, [origin])
        return None

    def _path_problem(self, peer: PeerInfo, origin: str, path: tuple[str, ...]) -> str | None:
        if path[0] != peer.hive:
            return f"path {list(path)} does not start with the peer's hive {peer.hive!r}"
        if path[-1] != origin:
            return f"path {list(path)} does not end with its origin {origin!r}"
        if len(set(path)) != len(path):
            return f"path {list(path)} repeats a hive"
        if self.hive_id in path[1:] or (peer.role == "wan" and self.hive_id in path):
            return f"path {list(path)} contains this hive (a loop)"
        if peer.role == "mesh" and origin != self.hive_id and len(path) < 2:
            return f"a mesh advert for hive {origin!r} with no WAN hop"
        return None

    # derived state --------------------------------------------------------------
    def _update(self, sid: int, origins: Iterable[str]) -> None:
        """Bring the derived state up to date after ``origins`` changed on session ``sid``: that session's
        source index, and for each origin its best route and the node indexes (work in proportion to
        what changed, not to the whole table)."""
        self.generation += 1
        if sid in self.learned:
            self._src[sid] = {n.uuid: n for learned in self.learned[sid].values() for n in learned.nodes}
        for origin in set(origins):
            if origin == self.hive_id:
                self._update_mesh()
            else:
                self._update_route(origin)

    def _update_mesh(self) -> None:
        mesh_nodes: dict[str, tuple[int, NodeAd]] = {}
        for sid, by_origin in self.learned.items():
            learned = by_origin.get(self.hive_id)
            if learned is not None and self.peers[sid].role == "mesh":
                for node in learned.nodes:
                    mesh_nodes[node.uuid] = (sid, node)
        names: dict[str, list[tuple[int, NodeAd]]] = {}
        for sid, node in mesh_nodes.values():
            names.setdefault(node.name, []).append((sid, node))
        self.mesh_nodes = mesh_nodes
        self.mesh_names = names
        self.mesh_generation += 1

    def _update_route(self, origin: str) -> None:
        best: tuple[tuple[int, int, str, str, int], Route] | None = None
        for sid, by_origin in self.learned.items():
            learned = by_origin.get(origin)
            if learned is None:
                continue
            peer = self.peers[sid]
            tail = learned.path if peer.role == "wan" else learned.path[1:]
            key = (len(tail), 0 if peer.role == "wan" else 1, peer.hive, peer.router_id, sid)
            if best is None or key < best[0]:
                best = (key, Route(origin, sid, peer.role, len(tail), tail, learned.nodes))
        old = self.routes.get(origin)
        new = None if best is None else best[1]
        if old == new:
            return
        touched: set[str] = set()
        if old is not None:
            del self.routes[origin]
            for node in old.nodes:
                if self.by_uuid.get(node.uuid, ("", None))[0] == origin:
                    del self.by_uuid[node.uuid]
                touched.add(node.name.split("@", 1)[0])
        if new is not None:
            self.routes[origin] = new
            for node in new.nodes:
                self.by_uuid[node.uuid] = (origin, node)
                touched.add(node.name.split("@", 1)[0])
        for base in touched:
            hops = self._base_hops.setdefault(base, {})
            hops.pop(origin, None)
            if new is not None and any(n.name.split("@", 1)[0] == base for n in new.nodes):
                hops[origin] = new.hops
            if hops:
                self.remote_bases[base] = sorted(hops, key=lambda o: (hops[o], o))
            else:
                del self._base_hops[base]
                self.remote_bases.pop(base, None)

    # queries --------------------------------------------------------------------
    def src_node(self, sid: int, uuid: str) -> NodeAd | None:
        """The node ``uuid`` if session ``sid`` advertised it (source binding), else None."""
        seen = self._src.get(sid)
        return None if seen is None else seen.get(uuid)

    def src_known(self, uuid: str) -> NodeAd | None:
        """The node ``uuid`` if any session advertised it (mesh links: our own routers vouch for each other)."""
        for seen in self._src.values():
            node = seen.get(uuid)
            if node is not None:
                return node
        return None

    def route(self, hive: str) -> Route | None:
        return self.routes.get(hive)

    def lsa_age(self, sid: int) -> tuple[int | None, float | None]:
        last = self.last_lsa.get(sid)
        if last is None:
            return None, None
        return last[0], self.clock() - last[1]

    def desired(self, sid: int, local_nodes: Iterable[NodeAd]) -> dict[str, Learned]:
        """What session ``sid`` should know from us now: origin -> (path from our hive, nodes)."""
        peer = self.peers[sid]
        own_nodes = tuple(local_nodes)
        if peer.role == "wan":
            own_nodes = own_nodes + tuple(node for _, node in self.mesh_nodes.values())
        out: dict[str, Learned] = {self.hive_id: Learned((self.hive_id,), tuple(sorted(own_nodes,
                                                                                        key=lambda n: n.uuid)))}
        for origin, route in self.routes.items():
            if route.sid == sid or origin == peer.hive:
                continue
            if peer.role == "mesh" and route.role != "wan":
                continue  # one full-mesh hop: mesh-learned routes are never re-advertised on the mesh
            if peer.role == "wan" and peer.hive in route.tail:
                continue
            out[origin] = Learned((self.hive_id, *route.tail), route.nodes)
        return out

    def routes_view(self) -> list[dict[str, object]]:
        return [{"hive": origin, "next_hop": self.peers[r.sid].hive if r.role == "wan" else f"mesh:{r.tail[0]}",
                 "path": list(r.tail), "via": r.role}
                for origin, r in sorted(self.routes.items())]


def diff(sent: Mapping[str, Learned], desired: Mapping[str, Learned]) -> tuple[dict[str, Learned], list[str]]:
    """Adverts to send (new or changed origins) and origins to withdraw, to go from ``sent`` to ``desired``."""
    changed = {o: d for o, d in desired.items() if sent.get(o) != d}
    withdrawn = [o for o in sent if o not in desired]
    return changed, withdrawn
