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
  Memory-ordering notes of :mod:`fluxbee.dataplane.shm` apply (x86-64 TSO).
* **Heartbeat** every ~2 s in ``heartbeat_ms``; ``close()`` zeroes it.  A reader
  whose region is stale (owner gone) or replaced reopens by name
  (:meth:`IdentityRegionReader.refresh`).  ``generation`` is +1 per creation.
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
     40 kind u8 (0 empty, 1 ILK, 2 alias, 3 tombstone) | 41 ilk_type u8 | 42 status u8 | 43 reserved
     44 str_off u32 | 48 str_len u16 (handler node name, in the heap) | 50 reserved
    channel table, chan_slots x 64 B (key = normalised channel_type, address and tenant)
      0 hash u64 | 8 ilk 16 B | 24 ich 16 B | 40 tenant 16 B | 56 str_off u32 | 60 str_len u16
     62 kind u8 (0 empty, 1 used, 3 tombstone) | 63 reserved
    heap, heap_size bytes: channel keys (``type \\0 address``) and handler names, UTF-8

Hash: 8-byte BLAKE2b of ``type \\0 address \\0 tenant-bytes`` (channel table) or
of the ILK bytes (ILK table); slot = hash mod slots (a power of two).

This module is a leaf adapter: it imports nothing else of ours and never logs.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
import uuid as _uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol

import posix_ipc

from fluxbee.dataplane.shm import ClosedOnExit, ShmError, epoch_ms, pid_alive

MAGIC: Final = int.from_bytes(b"FLXBIDNT", "little")
LAYOUT_VERSION: Final = 1
HEADER_SIZE: Final = 256
SLOT_SIZE: Final = 64
STALE_AFTER_MS: Final = 10_000
READ_DEADLINE_S: Final = 0.005
MAX_HIVE_ID_BYTES: Final = 64
MAX_CHANNEL_TYPE_BYTES: Final = 32
MAX_ADDRESS_BYTES: Final = 256

KIND_EMPTY: Final = 0
KIND_ILK: Final = 1
KIND_ALIAS: Final = 2
KIND_USED: Final = 1
KIND_TOMBSTONE: Final = 3

ILK_TYPES: Final = ("human", "agent", "system")
STATUSES: Final = ("temporary", "partial", "complete")
ZERO_ID: Final = bytes(16)

_HEADER = struct.Struct("<QQIIQQQQ8IQQ16sB7x64s64x")
_ILK = struct.Struct("<16s16sQBBBxIH14x")
_CHAN = struct.Struct("<Q16s16s16sIHBx")
_SEQ_WORD: Final = 1
_OFF_HEAP_USED: Final = 72
_COUNTS = struct.Struct("<III")  # ilk_count, alias_count, chan_count at 76
_OFF_COUNTS: Final = 76
_VERSIONS = struct.Struct("<QQ")  # data_version, updated_ms at 88
_OFF_VERSIONS: Final = 88
_OFF_HEARTBEAT: Final = 48
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

if _HEADER.size != HEADER_SIZE or _ILK.size != SLOT_SIZE or _CHAN.size != SLOT_SIZE:  # pragma: no cover
    raise ImportError("fluxbee.dataplane.identity_shm: struct sizes do not match the documented layout")


class IdentityShmError(ShmError):
    """Base of this module's errors."""


class RegionNotFoundError(IdentityShmError):
    def __init__(self, name: str) -> None:
        super().__init__(f"identity region {name!r} does not exist (is SY.identity running?)")
        self.name = name


class RegionBusyError(IdentityShmError):
    def __init__(self, name: str, owner_pid: int) -> None:
        super().__init__(f"identity region {name!r} is held by live process {owner_pid} with a fresh heartbeat")
        self.name = name
        self.owner_pid = owner_pid


class RegionFormatError(IdentityShmError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"identity region {name!r} has an unexpected format: {reason}")
        self.name = name
        self.reason = reason


