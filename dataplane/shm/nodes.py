"""The node table: one slot per connected node, each under its own seqlock (layout in :mod:`.table`)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from .region import (
    ReadTimeoutError,
    RegionFormatError,
    RegionFullError,
    _seqlock_read,
    epoch_ms,
)
from .table import (
    _SLOT,
    _SLOT_BODY,
    _U32,
    _U32_MAX,
    _U64_MAX,
    FLAG_ACTIVE,
    FLAG_DELETED,
    HEADER_SIZE,
    MAX_NAME_BYTES,
    NODE_SLOT_SIZE,
    NODE_TABLE_MAGIC,
    RECORD_READ_DEADLINE_S,
    _canonical_uuid_bytes,
    _check_int,
    _encode_text,
    _format_uuid,
    _RegionReader,
    _RegionWriter,
)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One connected node as published in the node table.

    ``uuid`` is the canonical lowercase dashed form; ``name`` is the L2 name
    (e.g. ``"WF.echo@local"``) of at most :data:`MAX_NAME_BYTES` UTF-8 bytes. The writer
    validates both; records returned by a reader always satisfy them.
    """

    uuid: str
    name: str
    vpn_id: int
    connected_at_ms: int
    flags: int = FLAG_ACTIVE



class NodeTableWriter(_RegionWriter):
    """The router's side of the node table: insert, update and remove records by UUID.

    Invariants kept in-process (the region is never read back): ``_slots`` maps a UUID to its
    slot and ``_used`` marks those slots; every slot at or above ``high_water`` is free and
    ``high_water - 1`` is live (or the mark is 0). ``_free`` is a min-heap that holds at least
    every free slot below ``high_water``. Reusing the lowest free slot keeps the live prefix,
    which is all a reader scans, short.
    """

    def __init__(
        self,
        name: str,
        *,
        owner_uuid: str,
        hive_id: str,
        owner_name: str,
        capacity: int = 1024,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        if not 1 <= capacity <= _U32_MAX:
            raise ValueError(f"capacity must be in [1, {_U32_MAX}], got {capacity}")
        self.capacity = capacity
        self._slots: dict[bytes, int] = {}
        self._used = bytearray(capacity)  # 1 = slot holds a live record
        self._free: list[int] = []
        super().__init__(
            name,
            magic=NODE_TABLE_MAGIC,
            slot_size=NODE_SLOT_SIZE,
            capacity=capacity,
            region_size=HEADER_SIZE + NODE_SLOT_SIZE * capacity,
            owner_uuid=owner_uuid,
            hive_id=hive_id,
            owner_name=owner_name,
            clock=clock,
        )

    def put(self, record: NodeRecord) -> int:
        """Insert ``record``, or update the record with the same UUID in place; return its slot.

        Raises ValueError for an invalid record and RegionFullError when no slot is free.
        """
        self._check_open()
        key = _canonical_uuid_bytes(record.uuid, "record.uuid")
        name = _encode_text(record.name, MAX_NAME_BYTES, "record.name")
        _check_int(record.vpn_id, _U32_MAX, "record.vpn_id")
        _check_int(record.connected_at_ms, _U64_MAX, "record.connected_at_ms")
        _check_int(record.flags, _U32_MAX, "record.flags")
        if not record.flags & FLAG_ACTIVE or record.flags & FLAG_DELETED:
            raise ValueError(
                f"record.flags must include FLAG_ACTIVE and not FLAG_DELETED, got {record.flags:#x}"
            )
        body = _SLOT_BODY.pack(
            record.flags, record.vpn_id, key, record.connected_at_ms, len(name), name
        )
        slot = self._slots.get(key)
        if slot is not None:
            self._store_slot(slot, body)
            return slot
        slot = self._allocate()
        self._store_slot(slot, body)
        self._slots[key] = slot
        self._store_header()
        return slot

    def remove(self, uuid: str) -> bool:
        """Clear the record of ``uuid`` (flags FLAG_DELETED, other fields zero); True if present."""
        self._check_open()
        key = _canonical_uuid_bytes(uuid, "uuid")
        slot = self._slots.pop(key, None)
        if slot is None:
            return False
        self._store_slot(slot, _SLOT_BODY.pack(FLAG_DELETED, 0, bytes(16), 0, 0, b""))
        self._used[slot] = False
        header = self._header
        header.count -= 1
        heapq.heappush(self._free, slot)
        # Shrink the scanned prefix while its top slot is free. Slots above the new mark are
        # all DELETED, so a reader still using the old mark finds nothing live there.
        while header.high_water and not self._used[header.high_water - 1]:
            header.high_water -= 1
        if len(self._free) > 2 * self.capacity:
            self._free = sorted({s for s in self._free if s < header.high_water})
        self._store_header()
        return True

    def _allocate(self) -> int:
        """Lowest free slot. ``_free`` may hold stale entries (slots re-used via the high-water
        path, or above a lowered mark); they are skipped lazily here."""
        header = self._header
        used = self._used
        while self._free:
            slot = heapq.heappop(self._free)
            if slot < header.high_water and not used[slot]:
                break
        else:
            if header.high_water >= self.capacity:
                raise RegionFullError(self.name, self.capacity)
            slot = header.high_water
        used[slot] = True
        header.count += 1
        header.high_water = max(header.high_water, slot + 1)
        return slot

    def _store_slot(self, slot: int, body: bytes) -> None:
        off = HEADER_SIZE + NODE_SLOT_SIZE * slot
        word = off // 8
        odd = self._begin(word)
        self._map.mm[off + 8 : off + 8 + len(body)] = body
        self._end(word, odd)



class NodeTableReader(_RegionReader):
    """A node's or tool's view of a router's node table.

    ``read()`` returns every record that was live when its slot was visited; each record is
    consistent (per-record seqlock) but the list is not one atomic snapshot of the table: a
    record changed during the scan may appear in its old or new state.
    """

    _magic = NODE_TABLE_MAGIC
    _kind = "node table"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        if self._slot_size != NODE_SLOT_SIZE:
            self._map.close()
            raise RegionFormatError(
                name, f"slot size {self._slot_size}, this reader knows {NODE_SLOT_SIZE}"
            )

    def _expected_size(self, capacity: int) -> int:
        return HEADER_SIZE + NODE_SLOT_SIZE * capacity

    def read(self) -> list[NodeRecord]:
        """Every live record, each one consistent; ReadTimeoutError if a slot stays mid-write."""
        return self._scan(None)

    def find(self, name: str) -> list[NodeRecord]:
        """Live records whose L2 name equals ``name`` exactly."""
        return self._scan(name.encode("utf-8"))

    def _scan(self, want: bytes | None) -> list[NodeRecord]:
        self._check_open()
        mm = self._map.mm
        seqs = self._map.seqs
        # high_water is a single aligned u32 written by the writer; clamp it so that even a
        # damaged header cannot send us past the mapping.
        (high_water,) = _U32.unpack_from(mm, 68)
        high_water = min(high_water, self._capacity)
        out: list[NodeRecord] = []
        for slot in range(high_water):
            off = HEADER_SIZE + NODE_SLOT_SIZE * slot
            word = off // 8
            s1 = seqs[word]
            raw = mm[off : off + NODE_SLOT_SIZE]
            if s1 & 1 or seqs[word] != s1:
                raw = self._read_slot_slow(slot, off, word)
            _seq, flags, vpn_id, uuid_raw, connected_at_ms, name_len, name = _SLOT.unpack_from(raw)
            if not flags & FLAG_ACTIVE:
                continue
            if name_len > MAX_NAME_BYTES:
                raise RegionFormatError(self.name, f"slot {slot}: name length {name_len}")
            name_bytes = name[:name_len]
            if want is not None and name_bytes != want:
                continue
            try:
                text = name_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RegionFormatError(self.name, f"slot {slot}: name is not UTF-8") from exc
            out.append(NodeRecord(_format_uuid(uuid_raw), text, vpn_id, connected_at_ms, flags))
        return out

    def _read_slot_slow(self, slot: int, off: int, word: int) -> bytes:
        mm = self._map.mm

        def copy() -> bytes:
            return mm[off : off + NODE_SLOT_SIZE]

        return _seqlock_read(
            self._map.seqs,
            word,
            copy,
            RECORD_READ_DEADLINE_S,
            lambda: ReadTimeoutError(self.name, f"slot {slot}", RECORD_READ_DEADLINE_S),
        )


