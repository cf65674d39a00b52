"""Route and VPN matching rules (pure)."""

from __future__ import annotations

import pytest

from fluxbee.dataplane.router.config import ConfigError, RouteTable, parse_config, parse_routes, split_name
from fluxbee.models import MatchKind, RouteAction, RouteSpec, VpnSpec


def table(routes: list[dict[str, object]] = (), vpns: list[dict[str, object]] = ()) -> RouteTable:  # type: ignore[assignment]
    return RouteTable.build(1, [RouteSpec.model_validate(r) for r in routes], [VpnSpec.model_validate(v) for v in vpns])


def test_prefix_matches_on_a_dot_boundary_only() -> None:
    t = table([{"prefix": "AI.sales", "action": "DROP"}])
    assert t.route_for("AI.sales@h") is not None
    assert t.route_for("AI.sales.l1@h") is not None
    assert t.route_for("AI.salesforce@h") is None


def test_the_most_specific_route_wins_then_exact_over_prefix() -> None:
    t = table([
        {"prefix": "AI.*", "match_kind": "GLOB", "action": "DROP"},
        {"prefix": "AI.sales.*", "action": "DROP"},
        {"prefix": "AI.sales.vip", "match_kind": "EXACT", "action": "FORWARD"},
    ])
    assert t.route_for("AI.sales.vip@h").spec.action is RouteAction.FORWARD  # type: ignore[union-attr]
    assert t.route_for("AI.sales.x@h").spec.prefix == "AI.sales.*"  # type: ignore[union-attr]
    assert t.route_for("AI.support@h").spec.match_kind is MatchKind.GLOB  # type: ignore[union-attr]
    assert t.route_for("WF.x@h") is None


def test_patterns_with_a_hive_match_the_full_name() -> None:
    t = table([{"prefix": "AI.x@prod", "match_kind": "EXACT", "action": "DROP"}])
    assert t.route_for("AI.x@prod") is not None
    assert t.route_for("AI.x@dev") is None


def test_priority_breaks_ties_between_equally_specific_routes() -> None:
    t = table([{"prefix": "AI.a", "action": "DROP", "priority": 50},
               {"prefix": "AI.a.*", "action": "FORWARD", "priority": 10}])
    assert t.route_for("AI.a.b@h").spec.priority == 10  # type: ignore[union-attr]


def test_vpn_rules_apply_by_ascending_priority_and_system_nodes_stay_in_vpn_0() -> None:
    t = table(vpns=[{"pattern": "WF", "vpn_id": 1, "priority": 200},
                    {"pattern": "WF.red", "vpn_id": 2, "priority": 100}])
    assert t.vpn_for("WF.red.x@h") == 2
    assert t.vpn_for("WF.blue@h") == 1
    assert t.vpn_for("SY.admin@h") == 0
    assert t.vpn_for("AI.other@h") == 0


def test_split_name_takes_the_hive_after_the_last_at() -> None:
    assert split_name("IO.mail.a@b@prod") == ("IO.mail.a@b", "prod")
    assert split_name("WF.x") == ("WF.x", "")


@pytest.mark.parametrize("text, needle", [
    ("routes: 5", "routes"),
    ("- just a list", "mapping"),
    ("routes: [{prefix: AI.x, action: EXPLODE}]", "action"),
    ("vpns: [{pattern: WF.x}]", "vpn"),
    ("version: -1", "version"),
    ("{unclosed", "invalid YAML"),
])
def test_bad_config_files_are_refused_with_the_field_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "hive.yaml")
    assert needle in str(err.value) and "hive.yaml" in str(err.value)


def test_config_changed_payloads_accept_a_wrapped_or_bare_list() -> None:
    assert parse_routes({"routes": [{"prefix": "AI.x"}]}) == parse_routes([{"prefix": "AI.x"}])
    with pytest.raises(ConfigError):
        parse_routes("nope")


def test_the_route_cache_is_bounded() -> None:
    t = table([{"prefix": "AI.x", "action": "DROP"}])
    for i in range(70_000):
        t.route_for(f"WF.n{i}@h")
    assert len(t._cache) <= 65_536
