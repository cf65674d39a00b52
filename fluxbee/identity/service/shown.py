"""What SY.identity's region shows, kept as records, so a full sync writes only what changed (pure).

Why: the region is one seqlock.  A full rebuild (clear, then store every record) keeps it odd for
the whole rebuild, about 55 ms of CPU for 2,000 identities with their channels, and every reader on
the host (the router's ``dst: null`` lane, IO nodes' lookups) gives up after its 5 ms deadline
meanwhile; on a loaded machine a descheduled writer stretches even a small rebuild past that.  A
replica resyncs on every primary restart, sequence gap or silence, and what it receives is nearly
always what it shows already.  :meth:`Shown.diff` turns a snapshot into the one :class:`Change` that
takes the region from what it shows to the snapshot: nothing at all when they agree.

:meth:`Shown.note` must see every change the region is given, in order, with the writer's rules
(an ILK replaces an alias of the same id and the other way round), so that it never disagrees with
the region; :meth:`Shown.reset` follows a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import model as m

ChannelKey = tuple[str, str, str]
"""``(channel_type, address, tenant_id)`` normalised as the region keys them: two records the region
holds in one slot are one entry here too."""


def _channel_key(channel_type: str, address: str, tenant_id: str) -> ChannelKey:
    return (*identity_shm.normalise_channel(channel_type, address), tenant_id)


def _key_of(record: m.ChannelRecord) -> ChannelKey:
    return _channel_key(record.channel_type, record.address, record.tenant_id)


@dataclass(slots=True)
class Shown:
    ilks: dict[str, m.IlkRecord] = field(default_factory=dict)
    aliases: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    channels: dict[ChannelKey, m.ChannelRecord] = field(default_factory=dict)
    tenants: dict[str, m.TenantRecord] = field(default_factory=dict)
    known: bool = False
    """False until a rebuild: before it the region may hold anything (or nothing), so only a rebuild
    can bring it to a snapshot."""

    def reset(self, snapshot: m.Change) -> None:
        """The region was cleared and ``snapshot`` stored into it."""
        self.ilks.clear()
        self.aliases.clear()
        self.channels.clear()
        self.tenants.clear()
        self.known = True
        self.note(snapshot)

    def note(self, change: m.Change) -> None:
        """``change`` was stored into the region (in the order :func:`RegionKeeper._put` stores it)."""
        for tenant in change.tenants:
            self.tenants[tenant.tenant_id] = tenant
        for ilk_id in change.removed_ilks:
            self.ilks.pop(ilk_id, None)
        for old in change.removed_aliases:
            self.aliases.pop(old, None)
        for removed in change.removed_channels:
            self.channels.pop(_channel_key(*removed), None)
        for ilk in change.ilks:
            self.ilks[ilk.ilk_id] = ilk
            self.aliases.pop(ilk.ilk_id, None)
        for alias in change.aliases:
            self.aliases[alias[0]] = alias
            self.ilks.pop(alias[0], None)
        for channel in change.channels:
            self.channels[_key_of(channel)] = channel

    def diff(self, snapshot: m.Change) -> m.Change | None:
        """The change that makes the region show ``snapshot``; None when only a rebuild can (nothing
        known yet, or a tenant the snapshot no longer has: the region cannot remove tenants)."""
        if not self.known:
            return None
        tenants = {t.tenant_id: t for t in snapshot.tenants}
        if not self.tenants.keys() <= tenants.keys():
            return None
        ilks = {r.ilk_id: r for r in snapshot.ilks}
        aliases = {a[0]: a for a in snapshot.aliases}
        channels = {_key_of(r): r for r in snapshot.channels}
        return m.Change(
            ilks=[r for i, r in ilks.items() if self.ilks.get(i) != r],
            removed_ilks=[i for i in self.ilks if i not in ilks],
            channels=[r for k, r in channels.items() if self.channels.get(k) != r],
            removed_channels=[(r.channel_type, r.address, r.tenant_id) for k, r in self.channels.items()
                              if k not in channels],
            aliases=[a for old, a in aliases.items() if self.aliases.get(old) != a],
            removed_aliases=[old for old in self.aliases if old not in aliases],
            tenants=[t for i, t in tenants.items() if self.tenants.get(i) != t],
        )
