"""The router's routing rules, as pure decisions over plain nodes (no router, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import decide
from fluxbee.dataplane.router.config import RouteTable
from fluxbee.models import RouteAction, RouteSpec

HIVE = "prod"
USER = wire.MetaView()


@dataclass(eq=False)
class Node:
    name: str
    vpn_id: int = 0
    congested_since: float | None = None

    @property
    def base(self) -> str:
        return self.name.split("@", 1)[0]


def names_of(*nodes: Node) -> dict[str, decide.Names[Node]]:
    table: dict[str, decide.Names[Node]] = {}
    for node in nodes:
        table.setdefault(node.name, decide.Names()).conns.append(node)
    return table


def bases_of(*nodes: Node) -> dict[str, list[Node]]:
    table: dict[str, list[Node]] = {}
    for node in nodes:
        table.setdefault(node.base, []).append(node)
    return table


def to_name(dst: str, *nodes: Node, routes: tuple[RouteSpec, ...] = ()) -> object:
    full, base = decide.full_name(dst, HIVE)
    route = RouteTable.build(1, routes, ()).route_for(full)
    return decide.by_name(dst, full, base, route, HIVE, names_of(*nodes), bases_of(*nodes))


def test_a_name_without_a_hive_is_a_name_of_this_hive() -> None:
    assert decide.full_name("WF.echo", HIVE) == ("WF.echo@prod", "WF.echo")
    assert decide.full_name("WF.echo@other", HIVE) == ("WF.echo@other", "WF.echo")
    assert decide.full_name("WF.echo@*", HIVE) == ("WF.echo@prod", "WF.echo")


def test_a_connected_name_is_delivered_to_its_node() -> None:
    echo = Node("WF.echo@prod")
    assert to_name("WF.echo", echo) is echo


def test_nodes_sharing_a_name_take_turns_and_a_congested_one_is_skipped() -> None:
    a, b, c = Node("WF.sink@prod"), Node("WF.sink@prod"), Node("WF.sink@prod")
    group = names_of(a, b, c)["WF.sink@prod"]
    assert [decide.pick(group) for _ in range(4)] == [a, b, c, a]
    b.congested_since = 1.0
    assert [decide.pick(group) for _ in range(3)] == [c, a, c]


def test_when_every_node_of_a_name_is_congested_the_turn_still_moves_on() -> None:
    a, b = Node("WF.sink@prod", congested_since=1.0), Node("WF.sink@prod", congested_since=1.0)
    group = names_of(a, b)["WF.sink@prod"]
    assert [decide.pick(group) for _ in range(3)] == [a, b, a]


def test_an_unknown_name_is_node_not_found_and_a_name_of_another_hive_is_wan_unavailable() -> None:
    assert to_name("WF.nobody") == decide.Refuse(wire.NODE_NOT_FOUND, "no node named WF.nobody@prod is connected")
    refused = to_name("WF.far@elsewhere")
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.WAN_UNAVAILABLE


def test_a_drop_route_wins_over_a_connected_node_and_is_silent() -> None:
    echo = Node("WF.echo@prod")
    drop = RouteSpec(prefix="WF.echo", action=RouteAction.DROP)
    assert to_name("WF.echo", echo, routes=(drop,)) == decide.Drop("ROUTE_DROP")


def test_a_route_to_another_hive_is_refused_without_a_gateway() -> None:
    echo = Node("WF.echo@prod")
    forward = RouteSpec(prefix="WF.echo", next_hop_hive="other")
    refused = to_name("WF.echo", echo, routes=(forward,))
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.WAN_UNAVAILABLE
    assert "'other'" in refused.detail


def test_any_hive_reaches_a_node_by_its_base_name() -> None:
    echo = Node("WF.echo@prod")
    assert to_name("WF.echo@*", echo) is echo


def test_a_uuid_is_looked_up_in_any_spelling() -> None:
    node = Node("WF.echo@prod")
    uuid = "00000000-0000-4000-8000-000000000001"
    assert decide.by_uuid(uuid.replace("-", "").upper(), {uuid: node}) is node
    assert decide.by_uuid(uuid, {}) == decide.Refuse(wire.NODE_NOT_FOUND, "no node with this UUID is connected")


def test_vpns_separate_nodes_unless_a_system_node_or_a_global_system_message_is_involved() -> None:
    blue, red = Node("WF.blue@prod", vpn_id=1), Node("WF.red@prod", vpn_id=2)
    refused = decide.unicast(blue, red, USER)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.VPN_BLOCKED
    same = Node("WF.blue2@prod", vpn_id=1)
    assert decide.unicast(blue, same, USER) == decide.Deliver(same)
    assert decide.may_reach(blue, Node("SY.admin@prod", vpn_id=0), USER)
    assert decide.may_reach(blue, red, wire.MetaView(type=wire.TYPE_SYSTEM, scope="global"))
    assert not decide.may_reach(blue, red, wire.MetaView(type=wire.TYPE_SYSTEM))


def test_a_broadcast_needs_a_uuid_trace_id_and_is_fanned_out_once() -> None:
    trace = "00000000-0000-4000-8000-0000000000aa"
    refused = decide.broadcast("not-a-uuid", {})
    assert isinstance(refused, decide.Refuse) and refused.dropped == "BROADCAST_TRACE_ID_NOT_UUID"
    assert decide.broadcast(trace, {}) is None
    assert decide.broadcast(trace, {trace: 1.0}) == decide.Drop("BROADCAST_DUPLICATE")


def test_a_broadcast_reaches_the_other_matching_nodes_its_sender_may_reach() -> None:
    src = Node("WF.src@prod", vpn_id=1)
    a, b = Node("WF.sink.a@prod", vpn_id=1), Node("WF.sink.b@prod", vpn_id=1)
    other_vpn, other_name = Node("WF.sink.c@prod", vpn_id=2), Node("AI.x@prod", vpn_id=1)
    peers = [src, a, b, other_vpn, other_name]
    assert list(decide.fan_out(src, peers, USER)) == [a, b, other_name]
    assert list(decide.fan_out(src, peers, wire.MetaView(target="WF.sink.*"))) == [a, b]
    assert list(decide.fan_out(src, peers, wire.MetaView(target="AI.x"))) == [other_name]
