"""The fast lane for ``dst: null`` frames whose routing decision the router has already made.

The general path (:func:`fluxbee.dataplane.router.dispatch.route_null`) decides a ``dst: null`` message
once: the identity pre-resolve (:mod:`.l3`), then the routing policy's verdict (cached by
:class:`~fluxbee.dataplane.router.policy.PolicyRuntime`), then the node the verdict's target names
(:func:`decide.policy_route`). A node sends the same meta over and over, so the lane keeps, per sender
and meta bytes, what that decision needs to be taken again without decoding anything, an
:class:`Entry`. A frame the lane takes is checked and cut by C (:mod:`fluxbee.dataplane.nullpath`),
looked up with two dict lookups, its node picked (in turn, for a capability or role: the entry keeps
the candidate names, never one node) and the frame spliced (``routing.dst`` = the node's UUID,
``src_l2_name`` stamped, byte for byte what the general path writes) into the node's output buffer, as
the fast path queues explicit frames (:mod:`.fastroute`); a burst with the same meta to one node goes
as one run.

**What an entry depends on, and when it is dropped.** The verdict is the policy cache's, keyed by
(policy version, identity version, ``routing.src``, ``src_l2_name``, the meta bytes): the lane is keyed
by the connection's node UUID, its stamp (which holds ``src_l2_name``) and the meta bytes, and emptied
whenever the policy or its identity data changes (:meth:`PolicyRuntime._load`), so no decision
outlives its versions. The pre-resolve reads the identity region live: an entry for a meta with
``src_ilk`` or ``dst_ilk`` keeps the region version it was checked at and is dropped when the region
moves on (a meta with neither never has a pre-resolve decision). The candidate names depend on which
nodes are connected and on the route table: the entry keeps :attr:`Registry.generation` and computes
them again when it changed; a tag held by a node of another hive (which depends on the links) is left
to the general path. Only an entry that the general path itself would route to a local node is kept.

**What goes to the general path.** A first frame (the verdict is not cached yet: the general path
evaluates it), an evaluation error, an undefined target, a denied action, a pre-resolve decision, a
system or privileged message, a meta that does not decode, and every frame the lane cannot queue
there and then (another VPN, a closing or remote node, a full buffer, a route deciding the name, the
size limit): the lane commits nothing (no turn taken, nothing counted) before it knows the frame is
queued, so the general path decides those as if the lane were not there, and answers them.

**Audit.** Every decision is counted and audited, cheaply: a taken frame adds one to its entry's
count for the node it went to; :meth:`PolicyRuntime.flush_lane` turns the counts into aggregate audit
records (``count`` decisions with the same input, result ``routed``, one node, between ``since_ms`` and
``ts_ms``) and adds them to the decision, cache-hit and pre-resolve counters. It runs every second,
before the audit, the status or ``/metrics`` are read, and before the policy changes, so what is read
is always exact.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import msgspec

from fluxbee.dataplane import nullpath, wire
from fluxbee.dataplane.router import decide, l3
from fluxbee.dataplane.router.config import split_name
from fluxbee.dataplane.router.registry import pick

if TYPE_CHECKING:
    from fluxbee.dataplane.router.connection import Conn
    from fluxbee.dataplane.router.policy import Loaded, PolicyRuntime, Verdict
    from fluxbee.dataplane.router.server import Router

LANE_ENTRIES: Final = 8192
"""Entries (senders × metas), and senders, the lane keeps; it is emptied (after a flush) when either
reaches this many."""

_decode_meta = wire.meta_decoder.decode


class _Missing:
    """Not known yet: keep nothing for the meta, ask again next time."""


_MISSING: Final = _Missing()


class Entry:
    """One cached decision: the verdict and what the lane needs to carry it out again."""

    __slots__ = ("counts", "generation", "identity_version", "key", "l3_outcome", "l3_version", "names",
                 "since_ms", "verdict", "version")

    def __init__(self, verdict: Verdict, current: Loaded, l3_outcome: str, l3_version: tuple[int, int] | None) -> None:
        self.verdict = verdict
        self.version = current.version
        self.identity_version = current.identity_version
        self.l3_outcome = l3_outcome  # what the pre-resolve answered (counted per decision at flush)
        self.l3_version = l3_version  # the identity region version it answered for; None: no ILK in meta
        self.key: str | None = None  # the tag whose turns pick among names; None: one fixed name
        self.names: tuple[str, ...] = ()  # the candidate names; () while nothing is live (general path)
        self.generation = -1  # Registry.generation the names were computed at
        self.counts: dict[str, int] = {}  # node name -> decisions not yet audited
        self.since_ms = 0  # when the first of those was taken


class NullLane:
    """The fast lane of one router (see the module docstring); :meth:`take` is called by the fast path."""

    def __init__(self, router: Router, policy: PolicyRuntime) -> None:
        self._router = router
        self._policy = policy
        self.lanes: dict[bytes, tuple[bytes, dict[bytes, Entry | None]]] = {}  # node -> (stamp, meta -> entry)
        self.size = 0
        self.pending: list[Entry] = []  # entries with counts to audit
        self.taken = 0  # frames taken, audited so far (see PolicyRuntime.flush_lane)

    def clear(self) -> None:
        """Forget every entry (the caller has flushed the counts)."""
        self.lanes.clear()
        self.size = 0

    def take(self, conn: Conn, frames: list[bytes], index: int) -> int:
        """Queue ``frames[index]`` (and the frames after it that go the same way) if it is a ``dst: null``
        frame with a decision the lane holds; how many frames it took (0: the general path decides it)."""
        body = frames[index]
        node = conn.uuid_bytes
        hit = nullpath.scan_null(body, node)
        if hit is None:
            return 0
        raw_meta, cut = hit
        entry = self.lookup(conn, raw_meta)
        if entry is None:
            return 0
        registry = self._router.registry
        names = entry.names
        key = entry.key
        turn = 0
        if key is not None:
            turn = self._policy.turns.get(key, 0)
            name = names[turn % len(names)]
        else:
            name = names[0]
        group = registry.reached.get(name)
        if group is None:
            group = registry.reach(name)
            if group is None:
                return 0
        conns = group.conns
        cursor = group.cursor
        target = conns[0] if len(conns) == 1 else pick(group)
        transport = target.transport
        dst = target.uuid
        if target.vpn_id != conn.vpn_id or target.closing or transport is None or dst is None:
            group.cursor = cursor
            return 0
        frame = nullpath.splice_null(body, node, cut, conn.stamp, dst)
        settings = self._router.settings
        room = settings.max_buffer
        out = target.out
        base = target.out_base if out else transport.get_write_buffer_size()
        if frame is None or base + target.out_bytes + len(frame) > room:
            group.cursor = cursor
            return 0
        # Committed: from here on this frame is routed by the lane.
        if key is not None:
            self._policy.turns[key] = turn + 1
        if not out:
            self._router.dirty.append(target)
            target.out_base = base
        out.append(frame)
        size = target.out_bytes + len(frame)
        taken = 1
        if key is None and len(conns) == 1 and index + 1 < len(frames):
            # The frames after it with the same meta, as one run (what fastroute does for explicit ones).
            high_water = settings.high_water
            soft = room if target is conn else 0 if target.congested_since is not None else high_water - size
            if soft > 0:
                data, more = nullpath.extend_null(frames, index + 1, node, conn.stamp, dst, raw_meta, soft,
                                                  room - base - size)
                if more:
                    out.append(data)
                    size += len(data)
                    taken += more
        target.out_bytes = size
        if target is not conn and (target.congested_since is not None or size >= settings.high_water):
            conn.block(target)
        counts = entry.counts
        if not counts:
            self.pending.append(entry)
            entry.since_ms = time.time_ns() // 1_000_000
        tname = target.name
        counts[tname] = counts.get(tname, 0) + taken
        return taken

    def lookup(self, conn: Conn, raw_meta: bytes) -> Entry | None:
        """The decision for a ``dst: null`` frame of ``conn`` with this meta, if the lane may take it
        (learnt from the policy cache on a miss; None: the general path decides). This is the whole
        cost of a cached decision on the router's side (``fluxbee bench`` measures it)."""
        node = conn.uuid_bytes
        lane = self.lanes.get(node)
        if lane is None or lane[0] != conn.stamp:
            if len(self.lanes) >= LANE_ENTRIES:  # senders come and go: their lanes are bounded too
                self._policy.flush_lane()
                self.clear()
            lane = (conn.stamp, {})
            self.lanes[node] = lane
        entries = lane[1]
        entry = entries.get(raw_meta, _MISSING)
        if isinstance(entry, _Missing):
            entry = self._learn(conn, raw_meta)
            if isinstance(entry, _Missing):
                return None
            if self.size >= LANE_ENTRIES:
                self._policy.flush_lane()
                self.clear()
                entries = {}
                self.lanes[node] = (conn.stamp, entries)
            entries[raw_meta] = entry
            self.size += 1
        if entry is None:
            return None
        if entry.generation != self._router.registry.generation:
            self._plan(entry)
        if not entry.names:
            return None
        if entry.l3_version is not None and self._router.l3.identity_version() != entry.l3_version:
            entries[raw_meta] = None  # the region moved on: the general path decides, the next policy load relearns
            return None
        return entry

    def _learn(self, conn: Conn, raw_meta: bytes) -> Entry | None | _Missing:
        """The entry for a sender's meta: an :class:`Entry`, None (always the general path, until the
        policy changes) or ``_MISSING`` (not now: keep nothing, ask again next time)."""
        policy = self._policy
        current = policy.current
        if current is None or conn.uuid is None:
            return None
        try:
            meta = _decode_meta(raw_meta)
        except msgspec.DecodeError:
            return _MISSING  # the general path refuses the frame (and closes the connection)
        if decide.needs_rules(meta):  # a system or privileged message: screened by the general path
            return None
        if meta.src_ilk is None and meta.dst_ilk is None:
            outcome, region = l3.NO_ILK, None
        else:
            resolver = self._router.l3
            region = resolver.identity_version()
            decision, outcome = resolver.peek(meta.src_ilk, meta.dst_ilk)
            if decision is not None:
                return None  # routed by identity, not by the policy
            if outcome == l3.READ_TIMEOUT or region == (-1, -1) or resolver.identity_version() != region:
                return _MISSING  # the region is busy or moved while we looked
        verdict = policy.cache.get((current.version, current.identity_version, conn.uuid, conn.name, raw_meta))
        if verdict is None:
            return _MISSING  # not decided yet: the general path evaluates it (and caches the verdict)
        if verdict.error is not None or verdict.target is None \
                or (isinstance(meta.action, str) and verdict.allow is False):
            return None  # answered and audited by the general path, every time
        tags = current.holders(verdict.target)
        if tags is not None:
            hive_id = self._router.registry.hive_id
            if any("@" in n and split_name(n)[1] != hive_id for n in tags):
                return None  # which holders are live depends on the links: the general path decides
        entry = Entry(verdict, current, outcome, region)
        self._plan(entry)
        return entry

    def _plan(self, entry: Entry) -> None:
        """The candidate names of an entry's target for the registry as it is now."""
        current = self._policy.current
        registry = self._router.registry
        entry.generation = registry.generation
        target = entry.verdict.target
        if current is None or target is None:
            entry.key, entry.names = None, ()
            return
        route = decide.policy_route(target, registry, self._router.links, current)
        if isinstance(route, decide.Refuse):
            entry.key, entry.names = None, ()  # OPA_NO_TARGET, answered by the general path
            return
        entry.key, entry.names = route
