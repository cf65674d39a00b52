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

Every call is counted once by outcome in :attr:`L3Resolver.counts` (reported
by the router's status and ``/metrics``): ``frontdesk``, ``dst_ilk``,
``no_decision`` (the region has nothing that routes it), ``no_ilk`` (neither
``src_ilk`` nor ``dst_ilk`` set), ``no_region``, ``read_timeout``; plus
``alias_rewrites`` for decisions that canonicalised ``meta.src_ilk``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Final

import msgspec

from fluxbee.dataplane import identity_shm

FRONTDESK: Final = "frontdesk"
DST_ILK: Final = "dst_ilk"
NO_DECISION: Final = "no_decision"
NO_ILK: Final = "no_ilk"
NO_REGION: Final = "no_region"
READ_TIMEOUT: Final = "read_timeout"
OUTCOMES: Final = (FRONTDESK, DST_ILK, NO_DECISION, NO_ILK, NO_REGION, READ_TIMEOUT)


@dataclass(frozen=True, slots=True)
class L3Decision:
    target: str | None
    """L2 name to route to; None when identity decides no destination but ``meta.src_ilk`` must still
    be rewritten (an alias): the policy then decides, on the canonical ILK."""
    canonical_src_ilk: str | None
    """Set when ``meta.src_ilk`` was an alias and must be rewritten."""
    reason: str
    """``frontdesk``, ``dst_ilk`` or ``no_decision`` (counted by the router)."""


class L3Resolver:
    def __init__(self, hive_id: str, frontdesk: str, *, run_dir: str | os.PathLike[str] | None = None,
                 recheck_s: float = 1.0) -> None:
        self.hive_id = hive_id
        self.frontdesk = frontdesk if "@" in frontdesk else f"{frontdesk}@{hive_id}"
        self._handle = identity_shm.RegionHandle(hive_id, run_dir=run_dir, recheck_s=recheck_s)
        self.counts: Counter[str] = Counter()
        """Calls by outcome (see the module docstring)."""
        self.alias_rewrites = 0

    def _region(self) -> identity_shm.IdentityRegionReader | None:
        return self._handle.get()

    @property
    def region_open(self) -> bool:
        return self._handle.is_open

    @property
    def region_name(self) -> str:
        return self._handle.name

    def identity_version(self) -> tuple[int, int]:
        """``(generation, data_version)`` of the identity region; ``(0, 0)`` without one (the policy's
        identity data is rebuilt when this changes)."""
        region = self._region()
        if region is None:
            return (0, 0)
        try:
            return region.version()
        except identity_shm.ReadTimeoutError:
            return (-1, -1)  # busy: counts as changed, and the rebuild reads it again

    def resolve(self, src_ilk: str | None, dst_ilk: str | None) -> L3Decision | None:
        decision, outcome = self.peek(src_ilk, dst_ilk)
        self.counts[outcome] += 1
        if decision is not None and decision.canonical_src_ilk is not None:
            self.alias_rewrites += 1
        return decision

    def peek(self, src_ilk: str | None, dst_ilk: str | None) -> tuple[L3Decision | None, str]:
        """What :meth:`resolve` answers and its outcome, counting nothing (the router's ``dst: null``
        fast lane asks once per meta and counts the messages it routes later, in bulk)."""
        return self._resolve(src_ilk, dst_ilk)

    def snapshot(self) -> dict[str, object]:
        """For the router's status: where temporary ILKs go, whether the region is open, the counts."""
        return {"frontdesk": self.frontdesk, "region": self._handle.name,
                "region_open": self.region_open, "alias_rewrites": self.alias_rewrites,
                "outcomes": {k: self.counts[k] for k in OUTCOMES}}

    def prometheus(self) -> str:
        """``fluxbee_router_l3_total{outcome=...}`` and the alias rewrites, in the text exposition format."""
        lines = ["# HELP fluxbee_router_l3_total dst=null messages seen by the identity pre-resolve, by outcome.",
                 "# TYPE fluxbee_router_l3_total counter"]
        lines += [f'fluxbee_router_l3_total{{outcome="{k}"}} {self.counts[k]}' for k in OUTCOMES]
        lines += ["# HELP fluxbee_router_l3_alias_rewrites_total meta.src_ilk rewritten to its canonical ILK.",
                  "# TYPE fluxbee_router_l3_alias_rewrites_total counter",
                  f"fluxbee_router_l3_alias_rewrites_total {self.alias_rewrites}",
                  "# TYPE fluxbee_router_l3_region_open gauge",
                  f"fluxbee_router_l3_region_open {int(self.region_open)}"]
        return "\n".join(lines) + "\n"

    def _resolve(self, src_ilk: str | None, dst_ilk: str | None) -> tuple[L3Decision | None, str]:
        if src_ilk is None and dst_ilk is None:
            return None, NO_ILK
        region = self._region()
        if region is None:
            return None, NO_REGION
        try:
            canonical_src = None
            if src_ilk is not None:
                canonical = region.canonical(src_ilk)
                if canonical != src_ilk:
                    canonical_src = canonical
                info = region.get_ilk(canonical)
                if info is not None and info.registration_status == "temporary":
                    return L3Decision(self.frontdesk, canonical_src, FRONTDESK), FRONTDESK
            if dst_ilk is not None:
                target = region.resolve(dst_ilk)
                if target is not None and target.handler_node:
                    return L3Decision(target.handler_node, canonical_src, DST_ILK), DST_ILK
        except identity_shm.ReadTimeoutError:
            return None, READ_TIMEOUT
        if canonical_src is not None:  # no destination from identity, but the policy sees the canonical ILK
            return L3Decision(None, canonical_src, NO_DECISION), NO_DECISION
        return None, NO_DECISION

    def canonical(self, ilk: str) -> str:
        """``ilk`` through the live aliases (itself when it is no alias, or without a readable region)."""
        region = self._region()
        if region is None:
            return ilk
        try:
            return region.canonical(ilk)
        except identity_shm.ReadTimeoutError:
            return ilk

    def close(self) -> None:
        self._handle.close()


def with_src_ilk(meta: msgspec.Raw, src_ilk: str) -> msgspec.Raw:
    """``meta`` with ``src_ilk`` replaced (other keys kept); only for alias hits, so rare."""
    doc = msgspec.json.decode(meta)
    if not isinstance(doc, dict):
        return meta
    doc["src_ilk"] = src_ilk
    return msgspec.Raw(msgspec.json.encode(doc))
