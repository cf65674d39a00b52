"""Byte layout of SY.identity's region: constants, structs, names, hashing, header and sizes.

The layout is documented in :mod:`.identity`; the reader and writer there are the only code that
touches the bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final

from .identity_records import normalise_channel
from .region import epoch_ms

MAGIC: Final = int.from_bytes(b"FLXBIDNT", "little")
LAYOUT_VERSION: Final = 1
HEADER_SIZE: Final = 256
SLOT_SIZE: Final = 64
STALE_AFTER_MS: Final = 10_000
READ_DEADLINE_S: Final = 0.005
MAX_HIVE_ID_BYTES: Final = 64
KIND_EMPTY: Final = 0
KIND_ILK: Final = 1
KIND_ALIAS: Final = 2
KIND_USED: Final = 1
KIND_TOMBSTONE: Final = 3
_HEADER = struct.Struct("<QQIIQQQQ8IQQ16sB7x64s64x")
_ILK = struct.Struct("<16s16sQBBBBIH2xII4x")
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
    raise ImportError("fluxbee.dataplane.shm.identity: struct sizes do not match the documented layout")




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


