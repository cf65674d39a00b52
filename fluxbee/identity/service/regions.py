"""SY.identity's regions: our identity region and the original-layout mirror, rebuilt from a snapshot
and changed only after a commit (never before), with the mirror's dropped records reported."""

from __future__ import annotations

import logging
from typing import Any

from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.shm import identity_jsid
from fluxbee.identity import model as m
from fluxbee.identity.service.state import ServiceState

log = logging.getLogger(__name__)


class RegionKeeper(ServiceState):
    def _jsr_region(self) -> identity_jsid.JsidRegionWriter | None:
        """The original-layout region, or None (disabled, or another live writer holds the name)."""
        s = self.settings
        if not s.jsr_region:
            return None
        try:
            limits = identity_jsid.JsidLimits.for_ilks(s.max_ilks)
            return identity_jsid.JsidRegionWriter(s.region_hive_id, limits=limits, is_primary=self.is_primary)
        except identity_jsid.JsidError as err:
            log.warning("not publishing the original-layout identity region: %s; nodes built with the original "
                        "SDKs on this host read that one", err)
            return None

    def jsr_dropped(self) -> dict[str, int]:
        """Records the original-layout region could not hold (by reason), for status and metrics."""
        mirror = self.region.mirror if self.region is not None else None
        return dict(mirror.dropped) if isinstance(mirror, identity_jsid.JsidRegionWriter) else {}

    def _rebuild(self, snapshot: m.Change) -> None:
        """Clear the region and store ``snapshot`` (readers wait for the whole of it: see :mod:`.shown`)."""
        region = self.region
        if region is None:
            return
        self._shown.known = False
        with region.batch():
            region.clear()
            self._put(region, snapshot)
        self._shown.reset(snapshot)
        self._report_jsr_drops()

    def _show(self, snapshot: m.Change) -> str:
        """Make the region show ``snapshot`` (a full sync), writing only what differs from what it shows;
        how it went, for the log."""
        region = self.region
        if region is None:
            return "no region"
        change = self._shown.diff(snapshot)
        if change is None:
            self._rebuild(snapshot)
            return "region rebuilt"
        if not change:
            return "region already showed it"
        self._shown.known = False
        try:
            with region.batch():
                self._put(region, change)
        except identity_shm.IdentityShmError as err:
            log.warning("updating the identity region to the snapshot failed (%s); rebuilding it whole", err)
            self._rebuild(snapshot)
            return "region rebuilt"
        self._shown.known = True
        self._shown.note(change)
        self._report_jsr_drops()
        n = (len(change.ilks) + len(change.removed_ilks) + len(change.channels) + len(change.removed_channels)
             + len(change.aliases) + len(change.removed_aliases) + len(change.tenants))
        return f"{n} record(s) of the region changed"

    def _commit(self, change: m.Change) -> None:
        """A write committed: show it in the region now, and send it to replicas at :meth:`_flush`."""
        self._pending = change
        self.apply(change)

    def apply(self, change: m.Change) -> None:
        """Apply one committed change to the region (after the commit, never before)."""
        region = self.region
        if region is None or not change:
            return
        try:
            with region.batch():
                self._put(region, change)
        except identity_shm.IdentityShmError as err:
            self._shown.known = False  # partly stored: the next full sync rebuilds the region whole
            log.error("identity region update failed (%s); the database is authoritative, lookups for the "
                      "changed records will miss until the next rebuild", err)
        else:
            self._shown.note(change)
        self._report_jsr_drops()

    @staticmethod
    def _put(region: identity_shm.IdentityRegionWriter, change: m.Change) -> None:
        for tenant in change.tenants:
            region.put_tenant(tenant.tenant_id, name=tenant.name, status=tenant.status)
        for ilk_id in change.removed_ilks:
            region.remove_ilk(ilk_id)
        for old in change.removed_aliases:
            region.remove_alias(old)
        for rc in change.removed_channels:
            region.remove_channel(*rc)
        for ilk in change.ilks:
            region.put_ilk(ilk.ilk_id, tenant_id=ilk.tenant_id, ilk_type=ilk.ilk_type,
                           registration_status=ilk.registration_status, handler_node=ilk.handler_node,
                           human_subtype=ilk.human_subtype, capabilities=ilk.capabilities, roles=ilk.roles)
        for old, canonical, expires in change.aliases:
            region.put_alias(old, canonical, expires)
        for ch in change.channels:
            region.put_channel(ch.channel_type, ch.address, ch.tenant_id, ilk_id=ch.ilk_id, ich_id=ch.ich_id)

    def _jsr_status(self) -> dict[str, Any]:
        mirror = self.region.mirror if self.region is not None else None
        if not isinstance(mirror, identity_jsid.JsidRegionWriter):
            return {"published": False}
        return {"published": True, "name": mirror.name, "counts": mirror.counts(), "dropped": dict(mirror.dropped)}

    def _report_jsr_drops(self) -> None:
        """Log when the original-layout region starts to leave records out (once per new total)."""
        total = sum(self.jsr_dropped().values())
        if total > self._jsr_dropped_logged:
            log.warning("the original-layout identity region is full or a record does not fit its fields; "
                        "left out so far: %s (raise --max-ilks; lookups by nodes built with the original SDKs "
                        "miss these records)", self.jsr_dropped())
        self._jsr_dropped_logged = total
