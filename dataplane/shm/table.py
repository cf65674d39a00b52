"""The header and writer/reader base shared by a router's two regions: node table and config.

Why shared memory: nodes and tools on the same host read the router's node set and its
routes/VPN config without a network round trip or a socket request. The router's own hot path
never reads these regions; it keeps in-process structures and *publishes* here.

Roles and invariants
--------------------
* **One writer per region.** The router process creates the region (``O_CREAT|O_EXCL``, mode
  ``0600``: readable by the same user only) and is the only process that ever stores into it.
  Readers map it read-only and never write, so a reader cannot corrupt the table. Writer and
  reader objects are not thread-safe: one thread per object (the router's event loop).
  Two writers racing to create the *same* region at the same instant are not supported (the
  router UUID in the name makes that a misconfiguration); the takeover rules below protect
  against a *crashed* predecessor, not against a concurrent twin.
* **Seqlocks.** Every unit of consistency has a ``u64`` sequence word, even when stable, odd
  while the writer is in the middle of a store. The writer does ``seq += 1`` (odd), stores the
  fields, ``seq += 1`` (even). A reader loads ``seq``, retries if odd, copies the bytes, loads
  ``seq`` again and accepts the copy only if both loads are equal. It gives up with
  :class:`ReadTimeoutError` after a deadline (5 ms per node record, 50 ms for the config
  document) instead of spinning for ever on a writer that died mid-store.
  The node table has one seqlock per record slot plus one for the header; the config region
  has one for the whole region (header and document).
* **Memory ordering.** Sequence words are accessed only through ``memoryview(mmap).cast('Q')``,
  which performs aligned 8-byte loads and stores. On x86-64 (TSO) stores are not reordered with
  stores and loads are not reordered with loads, so program order is enough and Python needs no
  fences. **On ARM (weakly ordered) this is not enough: a small C helper with acquire/release
  barriers would be needed around the sequence accesses.** On x86-64, contended readers see no
  inconsistent record with the seqlock, and many torn ones without it.
* **Heartbeat and stale owners.** The header carries the owner's pid and ``heartbeat_ms``
  (epoch milliseconds). The router calls ``heartbeat()`` every ~2 s; a header whose heartbeat is
  older than :data:`STALE_AFTER_MS` is *stale*. ``close()`` zeroes the heartbeat, so a cleanly
  closed region reads as stale at once.
* **Takeover.** A writer that finds the name already in use raises :class:`RegionBusyError`
  only if the header is valid, the owner pid is alive (``os.kill(pid, 0)``; for our own pid:
  a writer of this process holds the name, since a restarted container reuses pids) *and* the
  heartbeat is fresh. Otherwise (dead or stale owner, foreign magic, other layout version, a header stuck
  mid-write by a crashed writer) it unlinks the name and creates a fresh zero-filled region, so
  ghost entries of a crashed router never survive. ``generation`` becomes the previous
  generation + 1 (1 if nothing readable was there), so a reader that reopens can tell that the
  region was replaced. A reader that still maps an unlinked region keeps its old, now frozen,
  mapping: it should watch ``header().is_stale()`` and reopen.
  ``owner_pid`` is meaningful only inside the writer's pid namespace; the heartbeat is the
  signal that works across containers.

Layouts (ours; not byte-compatible with the original Rust regions)
------------------------------------------------------------------
All integers are little-endian, except that sequence words are stored in native byte order
(they are only ever accessed as whole words through the ``'Q'`` view; x86-64 and aarch64 are
little-endian anyway). Strings are UTF-8, length-prefixed, zero-padded.

Common header, 256 bytes at offset 0 (:data:`HEADER_SIZE`)::

    off  size  field
      0     8  magic            u64  NODE_TABLE_MAGIC (b"FLXBNODE") or CONFIG_MAGIC (b"FLXBCONF")
      8     8  seq              u64  header seqlock (node table) / whole-region seqlock (config)
     16     4  version          u32  LAYOUT_VERSION (1)
     20     4  slot_size        u32  NODE_SLOT_SIZE for the node table, 0 for config
     24     8  region_size      u64  total bytes of the region
     32     4  capacity         u32  slots (node table) or document bytes (config)
     36     4  count            u32  live records (node table) or document length (config)
     40     8  generation       u64  incarnation of this name, +1 at every (re)creation
     48     8  created_ms       u64  epoch ms
     56     8  heartbeat_ms     u64  epoch ms; 0 after a clean close
     64     4  owner_pid        u32
     68     4  high_water       u32  node table: slots [0, high_water) may be live; config: 0
     72    16  owner_uuid       16 raw bytes
     88     1  hive_id_len      u8   (<= 64)
     89     1  owner_name_len   u8   (<= 96)
     90     6  reserved
     96    64  hive_id          UTF-8
    160    96  owner_name       UTF-8
    256

Node table: header, then ``capacity`` slots of 320 bytes (:data:`NODE_SLOT_SIZE`), slot ``i``
at ``256 + 320 * i``. Region size = ``256 + 320 * capacity``::

    off  size  field
      0     8  seq              u64  per-record seqlock
      8     4  flags            u32  FLAG_ACTIVE = live; FLAG_DELETED = removed; 0 = never used
     12     4  vpn_id           u32
     16    16  uuid             16 raw bytes
     32     8  connected_at_ms  u64
     40     2  name_len         u16  (<= 256)
     42   256  name             UTF-8 L2 name
    298    22  padding
    320

The writer reuses the lowest free slot first, so live records stay packed below
``high_water`` and readers scan only that prefix.

Config region: header, then at offset 256::

    off  size  field
    256     8  config_version   u64  0 = nothing written yet; strictly increasing per generation
    264     8  doc_len          u64  (<= capacity)
    272    16  reserved
    288   cap  document         opaque bytes (the router writes JSON of routes and VPNs)

Region size = ``288 + capacity``. ``config_version`` restarts with every generation, so a
reader that caches must key on ``(generation, config_version)``.

Shared memory is a leaf adapter: it imports nothing from the rest of ``fluxbee`` and never logs;
failures are typed exceptions carrying the region name and the relevant numbers.
"""


