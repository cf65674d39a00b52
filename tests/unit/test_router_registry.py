"""The router's registry: nodes by UUID and name, VPN membership from the route table, and its memos."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fluxbee.dataplane.router.config import RouteTable
from fluxbee.dataplane.router.registry import Registry
from fluxbee.models import MatchKind, RouteAction, RouteSpec, VpnSpec

HIVE = "prod"
A, B, C = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


@dataclass(eq=False)
class Node:
    name: str
    vpn_id: int = 0
    congested_since: float | None = None

    @property
    def base(self) -> str:
        return self.name.split("@", 1)[0]


def vpn_table(version: int, pattern: str, vpn: int) -> RouteTable:
    return RouteTable.build(version, (), (VpnSpec(pattern=pattern, match_kind=MatchKind.EXACT, vpn_id=vpn),))


def test_a_node_is_found_by_uuid_full_name_and_base_name_until_it_is_removed() -> None:
    registry: Registry[Node] = Registry(HIVE)
    echo = Node("WF.echo@prod")
    registry.add(A, echo)
    assert (len(registry), registry.get(A), list(registry.nodes()), registry.uuids()) == (1, echo, [echo], [A])
    named = registry.named("WF.echo@prod")
    assert named is not None and named.conns == [echo]
    assert list(registry.of_base("WF.echo")) == [echo]
    assert registry.remove(A, echo)
    assert (len(registry), registry.get(A), registry.named("WF.echo@prod"), list(registry.of_base("WF.echo"))) == (
        0, None, None, [])
    assert not registry.remove(A, echo)  # gone already: nothing to do


def test_only_the_node_holding_a_uuid_can_be_removed_under_it() -> None:
    registry: Registry[Node] = Registry(HIVE)
    old, new = Node("WF.echo@prod"), Node("WF.echo@prod")
    registry.add(A, old)
    with pytest.raises(ValueError, match="registered already"):
        registry.add(A, new)
    assert registry.remove(A, old)
    registry.add(A, new)
    assert not registry.remove(A, old)  # a late goodbye of the replaced node leaves its successor alone
    assert registry.get(A) is new


def test_nodes_sharing_a_name_share_one_group_that_goes_when_the_last_leaves() -> None:
    registry: Registry[Node] = Registry(HIVE)
    a, b = Node("WF.sink@prod"), Node("WF.sink@prod")
    registry.add(A, a)
    registry.add(B, b)
    group = registry.named("WF.sink@prod")
    assert group is not None and group.conns == [a, b]
    registry.remove(A, a)
    assert group.conns == [b] and registry.named("WF.sink@prod") is group
    registry.remove(B, b)
    assert registry.named("WF.sink@prod") is None


def test_a_node_joins_the_vpn_its_name_is_given_and_moves_when_a_table_is_installed() -> None:
    registry: Registry[Node] = Registry(HIVE, vpn_table(1, "WF.blue", 4))
    blue, red, admin = Node("WF.blue@prod"), Node("WF.red@prod", vpn_id=9), Node("SY.admin@prod")
    for uuid, node in zip((A, B, C), (blue, red, admin), strict=True):
        registry.add(uuid, node)
    assert (blue.vpn_id, red.vpn_id, admin.vpn_id) == (4, 0, 0)  # a VPN set before joining is not kept
    moved = registry.install(vpn_table(2, "WF.red", 7))
    assert moved == [blue, red]
    assert (blue.vpn_id, red.vpn_id, admin.vpn_id) == (0, 7, 0)
    assert registry.install(vpn_table(3, "WF.red", 7)) == []  # nobody moves
    assert registry.table.version == 3 and registry.vpn_for("WF.red@prod") == 7
    assert registry.install(vpn_table(4, "SY.admin", 5)) == [red]  # system nodes stay in VPN 0


def test_a_destination_is_resolved_against_the_table_in_force() -> None:
    registry: Registry[Node] = Registry(HIVE)
    assert registry.resolve("WF.echo") == ("WF.echo@prod", "WF.echo", None)
    registry.install(RouteTable.build(1, (RouteSpec(prefix="WF.echo", action=RouteAction.DROP),), ()))
    full, base, route = registry.resolve("WF.echo@*")
    assert (full, base) == ("WF.echo@prod", "WF.echo")
    assert route is not None and route.spec.action is RouteAction.DROP
    registry.install(RouteTable.build(2, (), ()))
    assert registry.resolve("WF.echo").route is None  # the memo went with the old table


def test_reach_answers_names_no_route_decides_and_forgets_on_every_change() -> None:
    registry: Registry[Node] = Registry(HIVE)
    echo = Node("WF.echo@prod")
    assert registry.reach("WF.echo") is None and "WF.echo" not in registry.reached
    registry.add(A, echo)
    group = registry.reach("WF.echo")
    assert group is not None and group.conns == [echo] and registry.reached["WF.echo"] is group
    assert registry.reach(A) is None and registry.reach(A.replace("-", "")) is None  # UUIDs: not names
    registry.add(B, Node("WF.other@prod"))
    assert "WF.echo" not in registry.reached  # a node came
    registry.reach("WF.echo")
    registry.install(RouteTable.build(1, (RouteSpec(prefix="WF.echo", action=RouteAction.DROP),), ()))
    assert "WF.echo" not in registry.reached and registry.reach("WF.echo") is None  # a route decides it now
    registry.install(RouteTable.build(2, (), ()))
    registry.reach("WF.echo")
    registry.remove(A, echo)
    assert "WF.echo" not in registry.reached and registry.reach("WF.echo") is None  # the node left
