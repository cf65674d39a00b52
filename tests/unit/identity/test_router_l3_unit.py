"""The router's identity pre-resolve (L3) against a real identity region: decisions and counters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from fluxbee.dataplane.router import l3
from fluxbee.dataplane.shm import identity as ish

TENANT = f"tnt:{uuid.uuid4()}"


def ilk() -> str:
    return f"ilk:{uuid.uuid4()}"


@pytest.fixture
def hive() -> Iterator[str]:
    yield f"l{uuid.uuid4().hex[:8]}"


@pytest.fixture
def region(hive: str) -> Iterator[ish.IdentityRegionWriter]:
    w = ish.IdentityRegionWriter(hive, capacity=ish.Capacity(ilk_slots=64, chan_slots=64, heap_size=4096))
    yield w
    w.close()


def test_temporary_sources_go_to_the_configured_front_desk_and_dst_ilk_to_its_handler(
        hive: str, region: ish.IdentityRegionWriter) -> None:
    temp, person, agent, merged = ilk(), ilk(), ilk(), ilk()
    with region.batch():
        region.put_ilk(temp, tenant_id=TENANT, ilk_type="human", registration_status="temporary")
        region.put_ilk(person, tenant_id=TENANT, ilk_type="human", registration_status="complete")
        region.put_ilk(agent, tenant_id=TENANT, ilk_type="agent", registration_status="complete",
                       handler_node="AI.support@h")
        region.put_alias(merged, person, int(time.time() * 1000) + 60_000)
    r = l3.L3Resolver(hive, "SY.desk")
    try:
        assert r.resolve(temp, agent) == l3.L3Decision(f"SY.desk@{hive}", None, l3.FRONTDESK)
        assert r.resolve(person, agent) == l3.L3Decision("AI.support@h", None, l3.DST_ILK)
        assert r.resolve(merged, agent) == l3.L3Decision("AI.support@h", person, l3.DST_ILK)
        assert r.resolve(person, None) is None
        assert r.resolve(None, None) is None
        assert r.snapshot() == {
            "frontdesk": f"SY.desk@{hive}", "region": ish.region_name(hive), "region_open": True, "alias_rewrites": 1,
            "outcomes": {"frontdesk": 1, "dst_ilk": 2, "no_decision": 1, "no_ilk": 1, "no_region": 0,
                         "read_timeout": 0}}
        text = r.prometheus()
        assert 'fluxbee_router_l3_total{outcome="dst_ilk"} 2' in text
        assert 'fluxbee_router_l3_total{outcome="frontdesk"} 1' in text
        assert "fluxbee_router_l3_alias_rewrites_total 1" in text and "fluxbee_router_l3_region_open 1" in text
    finally:
        r.close()


def test_without_a_region_the_resolver_fails_open_and_counts_it(hive: str) -> None:
    r = l3.L3Resolver(hive, "SY.frontdesk.gov@other")
    assert r.frontdesk == "SY.frontdesk.gov@other", "a full name is kept as given"
    assert r.resolve(ilk(), None) is None
    snap = r.snapshot()
    assert snap["outcomes"]["no_region"] == 1 and snap["region_open"] is False  # type: ignore[index]
