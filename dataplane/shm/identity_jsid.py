"""The identity region in the original's layout (``/jsr-identity-<hive>``, magic "JSID", version 3).

Why: IO nodes built with the original SDKs resolve ``(channel_type, address, tenant) -> ilk``
by opening ``/jsr-identity-<hive_id>`` and probing its channel hash table. Our own region
(:mod:`.identity`) has a different layout and a run-dir-scoped name, so
those nodes found nothing. SY.identity therefore also publishes this region, written by the
same writer in the same batch as its own (:class:`.identity.IdentityRegionWriter`
forwards every change here), so both show the same committed change.

Layout (little-endian, ``#[repr(C)]`` of the original; every table starts 64-byte aligned)::

    header, 176 B at 0
      0 magic u32 = 0x4A534944 | 4 version u32 = 3 | 8 seq u64 (seqlock)
     16 counts u32 x 6: tenant, ilk, ich, ich_mapping, vocabulary, ilk_alias
     40 maxima u32 x 6: ilks, tenants, ichs (4 x ilks), ich_mappings (2 x ichs), vocabulary, ilk_aliases
     64 updated_at u64 (ms) | 72 heartbeat u64 (ms) | 80 owner_uuid 16 B | 96 owner_pid u32
    100 is_primary u8 | 104 hive_id 64 B | 168 hive_id_len u16 | 170 reserved
    TenantEntry[max_tenants], 312 B at align64(176)
      0 tenant_id 16 | 16 name 128 | 144 domain 128 | 272 status u8 (0 pending, 1 active, 2 suspended)
    274 flags u16 | 284 max_ilks u32 | 288 created_at u64 | 296 updated_at u64
    IlkEntry[max_ilks], 344 B
      0 ilk_id 16 | 16 ilk_type u8 (0 human, 1 agent, 2 system) | 17 registration_status u8
     (0 temporary, 1 partial, 2 complete) | 18 flags u16 | 20 tenant_id 16 | 36 display_name 128
    164 handler_node 128 | 292 ich_offset u32 | 296 ich_count u16 | 300 roles_offset u32 | 304 roles_len u16
    308 capabilities_offset u32 | 312 capabilities_len u16 | 320 created_at u64 | 328 updated_at u64
    IchEntry[max_ichs], 352 B
      0 ich_id 16 | 16 ilk_id 16 | 32 channel_type 32 | 64 address 256 | 320 flags u16 | 322 is_primary u8
    328 added_at u64
    IchMappingEntry[max_ich_mappings], 384 B (open addressing, linear probing)
      0 hash u64 | 8 channel_type 32 | 40 address 256 | 296 ich_id 16 | 312 ilk_id 16 | 328 tenant_id 16
    344 flags u16 (0 empty, 1 occupied, 2 tombstone)
    IlkAliasEntry[max_ilk_aliases], 64 B
      0 old_ilk_id 16 | 16 canonical_ilk_id 16 | 32 expires_at u64 (ms) | 40 flags u16
    VocabularyEntry[max_vocabulary], 232 B (never written, as in the original)

Strings are zero-padded UTF-8. Ids are raw UUID bytes. Flags: ACTIVE 0x1.

Channel key (the original's rule, not ours): trim and lowercase both channel type and address;
hash = FNV-1a 64 over ``type || 0xFF || address || 0xFE || tenant 16 bytes``; probe linearly
from ``hash % max_ich_mappings``; an empty slot ends the probe, a tombstone does not. Because the
original lowercases every address while we keep the case of case-sensitive ones, two of our
channels can share one key here: the most recently written one is published, and the other
takes its place again when it is removed.

Conventions
-----------
* **Seqlock**: ``seq`` is odd while the writer is inside :meth:`JsidRegionWriter.batch`;
  the heartbeat is written under the seqlock too (the original's rule). Readers copy, re-read
  ``seq`` and retry (the original SDKs give up after 5-50 ms).
* **Heartbeat** (epoch ms) at every SY.identity heartbeat (~2 s; the original: 5 s, stale after 30 s).
* **Dense tables**: tenants, ILKs, ICHs and aliases occupy the first ``*_count`` entries (readers
  scan only those); removal moves the last entry into the hole. ``ich_offset``/``ich_count``,
  roles, capabilities and vocabulary are left 0 (ICHs are found through their ``ilk_id`` and the
  mapping table). ``display_name`` is the handler node, else the ILK id (our published model has
  no display name); timestamps are the write time, as in the original.
* **Capacity** is fixed at creation. A record that does not fit (table full, or a channel
  type/address longer than its field, which a reader could never match) is *not* written and is
  counted in :attr:`JsidRegionWriter.dropped`; the region stays consistent, every published
  entry stays correct, and lookups for the dropped records miss. Tombstones are compacted by a
  rebuild of the mapping table once they pass a quarter of it.
* **Ownership**: one writer per name. A region whose owner is alive with a fresh heartbeat is
  never taken over (:class:`RegionBusyError`), nor is one stuck mid-store under a live owner; a
  dead or stale one is replaced (the rule of every layout, :func:`.region.clear_the_way`). At close the
  region is unlinked only if the name still maps *our* segment (same inode, same owner uuid).

This module is a leaf adapter: it imports nothing of ours beyond :mod:`.region` and
:mod:`.identity_records`, and never logs.
"""

