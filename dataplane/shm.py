"""Shared-memory regions of a router: the node table and the config region.

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
  barriers would be needed around the sequence accesses.** Measured on x86-64: 0 inconsistent
  reads in 4 × 300 k contended reads with the seqlock, 3–12 k torn reads without it
  (``reference/stack-notes.md`` §2).
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

This module is a leaf adapter: it imports nothing from the rest of ``fluxbee`` and never logs;
failures are typed exceptions carrying the region name and the relevant numbers.
"""

from __future__ import annotations

import abc
import heapq
import mmap
import os
import struct
import time
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import posix_ipc

__all__ = [
    "CONFIG_DOC_OFFSET",
    "CONFIG_MAGIC",
    "FLAG_ACTIVE",
    "FLAG_DELETED",
    "HEADER_SIZE",
    "LAYOUT_VERSION",
    "MAX_NAME_BYTES",
    "NODE_SLOT_SIZE",
    "NODE_TABLE_MAGIC",
    "STALE_AFTER_MS",
    "ConfigRegionReader",
    "ConfigRegionWriter",
    "NodeRecord",
    "NodeTableReader",
    "NodeTableWriter",
    "ReadTimeoutError",
    "RegionBusyError",
    "RegionFormatError",
    "RegionFullError",
    "RegionHeader",
    "RegionNotFoundError",
    "RegionPermissionError",
    "ShmError",
    "config_region_name",
    "node_table_name",
]

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
TAKEOVER_READ_DEADLINE_S: Final = 0.100
"""How long a new writer waits for an existing header to become consistent."""

_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1
_SEQ_WORD: Final = 1  # header seq is the second u64 of the region
_SPINS_BEFORE_YIELD: Final = 16

_HEADER = struct.Struct("<QQIIQIIQQQII16sBB6x64s96s")
_SLOT = struct.Struct("<QII16sQH256s")
_SLOT_BODY = struct.Struct("<II16sQH256s")  # the slot without its seq word
_CONFIG_META = struct.Struct("<QQ")
_U32 = struct.Struct("<I")

if _HEADER.size != HEADER_SIZE or _SLOT.size > NODE_SLOT_SIZE:  # pragma: no cover - layout bug
    raise ImportError("fluxbee.dataplane.shm: struct layout does not match the documented sizes")

_T = TypeVar("_T")

_HELD_HERE: dict[str, tuple[int, int]] = {}
"""Regions held by open writers of *this* process: name -> (st_dev, st_ino).

Why: after a container restart the new router often gets the same pid as the crashed one
(pid 1, say), so "the owner pid is alive" is true of ourselves. A header naming our own pid
is a live owner only if a writer in this process really holds that name.
"""

# --------------------------------------------------------------------------- errors


class ShmError(Exception):
    """Base of every error raised by this module."""


class RegionNotFoundError(ShmError):
    """No region of that name exists (the router is not running or has not created it yet)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"shared-memory region {name!r} does not exist")
        self.name = name


class RegionPermissionError(ShmError):
    """The region exists but belongs to another user (regions are created mode 0600)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"shared-memory region {name!r} is not accessible to this user")
        self.name = name


class RegionBusyError(ShmError):
    """A live owner with a fresh heartbeat holds the region; a second writer must not steal it.

    ``owner_pid`` is 0 when another process created the name between our unlink and our create.
    """

    def __init__(self, name: str, owner_pid: int) -> None:
        super().__init__(
            f"shared-memory region {name!r} is held by live process {owner_pid} "
            "with a fresh heartbeat"
        )
        self.name = name
        self.owner_pid = owner_pid


