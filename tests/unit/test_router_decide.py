"""The router's routing rules, as pure decisions over plain nodes and a registry (no router, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import decide
from fluxbee.dataplane.router.config import RouteTable
from fluxbee.dataplane.router.registry import Registry, full_name, pick
from fluxbee.models import RouteAction, RouteSpec

HIVE = "prod"
USER = wire.MetaView()
NODE = "00000000-0000-4000-8000-000000000001"


@dataclass(eq=False)
class Node:
    name: str
    vpn_id: int = 0
    congested_since: float | None = None
    claimed: bool = False
    grants: frozenset[str] = frozenset()
    uuid: str | None = NODE  # as a sender: the UUID its HELLO registered

    @property
    def base(self) -> str:
        return self.name.split("@", 1)[0]


def registry_of(*nodes: Node, routes: tuple[RouteSpec, ...] = ()) -> Registry[Node]:
    registry: Registry[Node] = Registry(HIVE, RouteTable.build(1, routes, ()))
    for i, node in enumerate(nodes):
        vpn = node.vpn_id
        registry.add(f"00000000-0000-4000-8000-{i + 1:012x}", node)  # the first is NODE
        node.vpn_id = vpn  # these tests set VPNs by hand, not by rule
    return registry


def to_name(dst: str, *nodes: Node, routes: tuple[RouteSpec, ...] = ()) -> object:
    decision = decide.by_name(dst, registry_of(*nodes, routes=routes))
    return decision.target if isinstance(decision, decide.Deliver) else decision


def test_a_name_without_a_hive_is_a_name_of_this_hive() -> None:
    assert full_name("WF.echo", HIVE) == ("WF.echo@prod", "WF.echo")
    assert full_name("WF.echo@other", HIVE) == ("WF.echo@other", "WF.echo")
    assert full_name("WF.echo@*", HIVE) == ("WF.echo@prod", "WF.echo")


def test_a_connected_name_is_delivered_to_its_node() -> None:
    echo = Node("WF.echo@prod")
    assert to_name("WF.echo", echo) is echo


def test_nodes_sharing_a_name_take_turns_and_a_congested_one_is_skipped() -> None:
    a, b, c = Node("WF.sink@prod"), Node("WF.sink@prod"), Node("WF.sink@prod")
    group = registry_of(a, b, c).named("WF.sink@prod")
    assert group is not None
    assert [pick(group) for _ in range(4)] == [a, b, c, a]
    b.congested_since = 1.0
    assert [pick(group) for _ in range(3)] == [c, a, c]


def test_when_every_node_of_a_name_is_congested_the_turn_still_moves_on() -> None:
    a, b = Node("WF.sink@prod", congested_since=1.0), Node("WF.sink@prod", congested_since=1.0)
    group = registry_of(a, b).named("WF.sink@prod")
    assert group is not None
    assert [pick(group) for _ in range(3)] == [a, b, a]


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
    registry = registry_of(node)
    spellings = (NODE.replace("-", "").upper(), NODE.upper(), NODE.replace("-", ""))
    assert [decide.to_node(s, registry) for s in spellings] == [decide.Deliver(node)] * 3
    assert decide.to_node("00000000-0000-4000-8000-000000000009", registry) == decide.Refuse(
        wire.NODE_NOT_FOUND, "no node with this UUID is connected")
    assert decide.by_uuid(NODE, registry_of()) == decide.Refuse(wire.NODE_NOT_FOUND,
                                                                 "no node with this UUID is connected")


def test_a_destination_that_is_not_a_uuid_is_a_name() -> None:
    echo = Node("WF.echo@prod")
    registry = registry_of(echo)
    assert decide.to_node("WF.echo", registry) == decide.Deliver(echo)
    assert decide.to_node("WF.echo@prod", registry) == decide.Deliver(echo)
    refused = decide.to_node("not-quite-a-uuid-0000-4000-8000-000000000001", registry)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.NODE_NOT_FOUND


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


def test_a_frame_claiming_another_source_is_refused_src_mismatch_and_counted_as_rejected() -> None:
    sender = Node("WF.client@prod")
    assert decide.screen(sender, NODE, None) is None
    refused = decide.screen(sender, "00000000-0000-4000-8000-000000000002", None)
    assert isinstance(refused, decide.Refuse)
    assert (refused.reason, refused.rejected, refused.dropped) == (wire.SRC_MISMATCH, wire.SRC_MISMATCH, None)
    assert "00000000-0000-4000-8000-000000000002" in refused.detail
    # Bound to the exact spelling the HELLO registered: another spelling of the same UUID is another claim.
    assert isinstance(decide.screen(sender, NODE.replace("-", ""), None), decide.Refuse)
    assert isinstance(decide.screen(Node("WF.client@prod", uuid=None), NODE, None), decide.Refuse)  # no HELLO


def test_privileged_messages_need_a_proven_system_node_or_a_grant() -> None:
    for msg in (wire.CONFIG_CHANGED, wire.ADMIN_COMMAND):
        assert decide.screen(Node("WF.client@prod"), NODE, msg) == decide.Forbidden(msg)
        assert decide.screen(Node("SY.admin@prod"), NODE, msg) == decide.Forbidden(msg)  # not proven
        assert decide.screen(Node("SY.admin@prod", claimed=True), NODE, msg) is None
        granted = Node("WF.ops@prod", claimed=True, grants=frozenset({msg}))
        assert decide.screen(granted, NODE, msg) is None
        assert decide.screen(Node("WF.ops@prod", claimed=True), NODE, msg) == decide.Forbidden(msg)
    assert decide.screen(Node("WF.client@prod"), NODE, wire.ADMIN_COMMAND_RESPONSE) is None


def test_the_source_is_checked_before_the_privilege() -> None:
    refused = decide.screen(Node("WF.client@prod"), "00000000-0000-4000-8000-000000000002",
                            wire.ADMIN_COMMAND)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.SRC_MISMATCH


def test_a_frame_with_ttl_zero_has_expired_and_any_other_ttl_goes_on() -> None:
    assert decide.expired(0) is decide.EXPIRED
    assert decide.expired(1) is None
    assert decide.expired(wire.DEFAULT_TTL) is None


def test_system_and_privileged_metas_need_the_rules_and_plain_ones_do_not() -> None:
    assert not decide.needs_rules(USER)
    assert not decide.needs_rules(wire.MetaView(type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND_RESPONSE))
    assert decide.needs_rules(wire.MetaView(type=wire.TYPE_SYSTEM))
    assert decide.needs_rules(wire.MetaView(type=wire.TYPE_SYSTEM, msg=wire.NODE_STATUS_GET))
    for meta_type in (wire.TYPE_ADMIN, "user"):
        assert decide.needs_rules(wire.MetaView(type=meta_type, msg=wire.ADMIN_COMMAND))
        assert decide.needs_rules(wire.MetaView(type=meta_type, msg=wire.CONFIG_CHANGED))


@dataclass
class Holders:
    """The identity indexes a loaded policy offers the target rules."""

    handlers: dict[str, str]
    tags: dict[str, tuple[str, ...]]

    def handler_of(self, ilk: str) -> str | None:
        return self.handlers.get(ilk)

    def holders(self, tag: str) -> tuple[str, ...] | None:
        return self.tags.get(tag)


class Reach:
    def __init__(self, *hives: str) -> None:
        self.hives = hives

    def reaches(self, hive: str) -> bool:
        return hive in self.hives

    def hives_with(self, base: str) -> tuple[str, ...]:
        return ()


def test_a_policy_target_capability_takes_turns_over_the_live_nodes_holding_it() -> None:
    a, b, other = Node("AI.a@prod"), Node("AI.b@prod"), Node("AI.c@prod")
    registry = registry_of(a, b, other)
    holders = Holders({}, {"billing": ("AI.a@prod", "AI.b", "AI.gone@prod"), "nobody": ()})
    turns: dict[str, int] = {}
    picked = [decide.policy_target("billing", registry, None, holders, turns) for _ in range(4)]
    assert [d.target for d in picked if isinstance(d, decide.Deliver)] == [a, b, a, b], \
        "a node of the list that is not connected is skipped; a name without @hive is of this hive"
    refused = decide.policy_target("nobody", registry, None, holders, turns)
    assert isinstance(refused, decide.Refuse) and refused.reason == wire.OPA_NO_TARGET
    far = Holders({}, {"x": ("AI.far@east",)})
    forward = decide.policy_target("x", registry, Reach("east"), far, {})
    assert forward == decide.Forward("east", "AI.far@east"), "a live remote hive counts, and the name is stamped"
    gone = decide.policy_target("x", registry, Reach(), far, {})
    assert isinstance(gone, decide.Refuse) and gone.reason == wire.OPA_NO_TARGET


def test_a_policy_target_ilk_goes_to_its_handler_and_anything_else_is_a_name() -> None:
    a = Node("AI.a@prod")
    registry = registry_of(a)
    holders = Holders({"ilk:1": "AI.a@prod", "ilk:2": ""}, {})
    hit = decide.policy_target("ilk:1", registry, None, holders, {})
    assert isinstance(hit, decide.Deliver) and hit.target is a
    no_handler = decide.policy_target("ilk:3", registry, None, holders, {})
    assert isinstance(no_handler, decide.Refuse) and no_handler.reason == wire.OPA_NO_TARGET
    named = decide.policy_target("AI.a", registry, None, holders, {})
    assert isinstance(named, decide.Deliver) and named.target is a
    unknown = decide.policy_target("AI.zzz", registry, None, holders, {})
    assert isinstance(unknown, decide.Refuse) and unknown.reason == wire.NODE_NOT_FOUND


def test_an_action_needs_the_rules_only_while_a_policy_guards_actions() -> None:
    acting = wire.MetaView(action="system_status")
    assert not decide.needs_rules(acting) and decide.needs_rules(acting, guard_actions=True)
    assert not decide.needs_rules(wire.MetaView(action=7), guard_actions=True), "only a string is an action"
    assert not decide.needs_rules(USER, guard_actions=True)
