"""The routing rules with links: other hives, next_hop_hive routes and name@* become Forward decisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import decide
from fluxbee.dataplane.router.config import RouteTable
from fluxbee.dataplane.router.registry import Registry
from fluxbee.models import RouteAction, RouteSpec

HIVE = "A"


@dataclass(eq=False)
class Node:
    name: str
    vpn_id: int = 0
    congested_since: float | None = None

    @property
    def base(self) -> str:
        return self.name.split("@", 1)[0]


@dataclass
class Links:
    hives: set[str] = field(default_factory=set)
    bases: dict[str, list[str]] = field(default_factory=dict)

    def reaches(self, hive: str) -> bool:
        return hive in self.hives

    def hives_with(self, base: str) -> Sequence[str]:
        return self.bases.get(base, [])


def to_name(dst: str, *nodes: Node, links: Links | None, routes: tuple[RouteSpec, ...] = (),
            remote: tuple[Node, ...] = ()) -> object:
    registry: Registry[Node] = Registry(HIVE, RouteTable.build(1, routes, ()))
    for i, node in enumerate(nodes):
        registry.add(f"00000000-0000-4000-8000-{i + 1:012x}", node)
    for node in remote:
        registry.add_remote(node)
    decision = decide.by_name(dst, registry, links)
    return decision.target if isinstance(decision, decide.Deliver) else decision


def test_a_name_of_a_reachable_hive_is_forwarded_there_and_of_an_unreachable_one_is_wan_unavailable() -> None:
    links = Links(hives={"B"})
    assert to_name("WF.echo@B", links=links) == decide.Forward("B")
    refused = to_name("WF.echo@C", links=links)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.WAN_UNAVAILABLE
    assert "no link reaches" in refused.detail


def test_a_next_hop_route_forwards_even_over_a_local_node_when_the_hive_is_reachable() -> None:
    echo = Node("WF.echo@A")
    route = RouteSpec(prefix="WF.echo", next_hop_hive="B")
    assert to_name("WF.echo", echo, links=Links(hives={"B"}), routes=(route,)) == decide.Forward("B", "WF.echo@B")
    refused = to_name("WF.echo", echo, links=Links(), routes=(route,))
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.WAN_UNAVAILABLE
    # a DROP still wins, links or not
    drop = RouteSpec(prefix="WF.echo", action=RouteAction.DROP)
    assert to_name("WF.echo", echo, links=Links(hives={"B"}), routes=(drop,)) == decide.Drop("ROUTE_DROP")
    # a route naming our own hive is no forward
    own = RouteSpec(prefix="WF.echo", next_hop_hive="A")
    assert to_name("WF.echo", echo, links=Links(hives={"B"}), routes=(own,)) is echo


def test_name_at_star_prefers_our_hive_then_the_nearest_hive_that_has_the_name() -> None:
    links = Links(hives={"B", "C"}, bases={"WF.echo": ["C", "B"]})
    local = Node("WF.echo@A")
    assert to_name("WF.echo@*", local, links=links) is local
    assert to_name("WF.echo@*", links=links) == decide.Forward("C", "WF.echo@C")
    assert isinstance(to_name("WF.other@*", links=links), decide.Refuse)


def test_without_links_the_rules_are_unchanged() -> None:
    refused = to_name("WF.echo@B", links=None)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.WAN_UNAVAILABLE


def test_a_mesh_peers_node_shares_the_name_with_local_ones_but_not_the_node_table() -> None:
    local, far = Node("WF.echo@A"), Node("WF.echo@A")
    registry: Registry[Node] = Registry(HIVE, RouteTable.build(1, (), ()))
    registry.add("00000000-0000-4000-8000-000000000001", local)
    registry.add_remote(far)
    picked = [decide.by_name("WF.echo", registry) for _ in range(4)]
    assert [d.target for d in picked if isinstance(d, decide.Deliver)] == [local, far, local, far]
    assert list(registry.nodes()) == [local]
    assert decide.by_name("WF.echo@*", Registry(HIVE)) == decide.Refuse(wire.NODE_NOT_FOUND,
                                                                        "no node named WF.echo@A is connected")
    registry.remove_remote(far)
    assert [decide.by_name("WF.echo", registry) for _ in range(2)] == [decide.Deliver(local)] * 2
