"""The path-vector table: transit without routes, loops refused, withdrawals, mesh rules, src binding."""

from __future__ import annotations

import itertools
import random
import uuid

from fluxbee.dataplane.link.protocol import LsaPayload, NodeAd, Reject, lsa_payloads
from fluxbee.dataplane.link.table import Learned, LinkTable, diff


def node(name: str) -> NodeAd:
    return NodeAd(str(uuid.uuid4()), name, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


_seq = itertools.count(1)


def lsa(sender: str, origin: str, path: list[str], nodes: list[NodeAd], version: int = 1) -> LsaPayload:
    return LsaPayload(hive=sender, router_id=str(uuid.uuid4()), router_name="RT.gateway@" + sender, seq=next(_seq),
                      timestamp=0, origin=origin, path=path, version=version, part=0, parts=1, nodes=nodes)


def deliver(table: LinkTable, sid: int, adverts: dict[str, Learned], sender: str) -> None:
    """What a session does with desired(): one LSA per origin."""
    for origin, learned in adverts.items():
        assert table.receive(sid, lsa(sender, origin, list(learned.path), list(learned.nodes))) is None


def test_transit_a_b_c_learns_c_through_b_without_a_route() -> None:
    a, b, c = LinkTable("A"), LinkTable("B"), LinkTable("C")
    echo_c = node("WF.echo@C")
    # sessions: A<->B (sid 1 on both), B<->C (sid 2 on B, sid 1 on C)
    a.add_peer(1, "wan", "B", "rb")
    b.add_peer(1, "wan", "A", "ra")
    b.add_peer(2, "wan", "C", "rc")
    c.add_peer(1, "wan", "B", "rb")
    deliver(b, 2, c.desired(1, [echo_c]), "C")
    assert b.route("C") is not None and b.route("C").tail == ("C",)  # type: ignore[union-attr]
    to_a = b.desired(1, [])
    assert to_a["C"].path == ("B", "C") and to_a["C"].nodes == (echo_c,)
    deliver(a, 1, to_a, "B")
    route = a.route("C")
    assert route is not None and route.sid == 1 and route.hops == 2 and route.tail == ("B", "C")
    assert a.by_uuid[echo_c.uuid] == ("C", echo_c)
    assert a.src_node(1, echo_c.uuid) == echo_c  # B may relay frames from C's node to A
    assert a.remote_bases["WF.echo"] == ["C"]
    # split horizon: B does not advertise C back to C, nor A's path back to A
    assert "C" not in b.desired(2, []) and "A" not in b.desired(1, [])


def test_adverts_containing_our_hive_are_refused_so_a_ring_cannot_loop() -> None:
    a = LinkTable("A")
    a.add_peer(1, "wan", "B", "rb")
    refused = a.receive(1, lsa("B", "C", ["B", "A", "C"], [node("WF.x@C")]))
    assert isinstance(refused, Reject) and "contains this hive" in refused.message
    assert a.route("C") is None
    assert isinstance(a.receive(1, lsa("B", "A", ["B", "A"], [])), Reject)
    assert isinstance(a.receive(1, lsa("B", "C", ["X", "C"], [])), Reject)  # must start with the peer
    assert isinstance(a.receive(1, lsa("B", "C", ["B", "D"], [])), Reject)  # must end with the origin
    assert isinstance(a.receive(1, lsa("B", "C", ["B", "C", "C"], [])), Reject)
    assert isinstance(a.receive(1, lsa("Z", "C", ["B", "C"], [])), Reject)  # hive of the LSA != session's


def test_shortest_path_wins_and_a_dead_link_withdraws_what_came_through_it() -> None:
    a = LinkTable("A")
    a.add_peer(1, "wan", "B", "rb")
    a.add_peer(2, "wan", "D", "rd")
    a.receive(1, lsa("B", "C", ["B", "X", "C"], [node("WF.e@C")]))
    a.receive(2, lsa("D", "C", ["D", "C"], [node("WF.e@C")]))
    assert a.route("C").sid == 2  # type: ignore[union-attr]
    a.remove_peer(2)
    assert a.route("C").sid == 1  # type: ignore[union-attr]
    a.receive(1, lsa("B", "C", [], []))  # withdrawal
    assert a.route("C") is None and a.by_uuid == {}
    a.remove_peer(1)
    assert a.peers == {} and a.routes == {}


def test_a_ring_of_four_converges_and_recovers_from_a_cut() -> None:
    hives = ["A", "B", "C", "D"]
    tables = {h: LinkTable(h) for h in hives}
    nodes = {h: [node(f"WF.echo@{h}")] for h in hives}
    ring = [("A", "B"), ("B", "C"), ("C", "D"), ("D", "A")]
    sids: dict[tuple[str, str], int] = {}
    for i, (x, y) in enumerate(ring):
        sids[(x, y)] = sids[(y, x)] = i + 1
        tables[x].add_peer(i + 1, "wan", y, "r" + y)
        tables[y].add_peer(i + 1, "wan", x, "r" + x)
    sent: dict[tuple[str, str], dict[str, Learned]] = {}

    def converge() -> int:
        rounds = 0
        for rounds in range(1, 20):
            moved = False
            for (x, y), sid in sids.items():
                if sid not in tables[x].peers:
                    continue
                want = tables[x].desired(sid, nodes[x])
                changed, withdrawn = diff(sent.get((x, y), {}), want)
                for origin, learned in changed.items():
                    assert tables[y].receive(sid, lsa(x, origin, list(learned.path), list(learned.nodes))) is None
                for origin in withdrawn:
                    assert tables[y].receive(sid, lsa(x, origin, [], [])) is None
                if changed or withdrawn:
                    moved = True
                sent[(x, y)] = want
            if not moved:
                return rounds
        raise AssertionError("did not converge")

    assert converge() < 10
    for h in hives:
        assert set(tables[h].routes) == set(hives) - {h}
    assert tables["A"].route("C").hops == 2  # type: ignore[union-attr]
    # cut A-B: A must now reach B the long way round, through D and C
    sid = sids[("A", "B")]
    tables["A"].remove_peer(sid)
    tables["B"].remove_peer(sid)
    sent.pop(("A", "B"), None)
    sent.pop(("B", "A"), None)
    converge()
    route = tables["A"].route("B")
    assert route is not None and route.tail == ("D", "C", "B")
    for table in tables.values():
        for r in table.routes.values():
            assert table.hive_id not in r.tail and len(set(r.tail)) == len(r.tail)


def test_mesh_peers_share_their_own_nodes_and_their_wan_routes_one_hop_only() -> None:
    gw, host = LinkTable("A"), LinkTable("A")
    gw.add_peer(7, "wan", "B", "rb")
    gw.add_peer(1, "mesh", "A", "rhost")
    host.add_peer(1, "mesh", "A", "rgw")
    echo_b = node("WF.echo@B")
    gw.receive(7, lsa("B", "B", ["B"], [echo_b]))
    local_gw = [node("WF.echo@A")]
    to_host = gw.desired(1, local_gw)
    assert to_host["A"].nodes == tuple(local_gw) and to_host["B"].path == ("A", "B")
    deliver(host, 1, to_host, "A")
    route = host.route("B")
    assert route is not None and route.role == "mesh" and route.hops == 1 and route.sid == 1
    assert host.mesh_names["WF.echo@A"] == [(1, local_gw[0])]
    assert host.src_node(1, echo_b.uuid) == echo_b
    # the host has no WAN link: it re-advertises nothing learned over the mesh on the mesh
    assert set(host.desired(1, [])) == {"A"}
    # the gateway tells its WAN peer about the whole hive: its own nodes and the host's
    host_node = node("WF.worker@A")
    deliver(gw, 1, host.desired(1, [host_node]), "A")
    assert {n.name for n in gw.desired(7, local_gw)["A"].nodes} == {"WF.echo@A", "WF.worker@A"}
    # a mesh peer may not claim nodes of another hive as ours
    assert gw.receive(1, lsa("A", "A", ["A"], [node("WF.fake@B")])) is None
    assert all(not n.name.endswith("@B") for _, n in gw.mesh_nodes.values())


def test_a_node_list_split_over_frames_replaces_the_old_one_only_when_whole() -> None:
    a = LinkTable("A")
    a.add_peer(1, "wan", "B", "rb")
    many = [node(f"WF.n{i:05d}.{'x' * 200}@B") for i in range(1500)]
    parts = lsa_payloads(hive="B", router_id=str(uuid.uuid4()), router_name="RT.gateway@B", origin="B", path=["B"],
                         version=2, nodes=many, seqs=itertools.count(1), now_ms=0)
    assert len(parts) > 1
    for p in parts[:-1]:
        assert a.receive(1, p) is None
    assert a.route("B") is None  # incomplete: nothing replaced yet
    assert a.receive(1, parts[-1]) is None
    assert a.route("B").nodes == tuple(many)  # type: ignore[union-attr]


def test_lsa_age_uses_the_injected_clock() -> None:
    clock = Clock()
    a = LinkTable("A", clock)
    a.add_peer(1, "wan", "B", "rb")
    assert a.lsa_age(1) == (None, None)
    payload = lsa("B", "B", ["B"], [])
    a.receive(1, payload)
    clock.now += 2.5
    assert a.lsa_age(1) == (payload.seq, 2.5)


def test_a_peer_cannot_grow_the_table_without_bound() -> None:
    from fluxbee.dataplane.link import table as t

    a = LinkTable("A")
    a.add_peer(1, "wan", "B", "rb")
    for i in range(t.MAX_ORIGINS):
        assert a.receive(1, lsa("B", f"H{i}", ["B", f"H{i}"], [])) is None
    refused = a.receive(1, lsa("B", "Hmore", ["B", "Hmore"], []))
    assert isinstance(refused, Reject) and "origin hives" in refused.message
    b = LinkTable("A")
    b.add_peer(1, "wan", "B", "rb")
    for i in range(t.MAX_PENDING):
        half = lsa("B", f"P{i}", ["B", f"P{i}"], [])
        half.parts = 2
        assert b.receive(1, half) is None
    half = lsa("B", "Pmore", ["B", "Pmore"], [])
    half.parts = 2
    refused = b.receive(1, half)
    assert isinstance(refused, Reject) and "half-sent" in refused.message


def _bfs(edges: set[frozenset[str]], start: str) -> dict[str, int]:
    dist = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for h in frontier:
            for e in edges:
                if h in e:
                    (other,) = e - {h}
                    if other not in dist:
                        dist[other] = dist[h] + 1
                        nxt.append(other)
        frontier = nxt
    return dist


def test_random_topologies_converge_to_shortest_loop_free_paths_and_reconverge_after_cuts() -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(15):
        _random_topology(rng, seed)


def _random_topology(rng: random.Random, seed: int) -> None:
    hives = [f"H{i}" for i in range(rng.randint(3, 7))]
    edges = {frozenset((a, b)) for a in hives for b in hives if a < b and rng.random() < 0.45}
    tables = {h: LinkTable(h) for h in hives}
    nodes = {h: [node(f"WF.n@{h}")] for h in hives}
    sids: dict[tuple[str, str], int] = {}
    for i, e in enumerate(sorted(edges, key=sorted)):
        x, y = sorted(e)
        sids[(x, y)] = sids[(y, x)] = i + 1
        tables[x].add_peer(i + 1, "wan", y, "r" + y)
        tables[y].add_peer(i + 1, "wan", x, "r" + x)
    sent: dict[tuple[str, str], dict[str, Learned]] = {}

    def converge() -> None:
        for _round in range(40):
            moved = False
            for (x, y), sid in sids.items():
                if sid not in tables[x].peers:
                    continue
                want = tables[x].desired(sid, nodes[x])
                changed, withdrawn = diff(sent.get((x, y), {}), want)
                for origin, learned in changed.items():
                    tables[y].receive(sid, lsa(x, origin, list(learned.path), list(learned.nodes)))
                for origin in withdrawn:
                    tables[y].receive(sid, lsa(x, origin, [], []))
                moved = moved or bool(changed or withdrawn)
                sent[(x, y)] = want
            if not moved:
                return
        raise AssertionError(f"no convergence (seed {seed})")

    def check() -> None:
        for h in hives:
            dist = _bfs(edges, h)
            table = tables[h]
            assert set(table.routes) == set(dist) - {h}, f"seed {seed}"
            for origin, route in table.routes.items():
                assert route.hops == dist[origin], f"seed {seed}: {h}->{origin} {route.tail}"
                hops = (h, *route.tail)
                assert all(frozenset(pair) in edges for pair in zip(hops, hops[1:], strict=False)), f"seed {seed}"
                assert len(set(hops)) == len(hops), f"seed {seed}"
                assert table.by_uuid[nodes[origin][0].uuid][0] == origin

    converge()
    check()
    for e in rng.sample(sorted(edges, key=sorted), k=min(2, len(edges))):
        x, y = sorted(e)
        sid = sids.pop((x, y))
        sids.pop((y, x))
        tables[x].remove_peer(sid)
        tables[y].remove_peer(sid)
        sent.pop((x, y), None)
        sent.pop((y, x), None)
        edges.discard(e)
    converge()
    check()