class RegionFormatError(ShmError):
    """The region is not one of ours, or of another layout version, size or kind."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"shared-memory region {name!r} has an unexpected format: {reason}")
        self.name = name
        self.reason = reason


class RegionFullError(ShmError):
    """Every slot of the node table is in use."""

    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(f"node table {name!r} is full ({capacity} slots)")
        self.name = name
        self.capacity = capacity


class ReadTimeoutError(ShmError):
    """The seqlock never showed a stable, even sequence within the deadline.

    Either the writer is descheduled in the middle of a store for longer than the deadline, or it
    died mid-store (the sequence word stays odd). Retrying later, or reopening once the header
    reads as stale, are the remedies.
    """

    def __init__(self, name: str, what: str, deadline_s: float) -> None:
        super().__init__(
            f"no consistent read of {what} in {name!r} within {deadline_s * 1000:.1f} ms"
        )
        self.name = name
        self.what = what
        self.deadline_s = deadline_s


# --------------------------------------------------------------------------- value types


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


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


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


def pid_alive(pid: int) -> bool:
    """True if a process with that pid exists in our pid namespace (zombies count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _seqlock_read(
    seqs: memoryview,
    word: int,
    copy: Callable[[], _T],
    deadline_s: float,
    on_timeout: Callable[[], ShmError],
) -> _T:
    """Run ``copy`` between two equal, even loads of ``seqs[word]``.

    The fast path (no concurrent write) costs two loads and the copy; the clock is read only
    once a retry is needed. After a few spins the reader yields the CPU so that a writer
    sharing the core can finish its store.
    """
    s1 = seqs[word]
    if not s1 & 1:
        data = copy()
        if seqs[word] == s1:
            return data
    deadline = time.monotonic() + deadline_s
    spins = 0
    while True:
        s1 = seqs[word]
        if not s1 & 1:
            data = copy()
            if seqs[word] == s1:
                return data
        spins += 1
        if spins >= _SPINS_BEFORE_YIELD:
            os.sched_yield()
        if time.monotonic() > deadline:
            raise on_timeout()


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


class _Mapping:
    """An mmap of a whole region plus its ``'Q'`` view; owns both and releases them in order.

    ``posix_ipc`` descriptors are closed as soon as the mapping exists: the mapping keeps the
    memory alive and a lingering fd would only leak.
    """

    __slots__ = ("mm", "_view", "seqs", "size")

    def __init__(self, shm: Any, *, writable: bool) -> None:
        size = int(shm.size)
        fd = int(shm.fd)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            shm.close_fd()
        self.size = size
        self._view = memoryview(self.mm)
        words = size - size % 8
        self.seqs = self._view[:words].cast("Q")

    def close(self) -> None:
        self.seqs.release()
        self._view.release()
        self.mm.close()


def _open_existing(name: str, *, read_only: bool) -> Any:
    try:
        return posix_ipc.SharedMemory(name, read_only=read_only)
    except posix_ipc.ExistentialError as exc:
        raise RegionNotFoundError(name) from exc
    except posix_ipc.PermissionsError as exc:
        raise RegionPermissionError(name) from exc


def _unlink_quietly(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def _inode_of(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the object currently behind ``name``, or None if there is none."""
    try:
        shm = posix_ipc.SharedMemory(name, read_only=True)
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return None
    try:
        st = os.fstat(int(shm.fd))
        return (st.st_dev, st.st_ino)
    finally:
        shm.close_fd()


# --------------------------------------------------------------------------- writers


class ClosedOnExit:
    """``with region: …`` closes it on the way out (writers keep their default of unlinking)."""

    def close(self) -> None:
        raise TypeError(f"{type(self).__name__} must define close()")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
        shm = self._create(name, region_size)
        st = os.fstat(int(shm.fd))
        self._inode = (st.st_dev, st.st_ino)
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
        _HELD_HERE[name] = self._inode

    # -- creation -------------------------------------------------------------------------

    def _clear_the_way(self, name: str, magic: int) -> int:
        """Unlink an abandoned region of this name; return its generation (0 if none/foreign).

        Raises RegionBusyError if a live owner with a fresh heartbeat holds it.
        """
        try:
            shm = posix_ipc.SharedMemory(name, read_only=True)
        except posix_ipc.ExistentialError:
            return 0
        except posix_ipc.PermissionsError as exc:
            raise RegionPermissionError(name) from exc
        if int(shm.size) < HEADER_SIZE:
            shm.close_fd()
            _unlink_quietly(name)
            return 0
        mapping = _Mapping(shm, writable=False)
        try:
            mm = mapping.mm

            def copy() -> bytes:
                return mm[:HEADER_SIZE]

            try:
                raw = _seqlock_read(
                    mapping.seqs,
                    _SEQ_WORD,
                    copy,
                    TAKEOVER_READ_DEADLINE_S,
                    lambda: ReadTimeoutError(name, "header", TAKEOVER_READ_DEADLINE_S),
                )
                stuck = False
            except ReadTimeoutError:
                raw = mm[:HEADER_SIZE]  # a writer died mid-store, or is very slow
                stuck = True
        finally:
            mapping.close()
        header, _slot, _size, _hw = _unpack_header(raw)
        ours = header.magic == magic and header.version == LAYOUT_VERSION
        if ours:
            if header.owner_pid == os.getpid():
                alive = name in _HELD_HERE
            else:
                alive = pid_alive(header.owner_pid)
            # A header stuck mid-store with a live owner is treated as busy: killing a live
            # writer's region is worse than refusing to start.
            if alive and (stuck or not header.is_stale(now_ms=self._clock())):
                raise RegionBusyError(name, header.owner_pid)
        _unlink_quietly(name)
        return header.generation if ours else 0

    @staticmethod
    def _create(name: str, region_size: int) -> Any:
        try:
            return posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=region_size)
        except posix_ipc.ExistentialError as exc:
            # Someone created it between our unlink and our create: a concurrent writer.
            raise RegionBusyError(name, 0) from exc
        except posix_ipc.PermissionsError as exc:
            raise RegionPermissionError(name) from exc

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
        if _HELD_HERE.get(self.name) == self._inode:
            del _HELD_HERE[self.name]
        if unlink and _inode_of(self.name) == self._inode:
            _unlink_quietly(self.name)


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


class ConfigRegionWriter(_RegionWriter):
    """The router's side of the config region: one opaque document, replaced whole."""

    def __init__(
        self,
        name: str,
        *,
        owner_uuid: str,
        hive_id: str,
        owner_name: str,
        capacity_bytes: int = 1 << 20,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        if not 1 <= capacity_bytes <= _U32_MAX:
            raise ValueError(f"capacity_bytes must be in [1, {_U32_MAX}], got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._version = 0
        super().__init__(
            name,
            magic=CONFIG_MAGIC,
            slot_size=0,
            capacity=capacity_bytes,
            region_size=CONFIG_DOC_OFFSET + capacity_bytes,
            owner_uuid=owner_uuid,
            hive_id=hive_id,
            owner_name=owner_name,
            clock=clock,
        )

    def write(self, version: int, document: bytes) -> None:
        """Publish ``document`` as ``version``, atomically for readers (whole-region seqlock).

        ValueError if ``version`` is not greater than the previous one or the document does not
        fit in ``capacity_bytes``.
        """
        self._check_open()
        _check_int(version, _U64_MAX, "version")
        if version <= self._version:
            raise ValueError(f"version must be > {self._version}, got {version}")
        # Take the buffer before the sequence goes odd: a non-bytes argument must fail here,
        # not half-way through the critical section.
        view = memoryview(document).cast("B")
        size = view.nbytes
        if size > self.capacity_bytes:
            view.release()
            raise ValueError(
                f"document is {size} bytes; the region {self.name!r} holds {self.capacity_bytes}"
            )
        meta = _CONFIG_META.pack(version, size)
        mm = self._map.mm

        def store_document() -> None:
            mm[HEADER_SIZE : HEADER_SIZE + _CONFIG_META.size] = meta
            mm[CONFIG_DOC_OFFSET : CONFIG_DOC_OFFSET + size] = view

        self._header.count = size
        try:
            self._store_header(store_document)
        finally:
            view.release()
        self._version = version


# --------------------------------------------------------------------------- readers


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


class ConfigRegionReader(_RegionReader):
    """A node's or tool's view of a router's config document."""

    _magic = CONFIG_MAGIC
    _kind = "config region"

    def _expected_size(self, capacity: int) -> int:
        return CONFIG_DOC_OFFSET + capacity

    def read(self) -> tuple[int, bytes]:
        """``(config_version, document)`` as one consistent pair; ``(0, b"")`` before any write.

        Cache on ``(header().generation, config_version)``: versions restart when the router
        recreates the region.
        """
        self._check_open()
        mm = self._map.mm
        capacity = self._capacity

        def copy() -> tuple[int, int, bytes]:
            version, size = _CONFIG_META.unpack_from(mm, HEADER_SIZE)
            # A torn length is discarded by the seqlock check; clamp so the slice stays sane.
            return version, size, mm[CONFIG_DOC_OFFSET : CONFIG_DOC_OFFSET + min(size, capacity)]

        version, size, document = _seqlock_read(
            self._map.seqs,
            _SEQ_WORD,
            copy,
            CONFIG_READ_DEADLINE_S,
            lambda: ReadTimeoutError(self.name, "config document", CONFIG_READ_DEADLINE_S),
        )
        if size > capacity:
            raise RegionFormatError(self.name, f"document length {size} > capacity {capacity}")
        return version, document