class ReadTimeoutError(IdentityShmError):
    def __init__(self, name: str, deadline_s: float) -> None:
        super().__init__(f"no consistent read of {name!r} within {deadline_s * 1000:.1f} ms")
        self.name = name
        self.deadline_s = deadline_s


class RegionFullError(IdentityShmError):
    def __init__(self, name: str, what: str, slots: int) -> None:
        super().__init__(f"identity region {name!r}: the {what} table is full ({slots} slots)")
        self.name = name
        self.what = what
        self.slots = slots


# --------------------------------------------------------------------------- pure helpers


def run_dir_scope(run_dir: str | os.PathLike[str]) -> str:
    """A short, stable tag of a hive's run dir: two hives with one id on one host (two namespaces
    on a Kubernetes node share ``/dev/shm`` through hostIPC) must not share an identity region."""
    return hashlib.sha256(os.path.realpath(run_dir).encode()).hexdigest()[:10]


def region_name(hive_id: str, run_dir: str | os.PathLike[str] | None = None) -> str:
    """POSIX name of a hive's identity region, e.g. ``/fluxbee-identity-prod-1a2b3c4d5e``.

    Every process of a hive passes the hive's run dir; without one (unit tests, tools that name
    no run dir) the name is unscoped, ``/fluxbee-identity-prod``."""
    base = f"/fluxbee-identity-{hive_id}"
    return base if run_dir is None else f"{base}-{run_dir_scope(run_dir)}"


@lru_cache(maxsize=4096)
def id_bytes(value: str | None) -> bytes:
    """16 raw bytes of a prefixed (``tnt:``/``ilk:``/``ich:``) or bare UUID; zero bytes if unparsable.

    Cached: readers see the same few tenants and hot ILKs again and again.
    """
    if not value:
        return ZERO_ID
    _, sep, rest = value.partition(":")
    text = rest if sep else value
    try:
        return _uuid.UUID(text.strip()).bytes
    except ValueError:
        return ZERO_ID


def id_text(prefix: str, raw: bytes) -> str:
    """``prefix:`` + the dashed lowercase UUID of 16 raw bytes (cheaper than ``uuid.UUID``)."""
    h = raw.hex()
    return f"{prefix}:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


CASE_INSENSITIVE_CHANNELS: Final = frozenset({"email", "mail"})


def normalise_channel(channel_type: str, address: str) -> tuple[str, str]:
    """The one rule for channel keys: trim both; lowercase the type; lowercase the
    address only for channels whose addresses are case-insensitive (email).

    The original lowercased every address, which merges case-sensitive handles.
    """
    ctype = channel_type.strip().lower()
    addr = address.strip()
    if ctype in CASE_INSENSITIVE_CHANNELS:
        addr = addr.lower()
    return ctype, addr


def channel_key(channel_type: str, address: str) -> bytes:
    ctype, addr = normalise_channel(channel_type, address)
    return ctype.encode() + b"\0" + addr.encode()


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _pow2(n: int) -> int:
    p = 64
    while p < n:
        p <<= 1
    return p


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class IlkInfo:
    """An ILK as published: ids are prefixed strings; ``handler_node`` may be empty."""

    ilk_id: str
    tenant_id: str
    ilk_type: str
    registration_status: str
    handler_node: str


@dataclass(frozen=True, slots=True)
class ChannelHit:
    ilk_id: str
    ich_id: str


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    hive_id: str
    owner_pid: int
    owner_uuid: str
    is_primary: bool
    generation: int
    created_ms: int
    heartbeat_ms: int
    data_version: int
    updated_ms: int
    ilk_count: int
    alias_count: int
    chan_count: int
    ilk_slots: int
    chan_slots: int
    heap_size: int
    heap_used: int

    def is_stale(self, now_ms: int | None = None, max_age_ms: int = STALE_AFTER_MS) -> bool:
        return (epoch_ms() if now_ms is None else now_ms) - self.heartbeat_ms > max_age_ms