from __future__ import annotations

import mmap
import os
import struct
import uuid as _uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from .identity_records import ILK_TYPES, STATUSES, code_of
from .region import (
    ClosedOnExit,
    Predecessor,
    RegionBusyError,
    ShmError,
    clear_the_way,
    create_region,
    epoch_ms,
    hold,
    inode_of,
    release,
)

__all__ = [
    "ADDRESS_BYTES",
    "ALIAS",
    "ALIGN",
    "CHANNEL_TYPE_BYTES",
    "FLAG_ACTIVE",
    "FNV_BASIS",
    "FNV_PRIME",
    "HEADER",
    "HIVE_ID_BYTES",
    "ICH",
    "ILK",
    "ILK_TYPES",
    "JsidBusyError",
    "JsidError",
    "JsidLayout",
    "JsidLimits",
    "JsidRegionWriter",
    "MAGIC",
    "MAPPING",
    "MAP_OCCUPIED",
    "MAP_TOMBSTONE",
    "NAME_BYTES",
    "REGISTRATION",
    "STALE_AFTER_MS",
    "TENANT",
    "TENANT_STATUSES",
    "VERSION",
    "VOCABULARY_SIZE",
    "align_up",
    "channel_key",
    "fnv1a64",
    "region_name",
    "uuid_bytes",
]

MAGIC: Final = 0x4A534944
VERSION: Final = 3
ALIGN: Final = 64
STALE_AFTER_MS: Final = 30_000
FLAG_ACTIVE: Final = 0x0001
MAP_OCCUPIED: Final = 0x0001
MAP_TOMBSTONE: Final = 0x0002
CHANNEL_TYPE_BYTES: Final = 32
ADDRESS_BYTES: Final = 256
NAME_BYTES: Final = 128
HIVE_ID_BYTES: Final = 64
FNV_BASIS: Final = 0xCBF29CE484222325
FNV_PRIME: Final = 0x100000001B3

HEADER = struct.Struct("<IIQ6I6IQQ16sIB3x64sH6x")
TENANT = struct.Struct("<16s128s128sBxH8xIQQ8x")
ILK = struct.Struct("<16sBBH16s128s128sIH2xIH2xIH2x4xQQ8x")
ICH = struct.Struct("<16s16s32s256sHB5xQ16x")
MAPPING = struct.Struct("<Q32s256s16s16s16sH38x")
ALIAS = struct.Struct("<16s16sQH22x")
VOCABULARY_SIZE: Final = 232
_OFF_SEQ: Final = 8
_OFF_COUNTS: Final = 16
_COUNTS = struct.Struct("<6I")
_OFF_TIMES: Final = 64
_TIMES = struct.Struct("<QQ")
_OFF_HEARTBEAT: Final = 72
_U64 = struct.Struct("<Q")
_MAP_FLAGS_AT: Final = 344

if (HEADER.size, TENANT.size, ILK.size, ICH.size, MAPPING.size, ALIAS.size) != (176, 312, 344, 352, 384, 64):
    raise ImportError("fluxbee.dataplane.shm.identity_jsid: struct sizes do not match the original layout")

REGISTRATION: Final = STATUSES
"""The original's name for the registration statuses (:data:`.identity_records.STATUSES`)."""
TENANT_STATUSES: Final = ("pending", "active", "suspended")


