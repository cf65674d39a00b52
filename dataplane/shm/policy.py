"""The policy region: a hive's current routing-policy artefact, written by SY.policy, read by routers.

One region per hive (:func:`policy_region_name`, ``/fluxbee-policy-<hive>[-<run dir tag>]``), one
writer (the policy service of the hive), any number of read-only readers (every router of the hive,
status tools). It holds exactly one artefact: the one the hive should be running.

Layout (ours; the original's 192-byte ``jsr-opa`` header is not reproduced): the common 256-byte
header of :mod:`.table` (magic ``b"FLXBPOLI"``, ``capacity`` = artefact bytes the region holds,
``count`` = length of the current artefact), then at offset 256::

    off  size  field
    256     8  policy_version   u64  0 = nothing published yet; strictly increasing per writer
    264     8  artefact_len     u64  (<= capacity)
    272    32  sha256           raw SHA-256 of the artefact bytes
    304     1  engine           u8   1 = wasm, 2 = regorus
    305     1  reserved
    306     2  entrypoints_len  u16  (<= 206)
    308   204  entrypoints      UTF-8, comma-separated (``router/target,router/allow``)
    512   cap  artefact         the bytes of ``Artefact.to_bytes()`` (MessagePack)

Region size = ``512 + capacity`` (:data:`DEFAULT_CAPACITY` = 8 MiB: a compiled policy with its data
is typically tens of KiB to a few MiB). The whole region is one seqlock section: a reader never sees
a half-written artefact, and :meth:`PolicyRegionReader.read` additionally recomputes the SHA-256 of
the bytes it copied and raises :class:`PolicyDigestError` if they do not match the stored digest
(a tampered or corrupted region is refused, never loaded).

The digest is of the *serialised artefact* (module or source, data, entry points and compiler
together), not only of the WebAssembly module that ``Artefact.sha256`` covers: changing the policy's
data changes the digest too. It is written and compared as 64 lowercase hex digits; a
``"sha256:"`` prefix (the original's OPA_RELOAD form) is accepted wherever a digest is given.

Protocol around the region (see the README's section on policies): the writer
:meth:`PolicyRegion.publish`\\ es ``(bytes, version, sha256)``, then broadcasts the system message
``OPA_RELOAD`` with payload ``{"version": <int>, "hash": "sha256:<hex>"}`` to the hive's routers.
A router loads from the region only if the region's digest equals ``hash`` and the bytes hash to it;
it also polls the region every few seconds and loads a newer version it finds there, so a lost
OPA_RELOAD delays a policy, never loses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .identity_layout import run_dir_scope
from .region import (
    _SEQ_WORD,
    ReadTimeoutError,
    RegionFormatError,
    ShmError,
    _seqlock_read,
    epoch_ms,
)
from .table import _U32_MAX, _U64_MAX, HEADER_SIZE, _check_int, _RegionReader, _RegionWriter

POLICY_MAGIC: Final = int.from_bytes(b"FLXBPOLI", "little")
POLICY_META_OFFSET: Final = HEADER_SIZE
POLICY_ARTEFACT_OFFSET: Final = 512
DEFAULT_CAPACITY: Final = 8 << 20
MAX_ENTRYPOINTS_BYTES: Final = 204
POLICY_READ_DEADLINE_S: Final = 0.250
"""How long a reader retries a copy of the whole region (several MiB) before ReadTimeoutError."""

PolicyEngine = Literal["wasm", "regorus"]
_ENGINE_CODES: Final[dict[str, int]] = {"wasm": 1, "regorus": 2}
_ENGINE_NAMES: Final[dict[int, PolicyEngine]] = {1: "wasm", 2: "regorus"}

_META = struct.Struct("<QQ32sBxH204s")
if POLICY_META_OFFSET + _META.size != POLICY_ARTEFACT_OFFSET:  # pragma: no cover - layout bug
    raise ImportError("fluxbee.dataplane.shm.policy: meta layout does not match the documented size")

_HEX64 = re.compile(r"[0-9a-f]{64}")


class PolicyDigestError(ShmError):
    """The artefact bytes in the region do not hash to the digest stored beside them."""

    def __init__(self, name: str, stored: str, computed: str) -> None:
        super().__init__(
            f"policy region {name!r}: artefact bytes hash to {computed}, the region says {stored}"
        )
        self.name = name
        self.stored = stored
        self.computed = computed


def normalise_digest(value: str) -> str:
    """``"sha256:<hex>"`` or ``"<hex>"`` → 64 lowercase hex digits; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"a digest must be a string, got {type(value).__name__}")
    text = value[7:] if value.startswith("sha256:") else value
    if not _HEX64.fullmatch(text):
        raise ValueError(f"not a SHA-256 digest (64 lowercase hex digits): {value!r}")
    return text


