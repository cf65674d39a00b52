"""The system half of a policy's data, built from identity records (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxbee.dataplane.policy import SYSTEM_DATA_KEYS, IdentityRecord, build_identity_data, build_input, merge_data
from fluxbee.dataplane.policy.errors import PolicyLoadError


def agent(ilk: str, *caps: str, roles: tuple[str, ...] = (), node: str = "") -> IdentityRecord:
    return IdentityRecord(ilk=ilk, type="agent", tenant="tnt:a", capabilities=caps, roles=roles, handler_node=node)


def test_identities_are_published_with_sorted_deduplicated_capabilities_and_roles() -> None:
    doc = build_identity_data([
        agent("ilk:2", "billing", "billing", "refunds", roles=("l2", "l1"), node="AI.billing@h"),
        IdentityRecord(ilk="ilk:1", type="human", human_subtype="internal", tenant="tnt:a", roles=("ops",)),
    ])
    assert doc["identity"]["ilk:2"] == {
        "type": "agent", "human_subtype": "", "tenant": "tnt:a", "capabilities": ["billing", "refunds"],
        "roles": ["l1", "l2"], "handler_node": "AI.billing@h"}
    assert doc["identity"]["ilk:1"]["human_subtype"] == "internal"
    unclassified = build_identity_data([IdentityRecord(ilk="ilk:h", type="human", tenant="t")])
    assert unclassified["identity"]["ilk:h"]["human_subtype"] == "", "a human nobody classified yet"
    assert set(doc) == SYSTEM_DATA_KEYS


def test_capability_and_role_indexes_list_every_holder_in_sorted_order() -> None:
    doc = build_identity_data([agent("ilk:c", "billing"), agent("ilk:a", "billing", "sales"),
                               agent("ilk:b", "sales", roles=("lead",))])
    assert doc["by_capability"] == {"billing": ["ilk:a", "ilk:c"], "sales": ["ilk:a", "ilk:b"]}
    assert doc["by_role"] == {"lead": ["ilk:b"]}


def test_the_same_records_in_another_order_give_the_same_document() -> None:
    records = [agent(f"ilk:{i}", f"cap{i % 3}", roles=(f"r{i % 2}",)) for i in range(20)]
    assert build_identity_data(records) == build_identity_data(list(reversed(records)))


def test_alias_chains_are_followed_to_the_canonical_ilk() -> None:
    doc = build_identity_data([agent("ilk:c")], {"ilk:a": "ilk:b", "ilk:b": "ilk:c"})
    assert doc["identity_aliases"] == {"ilk:a": "ilk:c", "ilk:b": "ilk:c"}


@pytest.mark.parametrize("aliases", [{"ilk:a": "ilk:a"}, {"ilk:a": "ilk:b", "ilk:b": "ilk:a"}])
def test_an_alias_cycle_is_refused(aliases: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="alias cycle"):
        build_identity_data([], aliases)


@pytest.mark.parametrize(("record", "message"), [
    (IdentityRecord(ilk="", type="agent", tenant="t"), "without an ILK"),
    (IdentityRecord(ilk="ilk:x", type="robot", tenant="t"), "unknown type 'robot'"),
    (IdentityRecord(ilk="ilk:x", type="human", human_subtype="vip", tenant="t"), "human subtype 'vip'"),
    (IdentityRecord(ilk="ilk:x", type="agent", human_subtype="internal", tenant="t"), "on a agent identity"),
    (IdentityRecord(ilk="ilk:x", type="agent", tenant="t", capabilities=("",)), "empty or non-string capability"),
    (IdentityRecord(ilk="ilk:x", type="agent", tenant="t", roles=("ok", "")), "empty or non-string role"),
])
def test_a_bad_record_is_refused_naming_the_ilk_and_the_field(record: IdentityRecord, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_identity_data([record])


def test_a_duplicate_ilk_is_refused() -> None:
    with pytest.raises(ValueError, match="ilk:1 appears twice"):
        build_identity_data([agent("ilk:1"), agent("ilk:1", "x")])


def test_ten_thousand_identities_index_every_capability_holder() -> None:
    records = [agent(f"ilk:{i:05d}", f"cap{i % 2000}", f"cap{(i * 7) % 2000}") for i in range(10_000)]
    doc = build_identity_data(records)
    assert len(doc["identity"]) == 10_000
    for cap, holders in doc["by_capability"].items():
        assert holders == sorted(holders)
        assert all(cap in doc["identity"][ilk]["capabilities"] for ilk in holders)
    total = sum(len(h) for h in doc["by_capability"].values())
    assert total == sum(len(v["capabilities"]) for v in doc["identity"].values())


def test_the_input_carries_meta_routing_and_the_canonical_ilk() -> None:
    meta = {"action": "system_status", "context": {"required_capability": "billing"}, "target": None}
    doc = build_input(meta, src="6f1c", src_l2_name="IO.wa@h", src_ilk="ilk:1")
    assert doc == {"meta": meta, "routing": {"src": "6f1c", "src_l2_name": "IO.wa@h"}, "src_ilk": "ilk:1"}
    assert doc["meta"] is not meta  # the caller's dict is not shared


def test_system_data_merges_over_the_policys_own_data_and_owns_only_its_keys() -> None:
    system = build_identity_data([agent("ilk:1")])
    merged = merge_data({"tiers": {"gold": 1}}, system)
    assert merged["tiers"] == {"gold": 1} and merged["identity"] == system["identity"]
    with pytest.raises(PolicyLoadError, match="does not own: tiers"):
        merge_data({}, {"tiers": {}})
    with pytest.raises(PolicyLoadError, match="defines system keys: identity"):
        merge_data({"identity": {}}, system)


_names = st.text(alphabet="abcdefgh.", min_size=1, max_size=6)


@st.composite
def _records(draw: st.DrawFn) -> list[IdentityRecord]:
    ilks = draw(st.lists(st.integers(0, 10_000), unique=True, max_size=40))
    out = []
    for n in ilks:
        kind = draw(st.sampled_from(["human", "agent", "system"]))
        out.append(IdentityRecord(
            ilk=f"ilk:{n}", type=kind, tenant=draw(st.sampled_from(["tnt:a", "tnt:b"])),
            human_subtype=draw(st.sampled_from(["internal", "external"])) if kind == "human" else "",
            capabilities=tuple(draw(st.lists(_names, max_size=4))), roles=tuple(draw(st.lists(_names, max_size=3)))))
    return out


@given(_records())
def test_the_indexes_hold_exactly_the_holders_of_each_capability_and_role(records: list[IdentityRecord]) -> None:
    doc = build_identity_data(records)
    assert set(doc["identity"]) == {r.ilk for r in records}
    for index, field in (("by_capability", "capabilities"), ("by_role", "roles")):
        expected: dict[str, set[str]] = {}
        for r in records:
            for value in getattr(r, field):
                expected.setdefault(value, set()).add(r.ilk)
        assert {k: set(v) for k, v in doc[index].items()} == expected
        assert all(v == sorted(set(v)) for v in doc[index].values())
