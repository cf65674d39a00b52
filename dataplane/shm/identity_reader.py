"""Read side of SY.identity's region: one seqlock-validated probe per lookup (layout in :mod:`.identity`).

Readers find the region through POSIX shared memory only (``shm_open`` and ``fstat``), never a
``/dev/shm`` path, so they work wherever the platform keeps its shared memory.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import uuid as _uuid

import msgspec
import posix_ipc

from .identity_layout import (
    _CHAN,
    _HEADER,
    _ILK,
    _OFF_HEAP_USED,
    _OFF_VERSIONS,
    _SEQ_WORD,
    _U32,
    _VERSIONS,
    HEADER_SIZE,
    KIND_ALIAS,
    KIND_EMPTY,
    KIND_ILK,
    KIND_USED,
    LAYOUT_VERSION,
    MAGIC,
    READ_DEADLINE_S,
    SLOT_SIZE,
    IdentityHeader,
    _hash,
    channel_key,
    region_name,
)
from .identity_records import (
    HUMAN_SUBTYPES,
    ILK_TYPES,
    STATUSES,
    ChannelHit,
    IlkInfo,
    id_bytes,
    id_text,
)
from .region import (
    ClosedOnExit,
    ReadTimeoutError,
    RegionFormatError,
    RegionNotFoundError,
    ShmError,
    epoch_ms,
    inode_of,
)

# --------------------------------------------------------------------------- reader

_Probe = tuple[int, bytes, int, int, int, str, int, bytes]
"""kind, ref, expires, ilk type, status, handler node, human subtype code, attribute JSON"""
_attrs_decoder = msgspec.json.Decoder(tuple[list[str], list[str]])


def _info(key: bytes, tenant: bytes, itype: int, status: int, handler: str, subtype: int,
          attrs: bytes) -> IlkInfo:
    caps: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    if attrs:
        try:
            cap_list, role_list = _attrs_decoder.decode(attrs)
            caps, roles = tuple(cap_list), tuple(role_list)
        except msgspec.DecodeError:
            pass  # a torn or foreign heap string: the ILK without attributes, never an exception
    return IlkInfo(id_text("ilk", key), id_text("tnt", tenant), ILK_TYPES[itype] if itype < 3 else "?",
                   STATUSES[status] if status < 3 else "?", handler,
                   HUMAN_SUBTYPES[subtype] if subtype < len(HUMAN_SUBTYPES) else "", caps, roles)



_GENERATION_AT = struct.calcsize("<QQIIQ")  # header fields 5 and 16 (identity_layout._HEADER)
_VERSION_WORDS = struct.Struct(f"<Q{struct.calcsize('<QQIIQQQQ8I') - _GENERATION_AT - 8}xQ")

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
            st = os.fstat(shm.fd)
            self._inode = (st.st_dev, st.st_ino)
        finally:
            shm.close_fd()
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
                raise ReadTimeoutError(self.name, "identity region", READ_DEADLINE_S)
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
        """``(generation, data_version)``: changes whenever anything readable changes. Reads the two
        words alone (the router's ``dst: null`` fast lane asks per message for a meta with an ILK)."""
        deadline: float | None = None
        mm = self._mm
        while True:
            s1, deadline = self._begin(deadline)
            words: tuple[int, int] = _VERSION_WORDS.unpack_from(mm, _GENERATION_AT)
            if self._seq[_SEQ_WORD] == s1:
                return words
            deadline = deadline or time.monotonic() + READ_DEADLINE_S

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

    def _probe_ilk(self, key: bytes) -> _Probe | None:
        mm = self._mm
        base, heap, mask = self._ilk_base, self._heap_base, self.ilk_slots - 1
        i = _hash(key) & mask
        for _ in range(self.ilk_slots):
            k, ref, expires, kind, itype, status, subtype, off, ln, aoff, aln = _ILK.unpack_from(
                mm, base + i * SLOT_SIZE)
            if kind == KIND_EMPTY:
                return None
            if k == key and kind in (KIND_ILK, KIND_ALIAS):
                name = bytes(mm[heap + off: heap + off + ln]).decode("utf-8", "replace") if ln else ""
                attrs = bytes(mm[heap + aoff: heap + aoff + aln]) if aln else b""
                return kind, ref, expires, itype, status, name, subtype, attrs
            i = (i + 1) & mask
        return None

    def _read_ilk(self, key: bytes) -> _Probe | None:
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
        _, tenant, _, itype, status, handler, subtype, attrs = found
        return _info(key, tenant, itype, status, handler, subtype, attrs)

    def snapshot(self, now_ms: int | None = None) -> tuple[int, list[IlkInfo], dict[str, str]]:
        """``(data_version, every ILK, live aliases old -> canonical)`` as one consistent copy.

        The ILK table and the used heap are copied under the seqlock (a memcpy) and decoded after,
        so a writer is held off for the copy only; callers (the router's policy data) do this once
        per ``data_version``, never per message. ReadTimeoutError if the writer keeps the region
        busy for longer than the deadline on every attempt.
        """
        deadline: float | None = None
        mm = self._mm
        base, heap = self._ilk_base, self._heap_base
        while True:
            s1, deadline = self._begin(deadline)
            version = _VERSIONS.unpack_from(mm, _OFF_VERSIONS)[0]
            heap_used = min(_U32.unpack_from(mm, _OFF_HEAP_USED)[0], self.heap_size)
            table = mm[base: base + SLOT_SIZE * self.ilk_slots]
            heap_bytes = mm[heap: heap + heap_used]
            if self._seq[_SEQ_WORD] == s1:
                break
            deadline = deadline or time.monotonic() + READ_DEADLINE_S
        now = epoch_ms() if now_ms is None else now_ms
        ilks: list[IlkInfo] = []
        aliases: dict[str, str] = {}
        for (key, ref, expires, kind, itype, status, subtype, off, ln, aoff, aln) in _ILK.iter_unpack(table):
            if kind == KIND_ILK:
                handler = heap_bytes[off: off + ln].decode("utf-8", "replace") if ln else ""
                ilks.append(_info(key, ref, itype, status, handler, subtype, heap_bytes[aoff: aoff + aln]))
            elif kind == KIND_ALIAS and expires > now:
                aliases[id_text("ilk", key)] = id_text("ilk", ref)
        return int(version), ilks, aliases

    def resolve(self, ilk_id: str) -> IlkInfo | None:
        """Canonicalise through aliases, then the ILK record."""
        return self.get_ilk(self.canonical(ilk_id))

    def replaced(self) -> bool:
        """True when the name now maps another region, or the owner stopped beating."""
        if inode_of(self.name) != self._inode:  # gone, or another region under the name
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
                except ShmError:
                    self._reader = None
        return self._reader

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

