"""The original-layout identity region (``/jsr-identity-<hive>``), read back with an independent reader."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsid_reader
import posix_ipc
import pytest

from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.shm import identity_jsid as jsid

TENANT = "tnt:11111111-1111-4111-8111-111111111111"
OTHER_TENANT = "tnt:22222222-2222-4222-8222-222222222222"


def ilk() -> str:
    return f"ilk:{uuid.uuid4()}"


def ich() -> str:
    return f"ich:{uuid.uuid4()}"


@pytest.fixture
def hive() -> Iterator[str]:
    name = f"ut-{uuid.uuid4().hex[:10]}"
    yield name
    leftover = Path("/dev/shm/jsr-identity-" + name)
    if leftover.exists():
        posix_ipc.unlink_shared_memory("/jsr-identity-" + name)
        pytest.fail(f"{leftover} left behind")


def writer(hive: str, max_ilks: int = 16) -> jsid.JsidRegionWriter:
    return jsid.JsidRegionWriter(hive, limits=jsid.JsidLimits.for_ilks(max_ilks))


def test_published_records_read_back_with_the_documented_layout(hive: str) -> None:
    a, b, old = ilk(), ilk(), ilk()
    ich_a = ich()
    with writer(hive) as w:
        with w.batch():
            w.put_tenant(TENANT, name="acme", status="active")
            w.put_ilk(a, tenant_id=TENANT, ilk_type="human", registration_status="complete")
            w.put_ilk(b, tenant_id=TENANT, ilk_type="system", registration_status="complete",
                      handler_node="SY.timer@prod")
            w.put_channel("WhatsApp", " +34600111222 ", TENANT, ilk_id=a, ich_id=ich_a)
            w.put_channel("email", "Ana@Example.com", TENANT, ilk_id=a, ich_id=ich())
            w.put_alias(old, a, 4_000_000_000_000)
        snap = jsid_reader.read(w.name)
        h = snap.header
        assert (h["magic"], h["version"], h["hive_id"], h["owner_pid"]) == (0x4A534944, 3, hive, os.getpid())
        assert h["seq"] % 2 == 0 and h["seq"] > 0
        assert (h["tenant_count"], h["ilk_count"], h["ich_count"], h["ich_mapping_count"], h["ilk_alias_count"]) \
            == (1, 2, 2, 2, 1)
        assert (h["max_ilks"], h["max_ichs"], h["max_ich_mappings"]) == (16, 64, 128)
        assert snap.offsets["end"] <= len(snap.raw)
        assert snap.tenants == [{"tenant_id": TENANT, "name": "acme", "status": 1, "flags": 1}]
        by_id = {r["ilk_id"]: r for r in snap.ilks}
        assert by_id[a]["ilk_type"] == 0 and by_id[a]["registration_status"] == 2 and by_id[a]["flags"] == 1
        assert by_id[a]["tenant_id"] == TENANT and by_id[a]["display_name"] == a
        assert by_id[b]["ilk_type"] == 2 and by_id[b]["handler_node"] == "SY.timer@prod"
        assert snap.ilk_by_handler("SY.timer@prod") == b
        # The original SDK's key: trimmed and lowercased, per tenant.
        assert snap.lookup(TENANT, "whatsapp", "+34600111222") == (a, ich_a)
        assert snap.lookup(TENANT, " WHATSAPP ", "+34600111222") == (a, ich_a)
        assert snap.lookup(TENANT, "email", "ana@example.com") is not None
        assert snap.lookup(OTHER_TENANT, "whatsapp", "+34600111222") is None
        assert snap.lookup("not-a-tenant", "whatsapp", "+34600111222") is None
        assert snap.aliases == [{"old_ilk_id": old, "canonical_ilk_id": a, "expires_at": 4_000_000_000_000,
                                 "flags": 1}]
        assert {r["address"] for r in snap.ichs} == {"+34600111222", "ana@example.com"}


def test_removals_keep_the_tables_dense_and_every_other_entry_correct(hive: str) -> None:
    ids = [ilk() for _ in range(5)]
    with writer(hive) as w:
        with w.batch():
            for i, x in enumerate(ids):
                w.put_ilk(x, tenant_id=TENANT, ilk_type="agent", registration_status="temporary",
                          handler_node=f"AI.n{i}@h")
                w.put_channel("sms", f"+{i}", TENANT, ilk_id=x, ich_id=ich())
        with w.batch():
            w.remove_ilk(ids[1])
            w.remove_channel("sms", "+1", TENANT)
            w.remove_ilk("ilk:00000000-0000-4000-8000-000000000000")  # unknown: nothing happens
        snap = jsid_reader.read(w.name)
        assert snap.header["ilk_count"] == 4 and snap.header["ich_count"] == 4
        assert sorted(r["ilk_id"] for r in snap.ilks) == sorted(ids[:1] + ids[2:])
        assert snap.ilk_by_handler("AI.n4@h") == ids[4]
        assert snap.lookup(TENANT, "sms", "+1") is None
        for i in (0, 2, 3, 4):
            hit = snap.lookup(TENANT, "sms", f"+{i}")
            assert hit is not None and hit[0] == ids[i]
        assert 2 in snap.mapping_flags(), "a removed key leaves a tombstone, so later probes go on past it"


def test_more_records_than_slots_are_left_out_counted_and_never_corrupt_the_region(hive: str) -> None:
    with writer(hive, max_ilks=2) as w:  # 2 ILKs, 8 ICHs, 16 mapping slots, 2 tenants, 2 aliases
        ids = [ilk() for _ in range(3)]
        with w.batch():
            for x in ids:
                w.put_ilk(x, tenant_id=TENANT, ilk_type="human", registration_status="complete")
            for i in range(10):
                w.put_channel("sms", f"+{i}", TENANT, ilk_id=ids[0], ich_id=ich())
            w.put_channel("sms", "x" * 257, TENANT, ilk_id=ids[0], ich_id=ich())
            w.put_channel("t" * 33, "+1", TENANT, ilk_id=ids[0], ich_id=ich())
            for _ in range(3):
                w.put_alias(ilk(), ids[0], 4_000_000_000_000)
        assert w.dropped == {"ilks_full": 1, "ichs_full": 2, "channel_too_long": 2, "aliases_full": 1}
        snap = jsid_reader.read(w.name)
        assert [r["ilk_id"] for r in snap.ilks] == ids[:2]
        assert snap.header["ich_count"] == 8 and snap.header["ich_mapping_count"] == 8
        assert all(snap.lookup(TENANT, "sms", f"+{i}") is not None for i in range(8))
        assert snap.lookup(TENANT, "sms", "+9") is None
        # Room again after a removal: the next record fits.
        with w.batch():
            w.remove_channel("sms", "+0", TENANT)
            w.put_channel("sms", "+9", TENANT, ilk_id=ids[1], ich_id=ich())
        hit = jsid_reader.read(w.name).lookup(TENANT, "sms", "+9")
        assert hit is not None and hit[0] == ids[1]


def test_tombstones_are_compacted_and_lookups_stay_correct(hive: str) -> None:
    with writer(hive, max_ilks=2) as w:  # 16 mapping slots: a rebuild once more than 4 are tombstones
        keep = ilk()
        with w.batch():
            w.put_channel("sms", "keep", TENANT, ilk_id=keep, ich_id=ich())
        for round_ in range(6):
            with w.batch():
                w.put_channel("sms", f"tmp{round_}", TENANT, ilk_id=ilk(), ich_id=ich())
            with w.batch():
                w.remove_channel("sms", f"tmp{round_}", TENANT)
        snap = jsid_reader.read(w.name)
        assert snap.mapping_flags().count(2) <= 4
        assert snap.header["ich_mapping_count"] == 1
        hit = snap.lookup(TENANT, "sms", "keep")
        assert hit is not None and hit[0] == keep


def test_addresses_that_differ_only_in_case_share_one_key_newest_published(hive: str) -> None:
    first, second = ilk(), ilk()
    with writer(hive) as w:
        with w.batch():
            w.put_channel("telegram", "Bob", TENANT, ilk_id=first, ich_id=ich())
            w.put_channel("telegram", "bob", TENANT, ilk_id=second, ich_id=ich())
        snap = jsid_reader.read(w.name)
        assert snap.header["ich_count"] == 1
        hit = snap.lookup(TENANT, "telegram", "BOB")
        assert hit is not None and hit[0] == second
        with w.batch():
            w.remove_channel("telegram", "bob", TENANT)
        hit = jsid_reader.read(w.name).lookup(TENANT, "telegram", "bob")
        assert hit is not None and hit[0] == first
        with w.batch():
            w.remove_channel("telegram", "Bob", TENANT)
        assert jsid_reader.read(w.name).lookup(TENANT, "telegram", "bob") is None


def test_seqlock_is_odd_inside_a_batch_and_the_heartbeat_goes_through_it(hive: str) -> None:
    with writer(hive) as w:
        seq0 = jsid_reader._parse(Path("/dev/shm" + w.name).read_bytes()).header["seq"]
        with w.batch():
            inside = int.from_bytes(Path("/dev/shm" + w.name).read_bytes()[8:16], "little")
            assert inside % 2 == 1
            with pytest.raises(RuntimeError, match="nested"), w.batch():
                pass
        with pytest.raises(RuntimeError, match="inside batch"):
            w.put_ilk(ilk(), tenant_id=TENANT, ilk_type="human", registration_status="complete")
        before = jsid_reader.read(w.name).header
        assert before["seq"] == seq0 + 2
        w.heartbeat()
        after = jsid_reader.read(w.name).header
        assert after["seq"] == before["seq"] + 2 and after["heartbeat"] >= before["heartbeat"]


def test_a_live_owner_is_never_taken_over_and_close_unlinks_only_its_own_segment(hive: str) -> None:
    path = Path("/dev/shm/jsr-identity-" + hive)
    first = writer(hive)
    try:
        # Another live process owns it (our parent here): refused, region untouched.
        raw = bytearray(path.read_bytes())
        raw[96:100] = os.getppid().to_bytes(4, "little")
        path.write_bytes(raw)
        with pytest.raises(jsid.JsidBusyError, match=str(os.getppid())):
            writer(hive)
        assert path.exists()
        # The name now maps someone else's segment: closing the old writer must not remove it.
        posix_ipc.unlink_shared_memory("/jsr-identity-" + hive)
        second = writer(hive)
        first.close()
        assert path.exists() and second.is_ours()
        second.close()
        assert not path.exists()
    finally:
        first.close()


def test_bad_hive_ids_and_limits_are_refused() -> None:
    for bad in ("", "a/b", "x" * 65):
        with pytest.raises(ValueError, match="cannot name an identity region"):
            jsid.JsidRegionWriter(bad, limits=jsid.JsidLimits.for_ilks(4))
    with pytest.raises(ValueError, match="max_ilks"):
        jsid.JsidLimits.for_ilks(0)


def test_our_region_writer_mirrors_every_change_in_the_same_batch(hive: str) -> None:
    a = ilk()
    mirror = writer(hive)
    ours = identity_shm.IdentityRegionWriter(hive, capacity=identity_shm.Capacity.for_ilks(16),
                                             name=f"/fluxbee-identity-ut-{uuid.uuid4().hex[:8]}", mirror=mirror)
    try:
        with ours.batch():
            ours.put_tenant(TENANT, name="acme", status="pending")
            ours.put_ilk(a, tenant_id=TENANT, ilk_type="human", registration_status="temporary")
            ours.put_channel("sms", "+1", TENANT, ilk_id=a, ich_id=ich())
            raw_seq = int.from_bytes(Path("/dev/shm" + mirror.name).read_bytes()[8:16], "little")
            assert raw_seq % 2 == 1, "both seqlocks are held across the same batch"
        snap = jsid_reader.read(mirror.name)
        assert snap.lookup(TENANT, "sms", "+1") is not None and snap.tenants[0]["status"] == 0
        with ours.batch():
            ours.clear()
        assert jsid_reader.read(mirror.name).header["ilk_count"] == 0
    finally:
        ours.close()
    assert mirror.closed and not Path("/dev/shm" + mirror.name).exists()
