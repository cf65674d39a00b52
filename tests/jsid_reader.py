"""An independent reader of ``/jsr-identity-<hive>`` (magic "JSID", version 3), written for the tests
from the original's documented layout, the way the original SDKs read it: open ``/dev/shm/<name>``,
map it read-only, take the table offsets from the header maxima, read under the seqlock, and probe
the channel hash table.  It shares no code with the writer (``fluxbee.dataplane.shm.identity_jsid``):
every offset below is spelled out again on purpose.
"""

from __future__ import annotations

import mmap
import os
import time
import uuid
from dataclasses import dataclass
from struct import unpack_from
from typing import Any

HEADER_BYTES = 176
SIZES = {"tenant": 312, "ilk": 344, "ich": 352, "mapping": 384, "alias": 64, "vocabulary": 232}


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


def _text(buf: bytes) -> str:
    return buf.split(b"\0", 1)[0].decode()


def _id(prefix: str, raw: bytes) -> str:
    return f"{prefix}:{uuid.UUID(bytes=raw)}"


def fnv(ctype: bytes, addr: bytes, tenant: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in ctype + b"\xff" + addr + b"\xfe" + tenant:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h


@dataclass
class Snapshot:
    header: dict[str, Any]
    tenants: list[dict[str, Any]]
    ilks: list[dict[str, Any]]
    ichs: list[dict[str, Any]]
    aliases: list[dict[str, Any]]
    raw: bytes
    offsets: dict[str, int]

    def lookup(self, tenant_id: str, channel_type: str, address: str) -> tuple[str, str] | None:
        """``(ilk, ich)`` for a channel, probing like the original SDK's ``LookupIlkByChannel``."""
        ctype = channel_type.strip().lower().encode()
        addr = address.strip().lower().encode()
        try:
            tenant = uuid.UUID(tenant_id.strip().removeprefix("tnt:")).bytes
        except ValueError:
            tenant = bytes(16)
        n = self.header["max_ich_mappings"]
        h = fnv(ctype, addr, tenant)
        base = self.offsets["mappings"]
        for probe in range(n):
            off = base + ((h % n + probe) % n) * SIZES["mapping"]
            (flags,) = unpack_from("<H", self.raw, off + 344)
            if flags == 0:
                return None
            if flags & 2 or not flags & 1:
                continue
            (entry_hash,) = unpack_from("<Q", self.raw, off)
            if (entry_hash == h and _text(self.raw[off + 8: off + 40]).encode() == ctype
                    and _text(self.raw[off + 40: off + 296]).encode() == addr
                    and self.raw[off + 328: off + 344] == tenant):
                return _id("ilk", self.raw[off + 312: off + 328]), _id("ich", self.raw[off + 296: off + 312])
        return None

    def ilk_by_handler(self, handler: str) -> str | None:
        """Like the original SDK's ``LookupIlkByHandlerNode``: scan the first ``ilk_count`` entries."""
        for ilk in self.ilks:
            if ilk["flags"] & 1 and ilk["handler_node"] == handler:
                return str(ilk["ilk_id"])
        return None

    def mapping_flags(self) -> list[int]:
        base = self.offsets["mappings"]
        return [unpack_from("<H", self.raw, base + i * SIZES["mapping"] + 344)[0]
                for i in range(self.header["max_ich_mappings"])]


def read(name: str, timeout_s: float = 1.0) -> Snapshot:
    """A consistent copy of the region (seqlock: even and unchanged around the copy)."""
    path = "/dev/shm/" + name.lstrip("/")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            (s1,) = unpack_from("<Q", mm, 8)
            if s1 % 2 == 0:
                raw = bytes(mm)
                (s2,) = unpack_from("<Q", mm, 8)
                if s1 == s2:
                    return _parse(raw)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no consistent read in {timeout_s} s")
            time.sleep(0.0005)
    finally:
        mm.close()


def _parse(raw: bytes) -> Snapshot:
    magic, version, seq = unpack_from("<IIQ", raw, 0)
    counts = unpack_from("<6I", raw, 16)
    maxima = unpack_from("<6I", raw, 40)
    updated_at, heartbeat = unpack_from("<QQ", raw, 64)
    (owner_pid,) = unpack_from("<I", raw, 96)
    (hive_len,) = unpack_from("<H", raw, 168)
    header = {
        "magic": magic, "version": version, "seq": seq,
        "tenant_count": counts[0], "ilk_count": counts[1], "ich_count": counts[2], "ich_mapping_count": counts[3],
        "vocabulary_count": counts[4], "ilk_alias_count": counts[5],
        "max_ilks": maxima[0], "max_tenants": maxima[1], "max_ichs": maxima[2], "max_ich_mappings": maxima[3],
        "max_vocabulary": maxima[4], "max_ilk_aliases": maxima[5],
        "updated_at": updated_at, "heartbeat": heartbeat, "owner_uuid": str(uuid.UUID(bytes=raw[80:96])),
        "owner_pid": owner_pid, "is_primary": raw[100], "hive_id": raw[104: 104 + hive_len].decode(),
    }
    o: dict[str, int] = {"tenants": _align(HEADER_BYTES)}
    o["ilks"] = _align(o["tenants"] + SIZES["tenant"] * header["max_tenants"])
    o["ichs"] = _align(o["ilks"] + SIZES["ilk"] * header["max_ilks"])
    o["mappings"] = _align(o["ichs"] + SIZES["ich"] * header["max_ichs"])
    o["aliases"] = _align(o["mappings"] + SIZES["mapping"] * header["max_ich_mappings"])
    o["vocabulary"] = _align(o["aliases"] + SIZES["alias"] * header["max_ilk_aliases"])
    o["end"] = o["vocabulary"] + SIZES["vocabulary"] * header["max_vocabulary"]
    if o["end"] > len(raw):
        raise ValueError(f"region of {len(raw)} bytes is smaller than its header's tables ({o['end']})")
    tenants = []
    for i in range(header["tenant_count"]):
        off = o["tenants"] + i * SIZES["tenant"]
        tenants.append({"tenant_id": _id("tnt", raw[off: off + 16]), "name": _text(raw[off + 16: off + 144]),
                        "status": raw[off + 272], "flags": unpack_from("<H", raw, off + 274)[0]})
    ilks = []
    for i in range(header["ilk_count"]):
        off = o["ilks"] + i * SIZES["ilk"]
        ilks.append({"ilk_id": _id("ilk", raw[off: off + 16]), "ilk_type": raw[off + 16],
                     "registration_status": raw[off + 17], "flags": unpack_from("<H", raw, off + 18)[0],
                     "tenant_id": _id("tnt", raw[off + 20: off + 36]), "display_name": _text(raw[off + 36: off + 164]),
                     "handler_node": _text(raw[off + 164: off + 292])})
    ichs = []
    for i in range(header["ich_count"]):
        off = o["ichs"] + i * SIZES["ich"]
        ichs.append({"ich_id": _id("ich", raw[off: off + 16]), "ilk_id": _id("ilk", raw[off + 16: off + 32]),
                     "channel_type": _text(raw[off + 32: off + 64]), "address": _text(raw[off + 64: off + 320]),
                     "flags": unpack_from("<H", raw, off + 320)[0]})
    aliases = []
    for i in range(header["ilk_alias_count"]):
        off = o["aliases"] + i * SIZES["alias"]
        aliases.append({"old_ilk_id": _id("ilk", raw[off: off + 16]),
                        "canonical_ilk_id": _id("ilk", raw[off + 16: off + 32]),
                        "expires_at": unpack_from("<Q", raw, off + 32)[0],
                        "flags": unpack_from("<H", raw, off + 40)[0]})
    return Snapshot(header, tenants, ilks, ichs, aliases, raw, o)
