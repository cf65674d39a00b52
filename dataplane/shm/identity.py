"""The identity region: ILKs, aliases and channel keys in shared memory.

Why: IO nodes resolve ``(channel_type, address, tenant) -> ilk`` and the router
canonicalises ``meta.src_ilk`` through aliases on every ``dst: null`` message.
A round trip to SY.identity (or PostgreSQL) per message would cost tens of
microseconds; a probe of this region costs about one.

Roles and invariants
--------------------
* **One writer**: the local SY.identity. It keeps the full model in process
  memory and applies each committed change *incrementally* (a few slot stores),
  so a write costs O(changed records), not O(region).  When the string heap is
  exhausted it rebuilds the whole region from its model (compaction).
* **Whole-region seqlock.** ``seq`` (header word 1) is odd while the writer is
  inside :meth:`IdentityRegionWriter.batch`.  A reader loads ``seq``, probes
  the tables *directly in the mapping*, loads ``seq`` again and accepts the
  answer only if both loads are equal and even; otherwise it retries, giving up
  with :class:`ReadTimeoutError` after 5 ms.  A lookup never copies the region.
  Memory-ordering notes of :mod:`.table` apply (x86-64 TSO).
* **Heartbeat** every ~2 s in ``heartbeat_ms``; ``close()`` zeroes it.  A reader
  whose region is stale (owner gone) or replaced reopens by name
  (:meth:`IdentityRegionReader.refresh`).  ``generation`` is +1 per creation.
* **Takeover and close** follow the rule of every layout (:mod:`.region`): a live owner with a
  fresh heartbeat, or stuck mid-store, keeps its region; ``close()`` unlinks the name only if it
  still maps the region this writer created, never a successor's.
* **data_version** counts committed identity changes the writer applied; a
  reader that caches keys on ``(generation, data_version)``.

Layout (ours; little-endian except the native ``seq`` word)::

    header, 256 B at 0
      0 magic u64 b"FLXBIDNT" | 8 seq u64 | 16 layout version u32 | 20 flags u32 (1 = primary)
     24 region_size u64 | 32 generation u64 | 40 created_ms u64 | 48 heartbeat_ms u64
     56 owner_pid u32 | 60 ilk_slots u32 | 64 chan_slots u32 | 68 heap_size u32 | 72 heap_used u32
     76 ilk_count u32 | 80 alias_count u32 | 84 chan_count u32 | 88 data_version u64
     96 updated_ms u64 | 104 owner_uuid 16 B | 120 hive_id_len u8 | 128 hive_id 64 B | 192 reserved
    ILK table, ilk_slots x 64 B at 256 (open addressing, linear probing, key = ILK UUID bytes)
      0 key 16 B | 16 ref 16 B (tenant of an ILK; canonical ILK of an alias) | 32 expires_ms u64 (alias)
     40 kind u8 (0 empty, 1 ILK, 2 alias, 3 tombstone) | 41 ilk_type u8 | 42 status u8
     43 human_subtype u8 (0 none, 1 internal, 2 external)
     44 str_off u32 | 48 str_len u16 (handler node name, in the heap) | 50 reserved
     52 attr_off u32 | 56 attr_len u32 (capabilities and roles: JSON ``[[caps], [roles]]`` in the
        heap; 0 = none) | 60 reserved
    (bytes 43 and 52..59 were reserved zeros in the first version of this layout, so a region
    written without them reads as "no subtype, no capabilities, no roles")
    channel table, chan_slots x 64 B (key = normalised channel_type, address and tenant)
      0 hash u64 | 8 ilk 16 B | 24 ich 16 B | 40 tenant 16 B | 56 str_off u32 | 60 str_len u16
     62 kind u8 (0 empty, 1 used, 3 tombstone) | 63 reserved
    heap, heap_size bytes: channel keys (``type \\0 address``) and handler names, UTF-8

Hash: 8-byte BLAKE2b of ``type \\0 address \\0 tenant-bytes`` (channel table) or
of the ILK bytes (ILK table); slot = hash mod slots (a power of two).

This module is a leaf adapter: it imports nothing else of ours and never logs.
"""