from __future__ import annotations

import abc
import os
import struct
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .region import (
    _SEQ_WORD,
    ClosedOnExit,
    Predecessor,
    ReadTimeoutError,
    RegionFormatError,
    _Mapping,
    _open_existing,
    _seqlock_read,
    _unlink_quietly,
    clear_the_way,
    create_region,
    epoch_ms,
    hold,
    release,
)

# --------------------------------------------------------------------------- constants

NODE_TABLE_MAGIC: Final = int.from_bytes(b"FLXBNODE", "little")
CONFIG_MAGIC: Final = int.from_bytes(b"FLXBCONF", "little")
LAYOUT_VERSION: Final = 1

HEADER_SIZE: Final = 256
NODE_SLOT_SIZE: Final = 320
MAX_NAME_BYTES: Final = 256
MAX_HIVE_ID_BYTES: Final = 64
MAX_OWNER_NAME_BYTES: Final = 96
CONFIG_DOC_OFFSET: Final = HEADER_SIZE + 32

FLAG_ACTIVE: Final = 0x1
FLAG_DELETED: Final = 0x2

STALE_AFTER_MS: Final = 10_000
"""A heartbeat older than this marks the owner as gone (the router beats every ~2 s)."""

RECORD_READ_DEADLINE_S: Final = 0.005
"""How long a reader retries one node record (or the header) before ReadTimeoutError."""
CONFIG_READ_DEADLINE_S: Final = 0.050
"""How long a reader retries the config document (up to 1 MiB per copy) before giving up."""
_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1

_HEADER = struct.Struct("<QQIIQIIQQQII16sBB6x64s96s")
_SLOT = struct.Struct("<QII16sQH256s")
_SLOT_BODY = struct.Struct("<II16sQH256s")  # the slot without its seq word
_CONFIG_META = struct.Struct("<QQ")
_U32 = struct.Struct("<I")

if _HEADER.size != HEADER_SIZE or _SLOT.size > NODE_SLOT_SIZE:  # pragma: no cover - layout bug
    raise ImportError("fluxbee.dataplane.shm: struct layout does not match the documented sizes")


@dataclass(frozen=True, slots=True)
class RegionHeader:
    """A consistent snapshot of a region header (see the module docstring for the layout)."""

    magic: int
    version: int
    owner_pid: int
    owner_uuid: str
    hive_id: str
    owner_name: str
    created_ms: int
    heartbeat_ms: int
    generation: int
    count: int
    capacity: int

    def is_stale(self, now_ms: int | None = None, max_age_ms: int = STALE_AFTER_MS) -> bool:
        """True if the owner has not beaten for more than ``max_age_ms``.

        A cleanly closed region has ``heartbeat_ms == 0`` and is always stale. A heartbeat in
        the future (wall clock stepped back) counts as fresh.
        """
        now = epoch_ms() if now_ms is None else now_ms
        return now - self.heartbeat_ms > max_age_ms


# --------------------------------------------------------------------------- names


def node_table_name(router_uuid: str) -> str:
    """POSIX name of a router's node table, e.g. ``/fluxbee-nodes-<32 hex>``.

    Linux allows 255 characters; macOS would need a shorter scheme (31 characters).
    """
    return f"/fluxbee-nodes-{_uuid.UUID(router_uuid).hex}"


def config_region_name(router_uuid: str) -> str:
    """POSIX name of a router's config region, e.g. ``/fluxbee-config-<32 hex>``."""
    return f"/fluxbee-config-{_uuid.UUID(router_uuid).hex}"