JsidError = ShmError
"""Kept name: this layout raises the one error family of :mod:`.region`."""
JsidBusyError = RegionBusyError
"""Kept name of :class:`.region.RegionBusyError`."""


# --------------------------------------------------------------------------- pure helpers


def region_name(hive_id: str) -> str:
    """The original's POSIX name: ``/jsr-identity-<hive_id>`` (not scoped by run dir: the
    original SDKs derive it from ``hive_id`` alone)."""
    return f"/jsr-identity-{hive_id.strip()}"


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) & ~(align - 1)


def fnv1a64(channel_type: bytes, address: bytes, tenant: bytes) -> int:
    h = FNV_BASIS
    for part in (channel_type, b"\xff", address, b"\xfe", tenant):
        for b in part:
            h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def channel_key(channel_type: str, address: str) -> tuple[bytes, bytes]:
    """The original's normalisation: trim and lowercase both."""
    return channel_type.strip().lower().encode(), address.strip().lower().encode()


def uuid_bytes(value: str) -> bytes:
    """16 raw bytes of a prefixed (``tnt:``/``ilk:``/``ich:``) or bare UUID; zeros if unparsable
    (the original's rule: zero bytes never match a lookup)."""
    text = value.strip()
    if ":" in text:
        text = text.split(":", 1)[1]
    try:
        return _uuid.UUID(text).bytes
    except ValueError:
        return bytes(16)


def _fixed(text: str, size: int) -> bytes:
    """Zero-padded UTF-8, cut at a character boundary to fit ``size`` bytes."""
    raw = text.encode()
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode()


@dataclass(frozen=True, slots=True)
class JsidLimits:
    """Table sizes, fixed for the life of a region."""

    max_ilks: int
    max_tenants: int
    max_ilk_aliases: int
    max_vocabulary: int = 4096

    @classmethod
    def for_ilks(cls, max_ilks: int) -> JsidLimits:
        if max_ilks < 1:
            raise ValueError(f"max_ilks must be at least 1, not {max_ilks}")
        return cls(max_ilks=max_ilks, max_tenants=min(10_000, max_ilks), max_ilk_aliases=max_ilks)

    @property
    def max_ichs(self) -> int:
        return self.max_ilks * 4

    @property
    def max_ich_mappings(self) -> int:
        return self.max_ichs * 2


@dataclass(frozen=True, slots=True)
class JsidLayout:
    """Byte offsets of each table, computed from the limits as the original does."""

    tenants: int
    ilks: int
    ichs: int
    mappings: int
    aliases: int
    vocabulary: int
    size: int

    @classmethod
    def of(cls, limits: JsidLimits) -> JsidLayout:
        tenants = align_up(HEADER.size)
        ilks = align_up(tenants + TENANT.size * limits.max_tenants)
        ichs = align_up(ilks + ILK.size * limits.max_ilks)
        mappings = align_up(ichs + ICH.size * limits.max_ichs)
        aliases = align_up(mappings + MAPPING.size * limits.max_ich_mappings)
        vocabulary = align_up(aliases + ALIAS.size * limits.max_ilk_aliases)
        size = align_up(vocabulary + VOCABULARY_SIZE * limits.max_vocabulary)  # variable area: 0 bytes
        return cls(tenants, ilks, ichs, mappings, aliases, vocabulary, size)


# --------------------------------------------------------------------------- dense tables


class _Dense:
    """A table whose live entries are the first ``len`` slots; removal moves the last one in."""

    def __init__(self, base: int, entry: int, capacity: int) -> None:
        self.base = base
        self.entry = entry
        self.capacity = capacity
        self.index: dict[object, int] = {}
        self.keys: list[object] = []

    def slot_for(self, key: object) -> int | None:
        """The slot of ``key`` (a new one at the end if absent), or None when full."""
        i = self.index.get(key)
        if i is None:
            if len(self.keys) >= self.capacity:
                return None
            i = len(self.keys)
            self.index[key] = i
            self.keys.append(key)
        return self.base + i * self.entry

    def remove(self, mm: mmap.mmap, key: object) -> bool:
        i = self.index.pop(key, None)
        if i is None:
            return False
        last = len(self.keys) - 1
        if i != last:
            moved = self.keys[last]
            src = self.base + last * self.entry
            mm[self.base + i * self.entry: self.base + (i + 1) * self.entry] = mm[src: src + self.entry]
            self.keys[i] = moved
            self.index[moved] = i
        self.keys.pop()
        end = self.base + last * self.entry
        mm[end: end + self.entry] = bytes(self.entry)
        return True

    def clear(self, mm: mmap.mmap) -> None:
        mm[self.base: self.base + len(self.keys) * self.entry] = bytes(len(self.keys) * self.entry)
        self.index.clear()
        self.keys.clear()

    def __len__(self) -> int:
        return len(self.keys)