@dataclass(frozen=True, slots=True)
class Capacity:
    """Table sizes derived from the expected number of ILKs (load factor <= 0.5)."""

    ilk_slots: int
    chan_slots: int
    heap_size: int

    @classmethod
    def for_ilks(cls, max_ilks: int) -> Capacity:
        return cls(ilk_slots=_pow2(max_ilks * 4), chan_slots=_pow2(max_ilks * 8), heap_size=max(65536, max_ilks * 384))

    @property
    def region_size(self) -> int:
        return HEADER_SIZE + SLOT_SIZE * (self.ilk_slots + self.chan_slots) + self.heap_size


# --------------------------------------------------------------------------- writer


class RegionMirror(Protocol):
    """A second region the writer keeps in step with its own, change for change and batch for batch
    (the original-layout region, :mod:`fluxbee.dataplane.identity_jsid`).  It must not raise for
    capacity: what does not fit is its own business (counted there)."""

    def batch(self) -> AbstractContextManager[Any]: ...
    def put_tenant(self, tenant_id: str, *, name: str, status: str) -> None: ...
    def put_ilk(self, ilk_id: str, *, tenant_id: str, ilk_type: str, registration_status: str,
                handler_node: str = ..., display_name: str = ...) -> None: ...
    def remove_ilk(self, ilk_id: str) -> None: ...
    def put_alias(self, old_ilk_id: str, canonical_ilk_id: str, expires_ms: int) -> None: ...
    def remove_alias(self, old_ilk_id: str) -> None: ...
    def put_channel(self, channel_type: str, address: str, tenant_id: str, *, ilk_id: str, ich_id: str) -> None: ...
    def remove_channel(self, channel_type: str, address: str, tenant_id: str) -> None: ...
    def clear(self) -> None: ...
    def heartbeat(self) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _IlkModel:
    tenant: bytes
    ilk_type: int
    status: int
    handler: str


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
        try:
            self._shm = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as err:
            raise RegionBusyError(self.name, 0) from err
        self._mm = mmap.mmap(self._shm.fd, size)
        self._shm.close_fd()
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
        """Remove a dead or stale predecessor's region; refuse a live one.  Returns the new generation."""
        try:
            old = IdentityRegionReader(self.hive_id, name=self.name)
        except RegionNotFoundError:
            return 1
        except IdentityShmError:
            with suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(self.name)
            return 1
        try:
            head = old.header()
            alive = head.owner_pid != os.getpid() and pid_alive(head.owner_pid)
            if alive and not head.is_stale():
                raise RegionBusyError(self.name, head.owner_pid)
            generation = head.generation + 1
        except ReadTimeoutError:
            generation = 1
        finally:
            old.close()
        with suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(self.name)
        return generation

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
                handler_node: str = "") -> None:
        self._need_batch()
        key = id_bytes(ilk_id)
        model = _IlkModel(id_bytes(tenant_id), _index(ILK_TYPES, ilk_type), _index(STATUSES, registration_status),
                          handler_node)
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
            _ILK.pack_into(self._mm, off, key, ilk.tenant, 0, KIND_ILK, ilk.ilk_type, ilk.status, str_off, len(handler))
        else:
            canonical, expires = self._aliases[key]
            _ILK.pack_into(self._mm, off, key, canonical, expires, KIND_ALIAS, 0, 0, 0, 0)

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
        raise RegionFullError(self.name, what, slots)

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
        if unlink:
            with suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(self.name)
        if self.mirror is not None:
            self.mirror.close()


class _HeapFull(Exception):
    pass


def _index(values: tuple[str, ...], value: str) -> int:
    try:
        return values.index(value)
    except ValueError:
        raise ValueError(f"unknown value {value!r}; expected one of {', '.join(values)}") from None


# --------------------------------------------------------------------------- reader