# --------------------------------------------------------------------------- helpers



def _canonical_uuid_bytes(value: str, what: str) -> bytes:
    """Parse a canonical lowercase dashed UUID; anything else is a ValueError.

    Requiring the canonical form keeps ``put(r); read() == [r]`` true for every accepted record.
    """
    try:
        parsed = _uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{what} is not a UUID: {value!r}") from exc
    if str(parsed) != value:
        raise ValueError(f"{what} must be a canonical lowercase dashed UUID, got {value!r}")
    return parsed.bytes


def _format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _encode_text(value: str, limit: int, what: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > limit:
        raise ValueError(f"{what} is {len(encoded)} UTF-8 bytes; the limit is {limit}")
    return encoded


def _check_int(value: int, upper: int, what: str) -> None:
    if not 0 <= value <= upper:
        raise ValueError(f"{what} must be in [0, {upper}], got {value}")



@dataclass(slots=True)
class _HeaderFields:
    """The writer's authoritative copy of its header; stored whole under the header seqlock."""

    magic: int
    slot_size: int
    region_size: int
    capacity: int
    count: int
    generation: int
    created_ms: int
    heartbeat_ms: int
    owner_pid: int
    high_water: int
    owner_uuid: bytes
    hive_id: bytes
    owner_name: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.magic,
            0,  # seq placeholder, never copied into the region
            LAYOUT_VERSION,
            self.slot_size,
            self.region_size,
            self.capacity,
            self.count,
            self.generation,
            self.created_ms,
            self.heartbeat_ms,
            self.owner_pid,
            self.high_water,
            self.owner_uuid,
            len(self.hive_id),
            len(self.owner_name),
            self.hive_id,
            self.owner_name,
        )


def _unpack_header(raw: bytes) -> tuple[RegionHeader, int, int, int]:
    """Decode a header copy into (RegionHeader, slot_size, region_size, high_water).

    Text fields are decoded leniently: a header is diagnostic data, and a foreign region must
    produce a RegionFormatError from the magic/version checks, not a UnicodeDecodeError here.
    """
    (
        magic,
        _seq,
        version,
        slot_size,
        region_size,
        capacity,
        count,
        generation,
        created_ms,
        heartbeat_ms,
        owner_pid,
        high_water,
        owner_uuid,
        hive_len,
        owner_name_len,
        hive_id,
        owner_name,
    ) = _HEADER.unpack(raw)
    header = RegionHeader(
        magic=magic,
        version=version,
        owner_pid=owner_pid,
        owner_uuid=_format_uuid(owner_uuid),
        hive_id=hive_id[: min(hive_len, MAX_HIVE_ID_BYTES)].decode("utf-8", "replace"),
        owner_name=owner_name[: min(owner_name_len, MAX_OWNER_NAME_BYTES)].decode(
            "utf-8", "replace"
        ),
        created_ms=created_ms,
        heartbeat_ms=heartbeat_ms,
        generation=generation,
        count=count,
        capacity=capacity,
    )
    return header, slot_size, region_size, high_water