_ChanKey = tuple[bytes, bytes, bytes]  # (channel_type, address, tenant) as the original normalises them
_OurChan = tuple[str, str, str]  # (channel_type, address, tenant_id) as given


# --------------------------------------------------------------------------- writer


class JsidRegionWriter(ClosedOnExit):
    """Creates, fills and owns ``/jsr-identity-<hive>``.  Changes happen inside :meth:`batch`."""

    def __init__(self, hive_id: str, *, limits: JsidLimits, owner_uuid: str | None = None,
                 is_primary: bool = True, name: str | None = None) -> None:
        hive = hive_id.strip()
        if not hive or len(hive.encode()) > HIVE_ID_BYTES or "/" in hive:
            raise ValueError(f"hive id {hive_id!r} cannot name an identity region (1-{HIVE_ID_BYTES} bytes, no '/')")
        self.name = name or region_name(hive)
        self.limits = limits
        self.layout = JsidLayout.of(limits)
        self.owner_uuid = _uuid.UUID(owner_uuid).bytes if owner_uuid else _uuid.uuid4().bytes
        self.dropped: Counter[str] = Counter()
        """Records not published, by reason: ``tenants_full``, ``ilks_full``, ``ichs_full``,
        ``aliases_full``, ``mappings_full``, ``channel_too_long``."""
        self._takeover()
        size = self.layout.size
        shm, self._inode = create_region(self.name, size)
        try:
            self._mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        hold(self.name, self._inode)
        self._seq = memoryview(self._mm).cast("Q")
        now = epoch_ms()
        lim = limits
        HEADER.pack_into(self._mm, 0, MAGIC, VERSION, 0, 0, 0, 0, 0, 0, 0,
                         lim.max_ilks, lim.max_tenants, lim.max_ichs, lim.max_ich_mappings, lim.max_vocabulary,
                         lim.max_ilk_aliases, now, now, self.owner_uuid, os.getpid(), 1 if is_primary else 0,
                         hive.encode(), len(hive.encode()))
        lay = self.layout
        self._tenants = _Dense(lay.tenants, TENANT.size, lim.max_tenants)
        self._ilks = _Dense(lay.ilks, ILK.size, lim.max_ilks)
        self._ichs = _Dense(lay.ichs, ICH.size, lim.max_ichs)
        self._aliases = _Dense(lay.aliases, ALIAS.size, lim.max_ilk_aliases)
        self._map_slot: dict[_ChanKey, int] = {}
        self._tombstones = 0
        self._owners: dict[_ChanKey, dict[_OurChan, tuple[bytes, bytes]]] = {}
        """Our channels behind each original key, oldest first; the newest is published."""
        self._in_batch = False
        self.closed = False

    def _takeover(self) -> None:
        """Remove a dead or stale predecessor's region; refuse a live one (:func:`.region.clear_the_way`,
        the rule every layout shares; the original layout has no generation)."""

        def parse(raw: bytes) -> Predecessor | None:
            f = HEADER.unpack(raw)
            if f[0] != MAGIC:
                return None
            return Predecessor(owner_pid=f[18], heartbeat_ms=f[16], generation=0)

        clear_the_way(self.name, header_size=HEADER.size, parse=parse, stale_after_ms=STALE_AFTER_MS, now_ms=epoch_ms)

    # batches ------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[JsidRegionWriter]:
        """Hold ``seq`` odd while entries change; publish counts and ``updated_at`` before it turns even."""
        if self._in_batch:
            raise RuntimeError("bug: nested jsr-identity batch")
        self._in_batch = True
        seq = self._seq
        seq[_OFF_SEQ // 8] += 1
        try:
            yield self
        finally:
            _COUNTS.pack_into(self._mm, _OFF_COUNTS, len(self._tenants), len(self._ilks), len(self._ichs),
                              len(self._map_slot), 0, len(self._aliases))
            now = epoch_ms()
            _TIMES.pack_into(self._mm, _OFF_TIMES, now, now)
            seq[_OFF_SEQ // 8] += 1
            self._in_batch = False

    def _need_batch(self) -> None:
        if not self._in_batch:
            raise RuntimeError("bug: jsr-identity changes must happen inside batch()")

    # change operations (inside batch) ---------------------------------------
    def put_tenant(self, tenant_id: str, *, name: str, status: str) -> None:
        self._need_batch()
        key = uuid_bytes(tenant_id)
        off = self._tenants.slot_for(key)
        if off is None:
            self.dropped["tenants_full"] += 1
            return
        now = epoch_ms()
        TENANT.pack_into(self._mm, off, key, _fixed(name, NAME_BYTES), b"", code_of(TENANT_STATUSES, status),
                         FLAG_ACTIVE, 0, now, now)

    def put_ilk(self, ilk_id: str, *, tenant_id: str, ilk_type: str, registration_status: str,
                handler_node: str = "", display_name: str = "") -> None:
        self._need_batch()
        key = uuid_bytes(ilk_id)
        self._remove_alias(key)
        off = self._ilks.slot_for(key)
        if off is None:
            self.dropped["ilks_full"] += 1
            return
        now = epoch_ms()
        ILK.pack_into(self._mm, off, key, code_of(ILK_TYPES, ilk_type), code_of(REGISTRATION, registration_status),
                      FLAG_ACTIVE, uuid_bytes(tenant_id), _fixed(display_name or handler_node or ilk_id, NAME_BYTES),
                      _fixed(handler_node, NAME_BYTES), 0, 0, 0, 0, 0, 0, now, now)

    def remove_ilk(self, ilk_id: str) -> None:
        self._need_batch()
        self._ilks.remove(self._mm, uuid_bytes(ilk_id))

    def put_alias(self, old_ilk_id: str, canonical_ilk_id: str, expires_ms: int) -> None:
        self._need_batch()
        key = uuid_bytes(old_ilk_id)
        self._ilks.remove(self._mm, key)
        off = self._aliases.slot_for(key)
        if off is None:
            self.dropped["aliases_full"] += 1
            return
        ALIAS.pack_into(self._mm, off, key, uuid_bytes(canonical_ilk_id), expires_ms, FLAG_ACTIVE)

    def remove_alias(self, old_ilk_id: str) -> None:
        self._need_batch()
        self._remove_alias(uuid_bytes(old_ilk_id))

    def _remove_alias(self, key: bytes) -> None:
        self._aliases.remove(self._mm, key)

    def put_channel(self, channel_type: str, address: str, tenant_id: str, *, ilk_id: str, ich_id: str) -> None:
        self._need_batch()
        ctype, addr = channel_key(channel_type, address)
        if not ctype or not addr or len(ctype) > CHANNEL_TYPE_BYTES or len(addr) > ADDRESS_BYTES:
            self.dropped["channel_too_long"] += 1
            return
        key: _ChanKey = (ctype, addr, uuid_bytes(tenant_id))
        ours: _OurChan = (channel_type, address, tenant_id)
        owners = self._owners.setdefault(key, {})
        owners.pop(ours, None)
        owners[ours] = (uuid_bytes(ilk_id), uuid_bytes(ich_id))
        if not self._publish(key):
            del owners[ours]
            if not owners:
                del self._owners[key]

    def remove_channel(self, channel_type: str, address: str, tenant_id: str) -> None:
        self._need_batch()
        ctype, addr = channel_key(channel_type, address)
        key: _ChanKey = (ctype, addr, uuid_bytes(tenant_id))
        owners = self._owners.get(key)
        if owners is None or owners.pop((channel_type, address, tenant_id), None) is None:
            return
        if owners:
            self._publish(key)
            return
        del self._owners[key]
        self._ichs.remove(self._mm, key)
        slot = self._map_slot.pop(key, None)
        if slot is not None:
            off = self.layout.mappings + slot * MAPPING.size
            self._mm[off: off + MAPPING.size] = bytes(MAPPING.size)
            struct.pack_into("<H", self._mm, off + _MAP_FLAGS_AT, MAP_TOMBSTONE)
            self._tombstones += 1
            if self._tombstones * 4 > self.limits.max_ich_mappings:
                self._rebuild_mappings()

    def clear(self) -> None:
        """Forget everything (followed by puts: a full rebuild)."""
        self._need_batch()
        for table in (self._tenants, self._ilks, self._ichs, self._aliases):
            table.clear(self._mm)
        for slot in self._map_slot.values():
            off = self.layout.mappings + slot * MAPPING.size
            self._mm[off: off + MAPPING.size] = bytes(MAPPING.size)
        self._map_slot.clear()
        self._owners.clear()
        if self._tombstones:
            self._zero_mappings()
        self.dropped.clear()

    def heartbeat(self) -> None:
        """Heartbeat through the seqlock, as the original writes it."""
        if self.closed or self._in_batch:
            return
        seq = self._seq
        seq[_OFF_SEQ // 8] += 1
        _U64.pack_into(self._mm, _OFF_HEARTBEAT, epoch_ms())
        seq[_OFF_SEQ // 8] += 1

    def counts(self) -> dict[str, int]:
        return {"tenants": len(self._tenants), "ilks": len(self._ilks), "ichs": len(self._ichs),
                "ich_mappings": len(self._map_slot), "ilk_aliases": len(self._aliases)}

    # channels ----------------------------------------------------------------
    def _publish(self, key: _ChanKey) -> bool:
        """Write the newest owner of ``key`` to the ICH table and the mapping table; False if it did not fit."""
        ilk, ich = next(reversed(self._owners[key].values()))
        ctype, addr, tenant = key
        new_ich = key not in self._ichs.index
        off = self._ichs.slot_for(key)
        if off is None:
            self.dropped["ichs_full"] += 1
            return False
        slot = self._map_slot.get(key)
        if slot is None:
            slot = self._free_mapping_slot(fnv1a64(ctype, addr, tenant))
            if slot is None:
                if new_ich:
                    self._ichs.remove(self._mm, key)
                self.dropped["mappings_full"] += 1
                return False
            self._map_slot[key] = slot
        ICH.pack_into(self._mm, off, ich, ilk, ctype, addr, FLAG_ACTIVE, 0, epoch_ms())
        MAPPING.pack_into(self._mm, self.layout.mappings + slot * MAPPING.size, fnv1a64(ctype, addr, tenant),
                          ctype, addr, ich, ilk, tenant, MAP_OCCUPIED)
        return True

    def _free_mapping_slot(self, h: int) -> int | None:
        n = self.limits.max_ich_mappings
        base = self.layout.mappings + _MAP_FLAGS_AT
        mm = self._mm
        i = h % n
        for _ in range(n):
            flags = int.from_bytes(mm[base + i * MAPPING.size: base + i * MAPPING.size + 2], "little")
            if flags == 0:
                return i
            if flags & MAP_TOMBSTONE:
                self._tombstones -= 1
                return i
            i = (i + 1) % n
        return None

    def _zero_mappings(self) -> None:
        start = self.layout.mappings
        self._mm[start: start + MAPPING.size * self.limits.max_ich_mappings] = bytes(
            MAPPING.size * self.limits.max_ich_mappings)
        self._tombstones = 0

    def _rebuild_mappings(self) -> None:
        """Drop every tombstone: zero the table and insert the live keys again (inside the batch)."""
        self._zero_mappings()
        self._map_slot.clear()
        for key in self._owners:
            slot = self._free_mapping_slot(fnv1a64(*key))
            if slot is None:  # cannot happen: the table holds at most half as many keys as slots
                raise RuntimeError("bug: jsr-identity mapping table full during rebuild")
            self._map_slot[key] = slot
            ilk, ich = next(reversed(self._owners[key].values()))
            MAPPING.pack_into(self._mm, self.layout.mappings + slot * MAPPING.size, fnv1a64(*key), key[0], key[1],
                              ich, ilk, key[2], MAP_OCCUPIED)

    # lifecycle -----------------------------------------------------------------
    def is_ours(self) -> bool:
        """True while the name still maps the segment this writer created."""
        return inode_of(self.name) == self._inode and bytes(self._mm[80:96]) == self.owner_uuid

    def close(self) -> None:
        """Zero the heartbeat (readers see the owner gone) and unlink the name only if it is still ours."""
        if self.closed:
            return
        self.closed = True
        ours = self.is_ours()
        self._seq[_OFF_SEQ // 8] += 1
        _U64.pack_into(self._mm, _OFF_HEARTBEAT, 0)
        self._seq[_OFF_SEQ // 8] += 1
        self._seq.release()
        self._mm.close()
        release(self.name, self._inode, unlink=ours)
