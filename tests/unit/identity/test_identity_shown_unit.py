"""A full sync writes only what changed: the region ends as a rebuild would leave it, and an unchanged
snapshot does not touch it (readers are never held off by a resync that brings nothing)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxbee.dataplane.shm import identity as ish
from fluxbee.identity.model import Change, ChannelRecord, IlkRecord, TenantRecord
from fluxbee.identity.service import IdentityService, IdentitySettings
from fluxbee.identity.service.shown import Shown

CAPACITY = ish.Capacity(ilk_slots=256, chan_slots=256, heap_size=2048)
"""Small on purpose: the heap fills, so the writer's own compaction runs under the incremental path."""


class Truth:
    """The primary's records, changed at random; each change also returned as the delta it makes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.tenants = {t.tenant_id: t for t in (TenantRecord(f"tnt:{uuid.uuid4()}", "fluxbee", "active", True),)}
        self.ilks: dict[str, IlkRecord] = {}
        self.aliases: dict[str, tuple[str, str, int]] = {}
        self.channels: dict[tuple[str, str, str], ChannelRecord] = {}

    def snapshot(self) -> Change:
        return Change(ilks=list(self.ilks.values()), channels=list(self.channels.values()),
                      aliases=list(self.aliases.values()), tenants=list(self.tenants.values()))

    def _ilk(self, ilk_id: str) -> IlkRecord:
        rng = self.rng
        kind = rng.choice(["human", "agent"])
        return IlkRecord(ilk_id, rng.choice(list(self.tenants)), kind, rng.choice(["temporary", "complete"]),
                         f"AI.h{rng.randrange(5)}@t" if kind == "agent" else "",
                         rng.choice(["", "internal"]) if kind == "human" else "",
                         tuple(sorted(rng.sample(["read", "write", "ops"], rng.randrange(3)))), ())

    def _channel(self, ilk_id: str) -> ChannelRecord:
        rng = self.rng
        ctype = rng.choice(["whatsapp", "email", "telegram"])
        # few addresses, some equal but for case: records the region keeps in one slot, or in two
        address = rng.choice(["+1", "Ana@X.com", "ana@x.com", "@Bot", "@bot", f"+{rng.randrange(10**6)}"])
        return ChannelRecord(ctype, address, rng.choice(list(self.tenants)), ilk_id, f"ich:{uuid.uuid4()}")

    def step(self) -> Change:
        rng, change = self.rng, Change()
        what = rng.randrange(8)
        live = list(self.ilks)
        if what == 0 or len(live) < 2:
            ilk = self._ilk(f"ilk:{uuid.uuid4()}")
            self.ilks[ilk.ilk_id] = ilk
            change.ilks.append(ilk)
            ch = self._channel(ilk.ilk_id)
            key = (*ish.normalise_channel(ch.channel_type, ch.address), ch.tenant_id)
            if key not in self.channels:
                self.channels[key] = ch
                change.channels.append(ch)
        elif what == 1:  # updated in place
            ilk = self._ilk(rng.choice(live))
            self.ilks[ilk.ilk_id] = ilk
            change.ilks.append(ilk)
        elif what == 2:  # a merge: the source becomes an alias, its channels move
            src, dst = rng.sample(live, 2)
            del self.ilks[src]
            change.removed_ilks.append(src)
            alias = (src, dst, 4_000_000_000_000)
            self.aliases[src] = alias
            change.aliases.append(alias)
            for key, ch in list(self.channels.items()):
                if ch.ilk_id == src:
                    moved = ChannelRecord(ch.channel_type, ch.address, ch.tenant_id, dst, ch.ich_id)
                    self.channels[key] = moved
                    change.channels.append(moved)
        elif what == 3 and self.aliases:  # the alias expires; or its id is an ILK again (the region allows it)
            old = rng.choice(list(self.aliases))
            del self.aliases[old]
            if rng.random() < 0.5:
                change.removed_aliases.append(old)
            else:
                again = self._ilk(old)
                self.ilks[old] = again
                change.ilks.append(again)
        elif what == 4 and self.channels:
            key = rng.choice(list(self.channels))
            ch = self.channels.pop(key)
            change.removed_channels.append((ch.channel_type, ch.address, ch.tenant_id))
        elif what == 5:  # an ILK deleted, with its channels
            gone = rng.choice(live)
            del self.ilks[gone]
            change.removed_ilks.append(gone)
            for key, ch in list(self.channels.items()):
                if ch.ilk_id == gone:
                    del self.channels[key]
                    change.removed_channels.append((ch.channel_type, ch.address, ch.tenant_id))
        elif what == 6:
            tenant = TenantRecord(f"tnt:{uuid.uuid4()}", f"t{len(self.tenants)}", "pending")
            self.tenants[tenant.tenant_id] = tenant
            change.tenants.append(tenant)
        else:
            ch = self._channel(rng.choice(live))
            key = (*ish.normalise_channel(ch.channel_type, ch.address), ch.tenant_id)
            self.channels[key] = ch
            change.channels.append(ch)
        return change


def contents(hive: str, run_dir: Path, truth: Truth, probes: set[tuple[str, str, str]]) -> object:
    """Everything a reader can see: ILKs, live aliases, and the answer for every channel key ever used."""
    with ish.IdentityRegionReader(hive, run_dir=run_dir) as r:
        _, ilks, aliases = r.snapshot()
        hits = {p: r.lookup_channel(*p) for p in sorted(probes)}
        counts = r.header().ilk_count, r.header().alias_count, r.header().chan_count
    return sorted(ilks, key=lambda i: i.ilk_id), aliases, hits, counts


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[IdentityService]:
    svc = IdentityService(IdentitySettings(hive_id="t", run_dir=tmp_path, dsn="", primary="SY.identity@m",
                                           region_hive=f"s{uuid.uuid4().hex[:8]}", jsr_region=False))
    svc.region = ish.IdentityRegionWriter(svc.settings.region_hive_id, capacity=CAPACITY, is_primary=False,
                                          run_dir=tmp_path)
    yield svc
    svc.region.close()


@pytest.mark.parametrize("seed", range(60))
def test_a_full_sync_after_missed_changes_leaves_the_region_exactly_as_a_rebuild_would(
        replica: IdentityService, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed {seed}")
    truth = Truth(rng)
    for _ in range(rng.randrange(2, 20)):
        truth.step()
    assert replica._show(truth.snapshot()) == "region rebuilt", "nothing is known before the first full sync"
    probes = {(c.channel_type, c.address, c.tenant_id) for c in truth.channels.values()}
    for _ in range(rng.randrange(0, 20)):  # deltas the replica receives
        change = truth.step()
        replica.apply(change)
        probes |= {(c.channel_type, c.address, c.tenant_id) for c in change.channels} | set(change.removed_channels)
    for _ in range(rng.randrange(1, 20)):  # changes it missed (a gap, the primary's restart)
        change = truth.step()
        probes |= {(c.channel_type, c.address, c.tenant_id) for c in change.channels} | set(change.removed_channels)
    assert replica.region is not None
    before = replica.region.data_version
    replica._show(truth.snapshot())
    assert replica.region.data_version == before + 1, "the whole difference in one batch"

    rebuilt_hive = f"r{uuid.uuid4().hex[:8]}"
    rebuilt = ish.IdentityRegionWriter(rebuilt_hive, capacity=CAPACITY, is_primary=False, run_dir=tmp_path)
    try:
        with rebuilt.batch():
            rebuilt.clear()
            IdentityService._put(rebuilt, truth.snapshot())
        assert (contents(replica.settings.region_hive_id, tmp_path, truth, probes)
                == contents(rebuilt_hive, tmp_path, truth, probes))
    finally:
        rebuilt.close()

    # The same snapshot again (a resync that brings nothing new): the region is not touched.
    assert replica._show(truth.snapshot()) == "region already showed it"
    assert replica.region.data_version == before + 1


def test_a_tenant_the_snapshot_no_longer_has_or_a_failed_update_means_a_rebuild(
        replica: IdentityService) -> None:
    truth = Truth(random.Random(7))
    for _ in range(5):
        truth.step()
    replica._show(truth.snapshot())
    fewer = truth.snapshot()
    fewer.tenants = fewer.tenants[1:]
    assert replica._shown.diff(fewer) is None, "the region cannot remove a tenant: only a rebuild can"

    shown = Shown()
    assert shown.diff(truth.snapshot()) is None, "before any rebuild nothing is known"
    # an update the region refused (it is full) leaves it partly written: the next full sync rebuilds
    flood = Change(ilks=[IlkRecord(f"ilk:{uuid.uuid4()}", truth.snapshot().tenants[0].tenant_id, "human",
                                   "temporary", "") for _ in range(CAPACITY.ilk_slots + 1)])
    replica.apply(flood)
    assert not replica._shown.known
    assert replica._show(truth.snapshot()) == "region rebuilt"


def test_channels_equal_but_for_case_are_one_key_as_in_the_region(replica: IdentityService, tmp_path: Path) -> None:
    """An email address is keyed lowercased: a later record with other case replaces the first in the
    region, so a snapshot holding only the later one must not remove the key."""
    tenant = TenantRecord(f"tnt:{uuid.uuid4()}", "fluxbee", "active", True)
    ilk = IlkRecord(f"ilk:{uuid.uuid4()}", tenant.tenant_id, "human", "complete", "")
    first = ChannelRecord("email", "ana@x.com", tenant.tenant_id, ilk.ilk_id, f"ich:{uuid.uuid4()}")
    later = ChannelRecord("email", "Ana@X.com", tenant.tenant_id, ilk.ilk_id, f"ich:{uuid.uuid4()}")
    replica._show(Change(tenants=[tenant], ilks=[ilk], channels=[first]))
    replica.apply(Change(channels=[later]))
    assert replica._show(Change(tenants=[tenant], ilks=[ilk], channels=[later])) == "region already showed it"
    with ish.IdentityRegionReader(replica.settings.region_hive_id, run_dir=tmp_path) as r:
        hit = r.lookup_channel("email", "ANA@x.com", tenant.tenant_id)
        assert hit is not None and (hit.ilk_id, hit.ich_id) == (ilk.ilk_id, later.ich_id)