class _RegionWriter(ClosedOnExit):
    """Creation, takeover, header seqlock, heartbeat and close shared by both writers."""

    def __init__(
        self,
        name: str,
        *,
        magic: int,
        slot_size: int,
        capacity: int,
        region_size: int,
        owner_uuid: str,
        hive_id: str,
        owner_name: str,
        clock: Callable[[], int],
    ) -> None:
        self.name = name
        self._clock = clock
        owner_uuid_bytes = _canonical_uuid_bytes(owner_uuid, "owner_uuid")
        hive_bytes = _encode_text(hive_id, MAX_HIVE_ID_BYTES, "hive_id")
        owner_name_bytes = _encode_text(owner_name, MAX_OWNER_NAME_BYTES, "owner_name")
        previous_generation = self._clear_the_way(name, magic)
        shm, self._inode = create_region(name, region_size)
        try:
            self._map = _Mapping(shm, writable=True)
        except BaseException:
            _unlink_quietly(name)
            raise
        now = clock()
        self._header = _HeaderFields(
            magic=magic,
            slot_size=slot_size,
            region_size=region_size,
            capacity=capacity,
            count=0,
            generation=previous_generation + 1,
            created_ms=now,
            heartbeat_ms=now,
            owner_pid=os.getpid(),
            high_water=0,
            owner_uuid=owner_uuid_bytes,
            hive_id=hive_bytes,
            owner_name=owner_name_bytes,
        )
        self._closed = False
        self._store_header()
        hold(name, self._inode)

    # -- creation -------------------------------------------------------------------------

    def _clear_the_way(self, name: str, magic: int) -> int:
        """Unlink an abandoned region of this name; return its generation (0 if none/foreign).

        Raises RegionBusyError if a live owner with a fresh heartbeat holds it (see
        :func:`.region.clear_the_way`, the rule every layout shares).
        """

        def parse(raw: bytes) -> Predecessor | None:
            header, _slot, _size, _hw = _unpack_header(raw)
            if header.magic != magic or header.version != LAYOUT_VERSION:
                return None
            return Predecessor(header.owner_pid, header.heartbeat_ms, header.generation)

        return clear_the_way(name, header_size=HEADER_SIZE, parse=parse,
                             stale_after_ms=STALE_AFTER_MS, now_ms=self._clock)


    # -- header ---------------------------------------------------------------------------

    def _begin(self, word: int) -> int:
        """Make ``seqs[word]`` odd and return that odd value.

        If the word is already odd (a previous store was interrupted, e.g. by
        KeyboardInterrupt), keep it odd: the following ``_end`` makes it even again.
        """
        seqs = self._map.seqs
        s = seqs[word]
        odd = s if s & 1 else s + 1
        seqs[word] = odd
        return odd

    def _end(self, word: int, odd: int) -> None:
        self._map.seqs[word] = odd + 1

    def _store_header(self, extra: Callable[[], None] | None = None) -> None:
        """Store the whole header (and ``extra`` stores) inside one header-seqlock section.

        Everything is packed before the sequence goes odd, so no exception can leave the
        section half done.
        """
        packed = self._header.pack()
        mm = self._map.mm
        odd = self._begin(_SEQ_WORD)
        mm[0:8] = packed[0:8]
        mm[16:HEADER_SIZE] = packed[16:HEADER_SIZE]
        if extra is not None:
            extra()
        self._end(_SEQ_WORD, odd)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer of {self.name!r} is closed")

    def heartbeat(self) -> None:
        """Store the current wall-clock time as ``heartbeat_ms``; the router calls it every ~2 s."""
        self._check_open()
        self._header.heartbeat_ms = self._clock()
        self._store_header()

    def close(self, *, unlink: bool = True) -> None:
        """Mark the region abandoned (heartbeat 0), unmap it and, by default, unlink the name.

        The name is unlinked only if it still refers to *our* region: if another writer took
        it over (our heartbeat went stale), its region is left alone. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._header.heartbeat_ms = 0
        self._store_header()
        self._map.close()
        release(self.name, self._inode, unlink=unlink)



class _RegionReader(ClosedOnExit, abc.ABC):
    """Open, validate and read the header of an existing region; read-only mapping."""

    _magic: int
    _kind: str

    def __init__(self, name: str) -> None:
        self.name = name
        shm = _open_existing(name, read_only=True)
        if int(shm.size) < HEADER_SIZE:
            size = int(shm.size)
            shm.close_fd()
            raise RegionFormatError(
                name, f"size {size} is smaller than the {HEADER_SIZE}-byte header"
            )
        self._map = _Mapping(shm, writable=False)
        try:
            header, self._slot_size, region_size, _hw = self._read_header_raw()
            self._validate(header, region_size)
        except BaseException:
            self._map.close()
            raise
        self._capacity = header.capacity
        self._closed = False

    def _validate(self, header: RegionHeader, region_size: int) -> None:
        if header.magic != self._magic:
            raise RegionFormatError(
                self.name, f"magic {header.magic:#018x} is not a {self._kind} ({self._magic:#018x})"
            )
        if header.version != LAYOUT_VERSION:
            raise RegionFormatError(
                self.name, f"layout version {header.version}, this reader knows {LAYOUT_VERSION}"
            )
        expected = self._expected_size(header.capacity)
        if region_size != self._map.size or expected != self._map.size:
            raise RegionFormatError(
                self.name,
                f"size {self._map.size} (header says {region_size}, "
                f"capacity {header.capacity} needs {expected})",
            )

    @abc.abstractmethod
    def _expected_size(self, capacity: int) -> int:
        """Bytes a region of this kind with ``capacity`` must span."""

    def _read_header_raw(self) -> tuple[RegionHeader, int, int, int]:
        mm = self._map.mm

        def copy() -> bytes:
            return mm[:HEADER_SIZE]

        raw = _seqlock_read(
            self._map.seqs,
            _SEQ_WORD,
            copy,
            RECORD_READ_DEADLINE_S,
            lambda: ReadTimeoutError(self.name, "header", RECORD_READ_DEADLINE_S),
        )
        return _unpack_header(raw)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"reader of {self.name!r} is closed")

    def header(self) -> RegionHeader:
        """A consistent snapshot of the header (ReadTimeoutError if it stays mid-write)."""
        self._check_open()
        return self._read_header_raw()[0]

    def close(self) -> None:
        """Unmap the region. Idempotent; never unlinks (only the writer owns the name)."""
        if self._closed:
            return
        self._closed = True
        self._map.close()


