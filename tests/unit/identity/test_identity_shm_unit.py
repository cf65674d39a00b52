"""The identity region: lookups, aliases, tombstones, compaction, seqlock, takeover."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from fluxbee.dataplane.shm import identity as ish

HIVE = f"u{uuid.uuid4().hex[:8]}"


def ilk() -> str:
    return f"ilk:{uuid.uuid4()}"


@pytest.fixture
def writer() -> Iterator[ish.IdentityRegionWriter]:
    w = ish.IdentityRegionWriter(HIVE, capacity=ish.Capacity(ilk_slots=64, chan_slots=64, heap_size=4096))
    yield w
    w.close()


def test_channel_keys_follow_one_normalisation_rule() -> None:
    assert ish.normalise_channel(" WhatsApp ", " +34 ") == ("whatsapp", "+34")
    assert ish.normalise_channel("email", "Ana@X.com") == ("email", "ana@x.com")
    assert ish.normalise_channel("telegram", "@AnaBot") == ("telegram", "@AnaBot"), "handles keep their case"


def test_lookup_alias_and_removal(writer: ish.IdentityRegionWriter) -> None:
    t1, t2 = f"tnt:{uuid.uuid4()}", f"tnt:{uuid.uuid4()}"
    a, b = ilk(), ilk()
    with writer.batch():
        writer.put_ilk(a, tenant_id=t1, ilk_type="human", registration_status="temporary")
        writer.put_ilk(b, tenant_id=t1, ilk_type="agent", registration_status="complete", handler_node="AI.a@h")
        writer.put_channel("whatsapp", "+1", t1, ilk_id=a, ich_id=f"ich:{uuid.uuid4()}")
    with ish.IdentityRegionReader(HIVE) as r:
        assert r.lookup_channel("WhatsApp", "+1", t1).ilk_id == a  # type: ignore[union-attr]
        assert r.lookup_channel("whatsapp", "+1", t2) is None, "the tenant is part of the key"
        assert r.get_ilk(b).handler_node == "AI.a@h"  # type: ignore[union-attr]
        with writer.batch():
            writer.remove_ilk(a)
            writer.put_alias(a, b, ish.epoch_ms() + 60_000)
            writer.remove_channel("whatsapp", "+1", t1)
        assert r.canonical(a) == b and r.resolve(a).ilk_id == b  # type: ignore[union-attr]
        assert r.canonical(a, now_ms=ish.epoch_ms() + 120_000) == a, "an expired alias is ignored"
        assert r.lookup_channel("whatsapp", "+1", t1) is None
        h = r.header()
        assert (h.ilk_count, h.alias_count, h.chan_count, h.data_version) == (1, 1, 0, 2)
        assert r.version() == (h.generation, h.data_version) == (h.generation, 2), "read alone, the same words"


def test_heap_exhaustion_compacts_instead_of_failing(writer: ish.IdentityRegionWriter) -> None:
    t = f"tnt:{uuid.uuid4()}"
    x = ilk()
    for i in range(200):  # each update appends a new handler name to the 4 KiB heap
        with writer.batch():
            writer.put_ilk(x, tenant_id=t, ilk_type="agent", registration_status="complete",
                           handler_node=f"AI.node-{i:04d}-{'x' * 40}@h")
    with ish.IdentityRegionReader(HIVE) as r:
        assert r.get_ilk(x).handler_node.startswith("AI.node-0199")  # type: ignore[union-attr]
        assert r.header().heap_used < 4096


def test_a_full_table_is_reported(writer: ish.IdentityRegionWriter) -> None:
    t = f"tnt:{uuid.uuid4()}"
    with pytest.raises(ish.RegionFullError), writer.batch():
        for _ in range(65):
            writer.put_ilk(ilk(), tenant_id=t, ilk_type="human", registration_status="temporary")


def test_a_reader_never_accepts_a_read_while_a_write_is_in_progress(writer: ish.IdentityRegionWriter) -> None:
    with ish.IdentityRegionReader(HIVE) as r, writer.batch(), pytest.raises(ish.ReadTimeoutError):
        r.canonical(ilk())
    with ish.IdentityRegionReader(HIVE) as r, writer.batch(), pytest.raises(ish.ReadTimeoutError):
        r.version()


def test_a_live_writer_is_not_displaced_but_a_dead_ones_region_is(writer: ish.IdentityRegionWriter) -> None:
    # our own pid holds it: a second writer in this process takes over (restart-in-place case) only
    # when the first one closed; a foreign live pid with a fresh heartbeat is refused
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ish.IdentityRegionWriter(HIVE, capacity=writer.capacity)
        except ish.RegionBusyError:
            os._exit(7)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def test_subtype_capabilities_and_roles_round_trip_and_snapshot(writer: ish.IdentityRegionWriter) -> None:
    t = f"tnt:{uuid.uuid4()}"
    human, agent, old = ilk(), ilk(), ilk()
    with writer.batch():
        writer.put_ilk(human, tenant_id=t, ilk_type="human", registration_status="complete",
                       human_subtype="internal", roles=["ops", "admin", "ops"])
        writer.put_ilk(agent, tenant_id=t, ilk_type="agent", registration_status="complete",
                       handler_node="AI.billing@h", capabilities=["billing", "refunds"])
        writer.put_alias(old, agent, ish.epoch_ms() + 60_000)
    with ish.IdentityRegionReader(HIVE) as r:
        h = r.get_ilk(human)
        assert h is not None and (h.human_subtype, h.roles, h.capabilities) == ("internal", ("admin", "ops"), ())
        a = r.resolve(old)
        assert a is not None and a.capabilities == ("billing", "refunds") and a.handler_node == "AI.billing@h"
        version, ilks, aliases = r.snapshot()
        assert version == writer.data_version
        assert {i.ilk_id: i for i in ilks} == {human: h, agent: a}
        assert aliases == {old: agent}
        assert r.snapshot(now_ms=ish.epoch_ms() + 120_000)[2] == {}, "expired aliases are left out"
        # a record replaced without attributes loses them; the heap is compacted when it fills up
        for _ in range(200):
            with writer.batch():
                writer.put_ilk(agent, tenant_id=t, ilk_type="agent", registration_status="complete",
                               handler_node="AI.billing@h", capabilities=["billing", "x" * 20])
        assert r.get_ilk(agent).capabilities == ("billing", "x" * 20)  # type: ignore[union-attr]
        with writer.batch():
            writer.put_ilk(agent, tenant_id=t, ilk_type="agent", registration_status="complete")
        assert r.get_ilk(agent).capabilities == ()  # type: ignore[union-attr]


def test_bad_attributes_are_refused(writer: ish.IdentityRegionWriter) -> None:
    t = f"tnt:{uuid.uuid4()}"
    with writer.batch():
        with pytest.raises(ValueError, match="subtype"):
            writer.put_ilk(ilk(), tenant_id=t, ilk_type="agent", registration_status="complete",
                           human_subtype="internal")
        with pytest.raises(ValueError, match="unknown value"):
            writer.put_ilk(ilk(), tenant_id=t, ilk_type="human", registration_status="complete",
                           human_subtype="contractor")
        with pytest.raises(ValueError, match="empty"):
            writer.put_ilk(ilk(), tenant_id=t, ilk_type="agent", registration_status="complete",
                           capabilities=[""])
    assert writer.counts()[0] == 0
