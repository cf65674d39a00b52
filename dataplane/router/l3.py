"""L3 (identity) resolution for ``routing.dst == null``, reading the identity region.

Order (the original's pre-resolve, before any policy):

1. ``meta.src_ilk`` is canonicalised through live aliases (a merged temporary
   ILK speaks as its canonical ILK from then on).
2. A canonical source ILK that is ``temporary`` goes to the hive's identity
   front desk (configurable name), whatever else the message asks for.
3. ``meta.dst_ilk`` (canonicalised too) goes to the node handling that ILK
   (its ``handler_node``, i.e. the registered ``identification.node_name``).
4. Otherwise: no decision here; the caller falls through to the policy seam
   (capability and Rego routing arrive with the policy engine).

If the region is missing or unreadable the resolver answers "no decision"
(fail open to the policy seam, as the original skips pre-resolve).  It
reopens the region when SY.identity restarts (checked at most once a second).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import msgspec

from fluxbee.dataplane import identity_shm


@dataclass(frozen=True, slots=True)
class L3Decision:
    target: str
    """L2 name to route to."""
    canonical_src_ilk: str | None
    """Set when ``meta.src_ilk`` was an alias and must be rewritten."""
    reason: str
    """``frontdesk`` or ``dst_ilk`` (counted by the router)."""


class L3Resolver:
    def __init__(self, hive_id: str, frontdesk: str, *, recheck_s: float = 1.0) -> None:
        self.hive_id = hive_id
        self.frontdesk = frontdesk if "@" in frontdesk else f"{frontdesk}@{hive_id}"
        self.recheck_s = recheck_s
        self._reader: identity_shm.IdentityRegionReader | None = None
        self._checked = -1e9
        self.routed: Counter[str] = Counter()
        """Decisions taken, by reason."""

    def _region(self) -> identity_shm.IdentityRegionReader | None:
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            if self._reader is not None and self._reader.replaced():
                self._reader.close()
                self._reader = None
            if self._reader is None:
                try:
                    self._reader = identity_shm.IdentityRegionReader(self.hive_id)
                except identity_shm.IdentityShmError:
                    self._reader = None
        return self._reader

    def resolve(self, src_ilk: str | None, dst_ilk: str | None) -> L3Decision | None:
        if src_ilk is None and dst_ilk is None:
            return None
        region = self._region()
        if region is None:
            return None
        try:
            canonical_src = None
            if src_ilk is not None:
                canonical = region.canonical(src_ilk)
                if canonical != src_ilk:
                    canonical_src = canonical
                info = region.get_ilk(canonical)
                if info is not None and info.registration_status == "temporary":
                    self.routed["frontdesk"] += 1
                    return L3Decision(self.frontdesk, canonical_src, "frontdesk")
            if dst_ilk is not None:
                target = region.resolve(dst_ilk)
                if target is not None and target.handler_node:
                    self.routed["dst_ilk"] += 1
                    return L3Decision(target.handler_node, canonical_src, "dst_ilk")
        except identity_shm.ReadTimeoutError:
            return None
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def with_src_ilk(meta: msgspec.Raw, src_ilk: str) -> msgspec.Raw:
    """``meta`` with ``src_ilk`` replaced (other keys kept); only for alias hits, so rare."""
    doc = msgspec.json.decode(meta)
    if not isinstance(doc, dict):
        return meta
    doc["src_ilk"] = src_ilk
    return msgspec.Raw(msgspec.json.encode(doc))