def artefact_digest(artefact: bytes) -> str:
    """The digest the region, OPA_RELOAD and router status use for these artefact bytes."""
    return hashlib.sha256(artefact).hexdigest()


def policy_region_name(hive_id: str, run_dir: str | os.PathLike[str] | None = None) -> str:
    """POSIX name of a hive's policy region, e.g. ``/fluxbee-policy-prod-1a2b3c4d5e``.

    Scoped by the run dir like the identity region (two hives with one id on one host must not
    share it); without a run dir the name is ``/fluxbee-policy-<hive>``."""
    base = f"/fluxbee-policy-{hive_id}"
    return base if run_dir is None else f"{base}-{run_dir_scope(run_dir)}"


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One consistent, digest-checked copy of the region's artefact."""

    version: int
    sha256: str
    artefact: bytes
    engine: PolicyEngine
    entrypoints: tuple[str, ...]


class PolicyRegion(_RegionWriter):
    """The policy service's side: one artefact, replaced whole by :meth:`publish`."""

    def __init__(
        self,
        name: str,
        *,
        owner_uuid: str,
        hive_id: str,
        owner_name: str = "SY.policy",
        capacity_bytes: int = DEFAULT_CAPACITY,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        if not 1 <= capacity_bytes <= _U32_MAX:
            raise ValueError(f"capacity_bytes must be in [1, {_U32_MAX}], got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._version = 0
        self._sha256 = ""
        super().__init__(
            name, magic=POLICY_MAGIC, slot_size=0, capacity=capacity_bytes,
            region_size=POLICY_ARTEFACT_OFFSET + capacity_bytes, owner_uuid=owner_uuid,
            hive_id=hive_id, owner_name=owner_name, clock=clock,
        )

    @classmethod
    def create(
        cls,
        hive_id: str,
        *,
        owner_uuid: str,
        run_dir: str | os.PathLike[str] | None = None,
        owner_name: str = "SY.policy",
        capacity_bytes: int = DEFAULT_CAPACITY,
    ) -> PolicyRegion:
        """Create (or take over from a dead writer) the hive's region, empty (version 0).

        RegionBusyError if a live writer with a fresh heartbeat holds it. Call :meth:`heartbeat`
        every few seconds and :meth:`close` on the way out, as for every region writer.
        """
        return cls(policy_region_name(hive_id, run_dir), owner_uuid=owner_uuid, hive_id=hive_id,
                   owner_name=owner_name, capacity_bytes=capacity_bytes)

    @property
    def version(self) -> int:
        """The version last published by this writer (0 before any)."""
        return self._version

    @property
    def sha256(self) -> str:
        return self._sha256

    def publish(
        self,
        artefact: bytes,
        version: int,
        sha256: str,
        *,
        engine: PolicyEngine,
        entrypoints: Sequence[str],
    ) -> None:
        """Replace the region's artefact, atomically for readers.

        ValueError, nothing written, if ``version`` is not greater than the current one, the
        bytes do not hash to ``sha256``, they do not fit, ``engine`` is unknown or the entry
        points do not fit their field.
        """
        self._check_open()
        _check_int(version, _U64_MAX, "version")
        if version <= self._version:
            raise ValueError(f"policy version must be > {self._version}, got {version}")
        digest = normalise_digest(sha256)
        if engine not in _ENGINE_CODES:
            raise ValueError(f"engine must be 'wasm' or 'regorus', got {engine!r}")
        names = tuple(entrypoints)
        if not names or any(not n or "," in n for n in names):
            raise ValueError(f"entry points must be non-empty names without commas: {names!r}")
        entry_bytes = ",".join(names).encode("utf-8")
        if len(entry_bytes) > MAX_ENTRYPOINTS_BYTES:
            raise ValueError(f"entry points take {len(entry_bytes)} bytes; the field holds "
                             f"{MAX_ENTRYPOINTS_BYTES}")
        view = memoryview(artefact).cast("B")
        try:
            size = view.nbytes
            if size > self.capacity_bytes:
                raise ValueError(f"artefact is {size} bytes; the region {self.name!r} holds "
                                 f"{self.capacity_bytes}")
            computed = hashlib.sha256(view).hexdigest()
            if computed != digest:
                raise ValueError(f"artefact bytes hash to {computed}, not {digest}")
            meta = _META.pack(version, size, bytes.fromhex(digest), _ENGINE_CODES[engine],
                              len(entry_bytes), entry_bytes)
            mm = self._map.mm

            def store() -> None:
                mm[POLICY_META_OFFSET:POLICY_ARTEFACT_OFFSET] = meta
                mm[POLICY_ARTEFACT_OFFSET:POLICY_ARTEFACT_OFFSET + size] = view

            self._header.count = size
            self._store_header(store)
        finally:
            view.release()
        self._version = version
        self._sha256 = digest


class PolicyRegionReader(_RegionReader):
    """A router's (or a tool's) read-only view of the hive's policy region."""

    _magic = POLICY_MAGIC
    _kind = "policy region"

    @classmethod
    def open(cls, hive_id: str, run_dir: str | os.PathLike[str] | None = None) -> PolicyRegionReader:
        """RegionNotFoundError if the hive's policy service has not created it (yet)."""
        return cls(policy_region_name(hive_id, run_dir))

    def _expected_size(self, capacity: int) -> int:
        return POLICY_ARTEFACT_OFFSET + capacity

    def version(self) -> tuple[int, str]:
        """``(policy_version, sha256)`` without copying the artefact (the cheap poll)."""
        self._check_open()
        mm = self._map.mm

        def copy() -> tuple[int, str]:
            version, _size, raw, *_ = _META.unpack_from(mm, POLICY_META_OFFSET)
            return int(version), bytes(raw).hex()

        return _seqlock_read(
            self._map.seqs, _SEQ_WORD, copy, POLICY_READ_DEADLINE_S,
            lambda: ReadTimeoutError(self.name, "policy version", POLICY_READ_DEADLINE_S))

    def read(self) -> PolicySnapshot | None:
        """The current artefact, digest-checked; None before anything was published.

        PolicyDigestError if the copied bytes do not hash to the stored digest, RegionFormatError
        for an impossible length or engine code, ReadTimeoutError if the writer stays mid-store.
        """
        self._check_open()
        mm = self._map.mm
        capacity = self._capacity

        def copy() -> tuple[tuple[int, int, bytes, int, int, bytes], bytes]:
            meta = _META.unpack_from(mm, POLICY_META_OFFSET)
            size = min(int(meta[1]), capacity)  # a torn length is discarded by the seqlock check
            return meta, mm[POLICY_ARTEFACT_OFFSET:POLICY_ARTEFACT_OFFSET + size]

        meta, artefact = _seqlock_read(
            self._map.seqs, _SEQ_WORD, copy, POLICY_READ_DEADLINE_S,
            lambda: ReadTimeoutError(self.name, "policy artefact", POLICY_READ_DEADLINE_S))
        version, size, raw_digest, engine_code, entry_len, entry_raw = meta
        if version == 0:
            return None
        if size > capacity:
            raise RegionFormatError(self.name, f"artefact length {size} > capacity {capacity}")
        engine = _ENGINE_NAMES.get(engine_code)
        if engine is None or entry_len > MAX_ENTRYPOINTS_BYTES:
            raise RegionFormatError(self.name, f"engine code {engine_code}, entry points length "
                                               f"{entry_len}")
        stored = bytes(raw_digest).hex()
        computed = hashlib.sha256(artefact).hexdigest()
        if computed != stored:
            raise PolicyDigestError(self.name, stored, computed)
        entries = bytes(entry_raw[:entry_len]).decode("utf-8", "replace")
        return PolicySnapshot(version=version, sha256=stored, artefact=artefact, engine=engine,
                              entrypoints=tuple(entries.split(",")))
