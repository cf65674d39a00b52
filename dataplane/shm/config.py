"""The config region: one document (routes and VPNs as JSON) under the header seqlock (layout in :mod:`.table`)."""

from __future__ import annotations

from collections.abc import Callable

from .region import (
    _SEQ_WORD,
    ReadTimeoutError,
    RegionFormatError,
    _seqlock_read,
    epoch_ms,
)
from .table import (
    _CONFIG_META,
    _U32_MAX,
    _U64_MAX,
    CONFIG_DOC_OFFSET,
    CONFIG_MAGIC,
    CONFIG_READ_DEADLINE_S,
    HEADER_SIZE,
    _check_int,
    _RegionReader,
    _RegionWriter,
)


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