from __future__ import annotations

import mmap
import os
import uuid as _uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import msgspec

from .identity_layout import (
    _CHAN,
    _COUNTS,
    _HEADER,
    _ILK,
    _OFF_COUNTS,
    _OFF_HEAP_USED,
    _OFF_HEARTBEAT,
    _OFF_VERSIONS,
    _SEQ_WORD,
    _U32,
    _U64,
    _VERSIONS,
    HEADER_SIZE,
    KIND_ALIAS,
    KIND_EMPTY,
    KIND_ILK,
    KIND_TOMBSTONE,
    KIND_USED,
    LAYOUT_VERSION,
    MAGIC,
    MAX_HIVE_ID_BYTES,
    READ_DEADLINE_S,
    SLOT_SIZE,
    STALE_AFTER_MS,
    Capacity,
    IdentityHeader,
    _hash,
    channel_key,
    region_name,
    run_dir_scope,
)
from .identity_reader import IdentityRegionReader, RegionHandle
from .identity_records import (
    CASE_INSENSITIVE_CHANNELS,
    HUMAN_SUBTYPES,
    ILK_TYPES,
    MAX_ADDRESS_BYTES,
    MAX_CHANNEL_TYPE_BYTES,
    STATUSES,
    ZERO_ID,
    ChannelHit,
    IlkInfo,
    RegionMirror,
    id_bytes,
    id_text,
    normalise_channel,
)
from .identity_records import (
    code_of as _index,
)
from .region import (
    ClosedOnExit,
    Predecessor,
    ReadTimeoutError,
    RegionBusyError,
    RegionFormatError,
    RegionFullError,
    RegionNotFoundError,
    ShmError,
    clear_the_way,
    create_region,
    epoch_ms,
    hold,
    release,
)

__all__ = [
    "CASE_INSENSITIVE_CHANNELS",
    "Capacity",
    "ChannelHit",
    "HEADER_SIZE",
    "HUMAN_SUBTYPES",
    "ILK_TYPES",
    "IdentityHeader",
    "IdentityRegionReader",
    "IdentityRegionWriter",
    "IdentityShmError",
    "IlkInfo",
    "KIND_ALIAS",
    "KIND_EMPTY",
    "KIND_ILK",
    "KIND_TOMBSTONE",
    "KIND_USED",
    "LAYOUT_VERSION",
    "MAGIC",
    "MAX_ADDRESS_BYTES",
    "MAX_CHANNEL_TYPE_BYTES",
    "MAX_HIVE_ID_BYTES",
    "READ_DEADLINE_S",
    "ReadTimeoutError",
    "RegionBusyError",
    "RegionFormatError",
    "RegionFullError",
    "RegionHandle",
    "RegionMirror",
    "RegionNotFoundError",
    "SLOT_SIZE",
    "STALE_AFTER_MS",
    "STATUSES",
    "ZERO_ID",
    "channel_key",
    "id_bytes",
    "id_text",
    "normalise_channel",
    "region_name",
    "run_dir_scope",
]


_json = msgspec.json.Encoder()

IdentityShmError = ShmError
"""Kept name: the identity region raises the one error family of :mod:`.region`."""


# --------------------------------------------------------------------------- pure helpers


# --------------------------------------------------------------------------- value types


# --------------------------------------------------------------------------- writer


@dataclass(slots=True)
class _IlkModel:
    tenant: bytes
    ilk_type: int
    status: int
    handler: str
    subtype: int = 0
    attrs: bytes = b""  # JSON [[capabilities], [roles]], empty when both are