class IdentityRegionReader(ClosedOnExit):
    """Read-only view.  Every lookup is one seqlock-validated probe in the mapping."""

    def __init__(self, hive_id: str, *, name: str | None = None, run_dir: str | os.PathLike[str] | None = None) -> None:
        self.name = name or region_name(hive_id, run_dir)
        self.hive_id = hive_id
        try:
            shm = posix_ipc.SharedMemory(self.name, 0)
        except posix_ipc.ExistentialError as err:
            raise RegionNotFoundError(self.name) from err
        try:
            size = shm.size
            if size < HEADER_SIZE:
                raise RegionFormatError(self.name, f"size {size} is smaller than the header")
            self._mm = mmap.mmap(shm.fd, size, prot=mmap.PROT_READ)
        finally:
            shm.close_fd()
        self._ino = os.stat(f"/dev/shm/{self.name.lstrip('/')}").st_ino if os.path.exists(
            f"/dev/shm/{self.name.lstrip('/')}") else 0
        self._seq = memoryview(self._mm).cast("Q")
        fields = _HEADER.unpack_from(self._mm, 0)
        if fields[0] != MAGIC:
            self.close()
            raise RegionFormatError(self.name, "bad magic")
        if fields[2] != LAYOUT_VERSION:
            self.close()
            raise RegionFormatError(self.name, f"layout version {fields[2]}, expected {LAYOUT_VERSION}")
        if fields[4] != size:
            self.close()
            raise RegionFormatError(self.name, f"header says {fields[4]} bytes, region has {size}")
        self.ilk_slots = int(fields[9])
        self.chan_slots = int(fields[10])
        self.heap_size = int(fields[11])
        self._ilk_base = HEADER_SIZE
        self._chan_base = HEADER_SIZE + SLOT_SIZE * self.ilk_slots
        self._heap_base = self._chan_base + SLOT_SIZE * self.chan_slots
        if self._heap_base + self.heap_size != size:
            self.close()
            raise RegionFormatError(self.name, "table sizes do not add up to the region size")
        self.closed = False

    # seqlock --------------------------------------------------------------
    def _begin(self, deadline: float | None) -> tuple[int, float | None]:
        seq = self._seq
        while True:
            s1 = seq[_SEQ_WORD]
            if not s1 & 1:
                return s1, deadline
            now = time.monotonic()
            if deadline is None:
                deadline = now + READ_DEADLINE_S
            elif now > deadline:
                raise ReadTimeoutError(self.name, READ_DEADLINE_S)
            os.sched_yield()

    def header(self) -> IdentityHeader:
        deadline: float | None = None
        while True:
            s1, deadline = self._begin(deadline)
            f = _HEADER.unpack_from(self._mm, 0)
            if self._seq[_SEQ_WORD] == s1:
                hive = f[20][: f[19]].decode("utf-8", "replace")
                return IdentityHeader(
                    hive_id=hive, owner_pid=f[8], owner_uuid=str(_uuid.UUID(bytes=f[18])), is_primary=bool(f[3] & 1),
                    generation=f[5], created_ms=f[6], heartbeat_ms=f[7], data_version=f[16], updated_ms=f[17],
                    ilk_count=f[13], alias_count=f[14], chan_count=f[15],
                    ilk_slots=f[9], chan_slots=f[10], heap_size=f[11], heap_used=f[12],
                )
            deadline = deadline or time.monotonic() + READ_DEADLINE_S

    def version(self) -> tuple[int, int]:
        """``(generation, data_version)``: changes whenever anything readable changes."""
        h = self.header()
        return h.generation, h.data_version

    def lookup_channel(self, channel_type: str, address: str, tenant_id: str) -> ChannelHit | None:
        """``(channel_type, address, tenant) -> (ilk, ich)``, or None."""
        key = channel_key(channel_type, address)
        tenant = id_bytes(tenant_id)
        h = _hash(key + b"\0" + tenant)
        mm = self._mm
        base, heap, mask = self._chan_base, self._heap_base, self.chan_slots - 1
        unpack = _CHAN.unpack_from
        deadline: float | None = None
        while True:
            s1, deadline = self._begin(deadline)
            hit: ChannelHit | None = None
            i = h & mask
            for _ in range(self.chan_slots):
                sh, ilk, ich, ten, off, ln, kind = unpack(mm, base + i * SLOT_SIZE)
                if kind == KIND_EMPTY:
                    break
                if kind == KIND_USED and sh == h and ten == tenant and mm[heap + off: heap + off + ln] == key:
                    hit = ChannelHit(id_text("ilk", ilk), id_text("ich", ich))
                    break
                i = (i + 1) & mask
            if self._seq[_SEQ_WORD] == s1:
                return hit
            deadline = deadline or time.monotonic() + READ_DEADLINE_S

    def _probe_ilk(self, key: bytes) -> tuple[int, bytes, int, int, int, str] | None:
        mm = self._mm
        base, heap, mask = self._ilk_base, self._heap_base, self.ilk_slots - 1
        i = _hash(key) & mask
        for _ in range(self.ilk_slots):
            k, ref, expires, kind, itype, status, off, ln = _ILK.unpack_from(mm, base + i * SLOT_SIZE)
            if kind == KIND_EMPTY:
                return None
            if k == key and kind in (KIND_ILK, KIND_ALIAS):
                name = bytes(mm[heap + off: heap + off + ln]).decode("utf-8", "replace") if ln else ""
                return kind, ref, expires, itype, status, name
            i = (i + 1) & mask
        return None

    def _read_ilk(self, key: bytes) -> tuple[int, bytes, int, int, int, str] | None:
        deadline: float | None = None
        while True:
            s1, deadline = self._begin(deadline)
            found = self._probe_ilk(key)
            if self._seq[_SEQ_WORD] == s1:
                return found
            deadline = deadline or time.monotonic() + READ_DEADLINE_S

    def canonical(self, ilk_id: str, now_ms: int | None = None) -> str:
        """The live canonical ILK of ``ilk_id`` (itself when it is not an unexpired alias)."""
        found = self._read_ilk(id_bytes(ilk_id))
        if found is not None and found[0] == KIND_ALIAS:
            if found[2] > (epoch_ms() if now_ms is None else now_ms):
                return id_text("ilk", found[1])
        return ilk_id

    def get_ilk(self, ilk_id: str) -> IlkInfo | None:
        """The ILK record (not following aliases), or None."""
        key = id_bytes(ilk_id)
        found = self._read_ilk(key)
        if found is None or found[0] != KIND_ILK:
            return None
        _, tenant, _, itype, status, handler = found
        return IlkInfo(id_text("ilk", key), id_text("tnt", tenant), ILK_TYPES[itype] if itype < 3 else "?",
                       STATUSES[status] if status < 3 else "?", handler)

    def resolve(self, ilk_id: str) -> IlkInfo | None:
        """Canonicalise through aliases, then the ILK record."""
        return self.get_ilk(self.canonical(ilk_id))

    def replaced(self) -> bool:
        """True when the name now maps another region, or the owner stopped beating."""
        path = f"/dev/shm/{self.name.lstrip('/')}"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            return True
        if ino != self._ino:
            return True
        try:
            return self.header().is_stale()
        except ReadTimeoutError:
            return False

    def close(self) -> None:
        if getattr(self, "closed", False):
            return
        self.closed = True
        self._seq.release()
        self._mm.close()


class RegionHandle:
    """A hive's identity region for a long-lived reader (the router, IO nodes).

    Opened lazily; at most every ``recheck_s`` it checks whether the writer replaced the region
    (SY.identity restarted) or stopped beating, and reopens.  ``get()`` is None while there is
    no region, so callers fall back (to ILK_PROVISION, or to "no L3 decision").
    """

    def __init__(self, hive_id: str, *, run_dir: str | os.PathLike[str] | None = None,
                 recheck_s: float = 1.0) -> None:
        self.hive_id = hive_id
        self.name = region_name(hive_id, run_dir)
        self.recheck_s = recheck_s
        self._reader: IdentityRegionReader | None = None
        self._checked = -1e9

    def get(self) -> IdentityRegionReader | None:
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            if self._reader is not None and self._reader.replaced():
                self._reader.close()
                self._reader = None
            if self._reader is None:
                try:
                    self._reader = IdentityRegionReader(self.hive_id, name=self.name)
                except IdentityShmError:
                    self._reader = None
        return self._reader

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