class IdentityRegionWriter(ClosedOnExit):
    """Creates and owns the region; applies changes inside :meth:`batch`.

    ``mirror``, when given, receives every change inside the same batch (its seqlock opens after
    ours and closes before ours), so both regions always show the same committed change; it is
    closed with this writer.
    """

    def __init__(self, hive_id: str, *, capacity: Capacity, owner_uuid: str | None = None,
                 is_primary: bool = True, name: str | None = None,
                 run_dir: str | os.PathLike[str] | None = None, mirror: RegionMirror | None = None) -> None:
        self.mirror = mirror
        if len(hive_id.encode()) > MAX_HIVE_ID_BYTES:
            raise ValueError(f"hive id {hive_id!r} is longer than {MAX_HIVE_ID_BYTES} bytes")
        self.name = name or region_name(hive_id, run_dir)
        self.hive_id = hive_id
        self.capacity = capacity
        self.owner_uuid = owner_uuid or str(_uuid.uuid4())
        self._ilks: dict[bytes, _IlkModel] = {}
        self._aliases: dict[bytes, tuple[bytes, int]] = {}
        self._chans: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}  # (key, tenant) -> (ilk, ich)
        self._ilk_slot: dict[bytes, int] = {}
        self._chan_slot: dict[tuple[bytes, bytes], int] = {}
        self._heap_used = 0
        self._data_version = 0
        self._in_batch = False
        generation = self._takeover()
        size = capacity.region_size
        self._shm, self._inode = create_region(self.name, size)
        try:
            self._mm = mmap.mmap(self._shm.fd, size)
        finally:
            self._shm.close_fd()
        hold(self.name, self._inode)
        self._seq = memoryview(self._mm).cast("Q")
        now = epoch_ms()
        uid = _uuid.UUID(self.owner_uuid).bytes
        _HEADER.pack_into(self._mm, 0, MAGIC, 0, LAYOUT_VERSION, 1 if is_primary else 0, size, generation, now, now,
                          os.getpid(), capacity.ilk_slots, capacity.chan_slots, capacity.heap_size, 0, 0, 0, 0,
                          0, now, uid, len(hive_id.encode()), hive_id.encode())
        self._ilk_base = HEADER_SIZE
        self._chan_base = HEADER_SIZE + SLOT_SIZE * capacity.ilk_slots
        self._heap_base = self._chan_base + SLOT_SIZE * capacity.chan_slots
        self.generation = generation
        self.closed = False

    def _takeover(self) -> int:
        """Remove a dead or stale predecessor's region; refuse a live one.  Returns the new generation.

        The rule of every layout (:func:`.region.clear_the_way`): a live owner whose header stays
        half-written keeps its region too; a crashed writer's does not.
        """

        def parse(raw: bytes) -> Predecessor | None:
            f = _HEADER.unpack(raw)
            if f[0] != MAGIC or f[2] != LAYOUT_VERSION:
                return None
            return Predecessor(owner_pid=f[8], heartbeat_ms=f[7], generation=f[5])

        return clear_the_way(self.name, header_size=HEADER_SIZE, parse=parse,
                             stale_after_ms=STALE_AFTER_MS, now_ms=epoch_ms) + 1

    # batches ------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[IdentityRegionWriter]:
        """Hold the seqlock odd while changes are stored; bump ``data_version`` at the end."""
        if self._in_batch:
            raise RuntimeError("bug: nested identity region batch")
        self._in_batch = True
        seq = self._seq
        seq[_SEQ_WORD] += 1
        try:
            with self.mirror.batch() if self.mirror is not None else nullcontext():
                yield self
        finally:
            self._data_version += 1
            _VERSIONS.pack_into(self._mm, _OFF_VERSIONS, self._data_version, epoch_ms())
            _COUNTS.pack_into(self._mm, _OFF_COUNTS, len(self._ilks), len(self._aliases), len(self._chans))
            _U32.pack_into(self._mm, _OFF_HEAP_USED, self._heap_used)
            seq[_SEQ_WORD] += 1
            self._in_batch = False

    def _need_batch(self) -> None:
        if not self._in_batch:
            raise RuntimeError("bug: identity region changes must happen inside batch()")

    # public change operations (inside batch) ----------------------------
    def put_ilk(self, ilk_id: str, *, tenant_id: str, ilk_type: str, registration_status: str,
                handler_node: str = "", human_subtype: str = "", capabilities: Sequence[str] = (),
                roles: Sequence[str] = ()) -> None:
        """Publish an ILK (replacing its previous record). ValueError for an unknown type, status or
        subtype, a subtype on a non-human, or an empty capability or role."""
        self._need_batch()
        key = id_bytes(ilk_id)
        subtype = _index(HUMAN_SUBTYPES, human_subtype)
        if subtype and ilk_type != "human":
            raise ValueError(f"{ilk_id}: human subtype {human_subtype!r} on a {ilk_type} identity")
        caps, role_list = sorted(set(capabilities)), sorted(set(roles))
        if any(not isinstance(v, str) or not v for v in (*caps, *role_list)):
            raise ValueError(f"{ilk_id}: empty or non-string capability or role")
        attrs = _json.encode([caps, role_list]) if caps or role_list else b""
        model = _IlkModel(id_bytes(tenant_id), _index(ILK_TYPES, ilk_type), _index(STATUSES, registration_status),
                          handler_node, subtype, attrs)
        self._ilks[key] = model
        self._aliases.pop(key, None)
        self._store_ilk_slot(key)
        if self.mirror is not None:
            self.mirror.put_ilk(ilk_id, tenant_id=tenant_id, ilk_type=ilk_type,
                                registration_status=registration_status, handler_node=handler_node)

    def remove_ilk(self, ilk_id: str) -> None:
        self._need_batch()
        key = id_bytes(ilk_id)
        if self._ilks.pop(key, None) is not None:
            self._drop_ilk_slot(key)
        if self.mirror is not None:
            self.mirror.remove_ilk(ilk_id)

    def put_alias(self, old_ilk_id: str, canonical_ilk_id: str, expires_ms: int) -> None:
        self._need_batch()
        key = id_bytes(old_ilk_id)
        self._ilks.pop(key, None)
        self._aliases[key] = (id_bytes(canonical_ilk_id), expires_ms)
        self._store_ilk_slot(key)
        if self.mirror is not None:
            self.mirror.put_alias(old_ilk_id, canonical_ilk_id, expires_ms)

    def remove_alias(self, old_ilk_id: str) -> None:
        self._need_batch()
        key = id_bytes(old_ilk_id)
        if self._aliases.pop(key, None) is not None:
            self._drop_ilk_slot(key)
        if self.mirror is not None:
            self.mirror.remove_alias(old_ilk_id)

    def put_channel(self, channel_type: str, address: str, tenant_id: str, *, ilk_id: str, ich_id: str) -> None:
        self._need_batch()
        ck = (channel_key(channel_type, address), id_bytes(tenant_id))
        self._chans[ck] = (id_bytes(ilk_id), id_bytes(ich_id))
        self._store_chan_slot(ck)
        if self.mirror is not None:
            self.mirror.put_channel(channel_type, address, tenant_id, ilk_id=ilk_id, ich_id=ich_id)

    def remove_channel(self, channel_type: str, address: str, tenant_id: str) -> None:
        self._need_batch()
        ck = (channel_key(channel_type, address), id_bytes(tenant_id))
        if self._chans.pop(ck, None) is not None:
            slot = self._chan_slot.pop(ck)
            self._mm[self._chan_base + slot * SLOT_SIZE + 62] = KIND_TOMBSTONE
        if self.mirror is not None:
            self.mirror.remove_channel(channel_type, address, tenant_id)

    def put_tenant(self, tenant_id: str, *, name: str, status: str) -> None:
        """Tenants live only in the mirror (the original layout has a tenant table; ours does not)."""
        self._need_batch()
        if self.mirror is not None:
            self.mirror.put_tenant(tenant_id, name=name, status=status)

    def clear(self) -> None:
        """Forget everything (followed by puts: a full rebuild, e.g. at start)."""
        self._need_batch()
        self._ilks.clear()
        self._aliases.clear()
        self._chans.clear()
        self._rebuild()
        if self.mirror is not None:
            self.mirror.clear()

    def heartbeat(self) -> None:
        if not self.closed:
            _U64.pack_into(self._mm, _OFF_HEARTBEAT, epoch_ms())
            if self.mirror is not None:
                self.mirror.heartbeat()

    @property
    def data_version(self) -> int:
        return self._data_version

    def counts(self) -> tuple[int, int, int]:
        """``(ilks, aliases, channels)`` currently published."""
        return len(self._ilks), len(self._aliases), len(self._chans)

    # slots ---------------------------------------------------------------
    def _alloc_str(self, data: bytes) -> int:
        if self._heap_used + len(data) > self.capacity.heap_size:
            raise _HeapFull
        off = self._heap_used
        self._mm[self._heap_base + off: self._heap_base + off + len(data)] = data
        self._heap_used += len(data)
        return off

    def _store_ilk_slot(self, key: bytes) -> None:
        try:
            self._store_ilk_slot_once(key)
        except _HeapFull:
            self._rebuild()

    def _store_ilk_slot_once(self, key: bytes) -> None:
        slot = self._ilk_slot.get(key)
        if slot is None:
            slot = self._free_slot(self._ilk_base, self.capacity.ilk_slots, _hash(key), "ILK")
            self._ilk_slot[key] = slot
        off = self._ilk_base + slot * SLOT_SIZE
        ilk = self._ilks.get(key)
        if ilk is not None:
            handler = ilk.handler.encode()
            str_off = self._alloc_str(handler) if handler else 0
            attr_off = self._alloc_str(ilk.attrs) if ilk.attrs else 0
            _ILK.pack_into(self._mm, off, key, ilk.tenant, 0, KIND_ILK, ilk.ilk_type, ilk.status, ilk.subtype,
                           str_off, len(handler), attr_off, len(ilk.attrs))
        else:
            canonical, expires = self._aliases[key]
            _ILK.pack_into(self._mm, off, key, canonical, expires, KIND_ALIAS, 0, 0, 0, 0, 0, 0, 0)

    def _drop_ilk_slot(self, key: bytes) -> None:
        slot = self._ilk_slot.pop(key, None)
        if slot is not None:
            self._mm[self._ilk_base + slot * SLOT_SIZE + 40] = KIND_TOMBSTONE

    def _store_chan_slot(self, ck: tuple[bytes, bytes]) -> None:
        try:
            self._store_chan_slot_once(ck)
        except _HeapFull:
            self._rebuild()

    def _store_chan_slot_once(self, ck: tuple[bytes, bytes]) -> None:
        key, tenant = ck
        h = _hash(key + b"\0" + tenant)
        slot = self._chan_slot.get(ck)
        if slot is None:
            slot = self._free_slot(self._chan_base, self.capacity.chan_slots, h, "channel", kind_at=62)
            self._chan_slot[ck] = slot
        ilk, ich = self._chans[ck]
        str_off = self._alloc_str(key)
        _CHAN.pack_into(self._mm, self._chan_base + slot * SLOT_SIZE, h, ilk, ich, tenant, str_off, len(key), KIND_USED)

    def _free_slot(self, base: int, slots: int, h: int, what: str, kind_at: int = 40) -> int:
        mask = slots - 1
        i = h & mask
        mm = self._mm
        for _ in range(slots):
            if mm[base + i * SLOT_SIZE + kind_at] in (KIND_EMPTY, KIND_TOMBSTONE):
                return i
            i = (i + 1) & mask
        raise RegionFullError(self.name, slots, what)

    def _rebuild(self) -> None:
        """Zero both tables and the heap, then store every record again (compaction)."""
        self._need_batch()
        start = self._ilk_base
        self._mm[start:self._heap_base] = bytes(self._heap_base - start)
        self._ilk_slot.clear()
        self._chan_slot.clear()
        self._heap_used = 0
        for key in list(self._ilks) + list(self._aliases):
            self._store_ilk_slot_once(key)
        for ck in self._chans:
            self._store_chan_slot_once(ck)

    # lifecycle -------------------------------------------------------------
    def close(self, *, unlink: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        _U64.pack_into(self._mm, _OFF_HEARTBEAT, 0)
        self._seq.release()
        self._mm.close()
        release(self.name, self._inode, unlink=unlink)  # never a successor's region
        if self.mirror is not None:
            self.mirror.close()


class _HeapFull(Exception):
    pass
