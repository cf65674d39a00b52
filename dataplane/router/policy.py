"""The router's routing policy: loading it from the hive's policy region, deciding, caching, auditing.

What it does (the README's "Routing policies" section has the protocol):

* **Loading.** The policy lives in the hive's policy region (:mod:`fluxbee.dataplane.shm.policy`).
  :meth:`PolicyRuntime.reload` (an ``OPA_RELOAD {version, hash}`` from an authenticated ``SY.*`` node)
  loads it only if the region holds that version and hash and its bytes hash to it; every
  :data:`POLL_S` seconds :meth:`PolicyRuntime.tick` also loads a version found there that is not the
  one running (a lost OPA_RELOAD delays a policy, never loses it). A version that was refused once
  (tampered, undecodable, cannot load) is not retried by the poll; an OPA_RELOAD retries it.
* **Identity data.** The engine is loaded with the policy's own data plus ``data.identity`` and its
  indexes, built from the identity region (:func:`build_identity_data`), once per identity version:
  when SY.identity publishes a change the engine is rebuilt with the new data (checked every
  :data:`IDENTITY_CHECK_S`), never per message. Reading the region, checking and decoding the
  artefact and copying the identity data run in a worker thread; the engine is loaded on the event
  loop (a regorus engine may only be used by the thread that made it; parsing the data document of
  10,000 identities holds the loop for tens of milliseconds, once per version), which then swaps the
  finished :class:`Loaded` in, so every message is decided by exactly one (policy version, identity
  version).
* **Deciding.** :meth:`PolicyRuntime.evaluate` answers one message with a :class:`Verdict` (target,
  allow, or the evaluation error). Verdicts are cached by (policy version, identity version, the
  sender, its name and the meta bytes: everything the input is built from), bounded to
  :data:`CACHE_ENTRIES` (oldest first out), so a repeated decision costs a dict lookup.
* **Fast lane.** A ``dst: null`` frame whose verdict is cached is routed by
  :class:`~fluxbee.dataplane.router.nullroute.NullLane` without being decoded (its module docstring
  says what an entry depends on); it is emptied with the cache whenever the policy or its identity
  data changes.
* **Audit.** Every decision the router carries out is recorded (:meth:`PolicyRuntime.record`):
  a ring of the last :data:`AUDIT_ENTRIES` (sequence number, time, policy and identity versions,
  input digest, target, where it went, allowed, result, reason, engine, cache hit, count, since),
  read by ``OPA_DECISIONS_GET`` and counted in ``/metrics``. A record is one decision (``count`` 1),
  or, for the fast lane's decisions, an aggregate: ``count`` decisions with the same input and
  result that went to the same node between ``since_ms`` and ``ts_ms``
  (:meth:`PolicyRuntime.flush_lane`, run every second and before anything reads the audit or the
  counters, so the counters are exact whenever they are read and ``sum(count)`` over the records is
  the number of decisions).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.policy import (
    POLICY_LOAD_ERROR,
    Artefact,
    Engine,
    IdentityRecord,
    PolicyError,
    build_identity_data,
    build_input,
    load,
)
from fluxbee.dataplane.policy.artefact import canonical_json
from fluxbee.dataplane.router.nullroute import NullLane
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.shm.policy import (
    PolicyDigestError,
    PolicyRegionReader,
    normalise_digest,
    policy_region_name,
)
from fluxbee.dataplane.shm.region import RegionNotFoundError, ShmError

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)

POLL_S: Final = 5.0
IDENTITY_CHECK_S: Final = 1.0
CACHE_ENTRIES: Final = 8192
AUDIT_ENTRIES: Final = 1000
MAX_DECISIONS_PAGE: Final = 1000
MAX_DETAIL: Final = 1000
"""Characters of an error detail kept in the status and of a reason kept in the audit ring."""

# Error codes of OPA_RELOAD_RESPONSE and of the status' policy.error
HASH_MISMATCH: Final = "HASH_MISMATCH"
VERSION_MISMATCH: Final = "VERSION_MISMATCH"
NO_POLICY_REGION: Final = "NO_POLICY_REGION"
INVALID_REQUEST: Final = "INVALID_REQUEST"

AUDIT_FIELDS: Final = ("seq", "ts_ms", "policy_version", "identity_version", "input_digest", "target", "resolved",
                       "allowed", "result", "reason", "engine", "cached", "count", "since_ms")
"""The fields of an audit record, in the order the ring keeps them."""
RESULTS: Final = ("routed", wire.OPA_NO_TARGET, wire.OPA_ERROR, wire.POLICY_DENIED, "allowed", "refused")
"""Audit results: routed (a dst:null message sent on), allowed (an action with an explicit dst let
through), refused (the target was found but the route refused it: NODE_NOT_FOUND, VPN_BLOCKED ...)."""

_meta_decoder = msgspec.json.Decoder(dict[str, Any])


class Refused(Exception):
    """A policy the router will not run: ``code`` and ``detail`` go to the status and the reloader."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Loaded:
    """A running policy: the artefact, its engine loaded with one identity version's data, and the
    identity indexes the target rules read (:class:`~fluxbee.dataplane.router.decide.Holders`)."""

    version: int
    sha256: str
    artefact: Artefact
    engine: Engine
    identity_version: tuple[int, int]
    handlers: Mapping[str, str]  # ILK (or alias) -> node handling it
    tag_nodes: Mapping[str, tuple[str, ...]]  # capability or role -> nodes of the ILKs holding it

    def handler_of(self, ilk: str) -> str | None:
        return self.handlers.get(ilk) or None

    def holders(self, tag: str) -> tuple[str, ...] | None:
        return self.tag_nodes.get(tag)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One evaluation: ``error`` is the detail of a failed evaluation (target and allow then unset)."""

    target: str | None
    allow: bool | None
    engine: str
    digest: str
    error: str | None = None
    cached: bool = False


def identity_data(hive_id: str, name: str) -> tuple[tuple[int, int], dict[str, Any], dict[str, str],
                                                      dict[str, tuple[str, ...]]]:
    """``(identity version, system data, handlers, tag nodes)`` from the identity region (empty data
    and version (0, 0) when there is none). Runs in a worker thread: opens its own reader."""
    try:
        reader = identity_shm.IdentityRegionReader(hive_id, name=name)
    except ShmError:
        return (0, 0), build_identity_data(()), {}, {}
    try:
        generation = reader.header().generation
        version, infos, aliases = reader.snapshot()
    finally:
        reader.close()
    records = [IdentityRecord(ilk=i.ilk_id, type=i.ilk_type, tenant=i.tenant_id, human_subtype=i.human_subtype,
                              capabilities=i.capabilities, roles=i.roles, handler_node=i.handler_node)
               for i in infos if i.ilk_type in ("human", "agent", "system")]
    try:
        data = build_identity_data(records, aliases)
    except ValueError as err:
        raise Refused(POLICY_LOAD_ERROR, f"identity data: {err}") from err
    handlers = {i.ilk_id: i.handler_node for i in infos if i.handler_node}
    for old, canonical in data["identity_aliases"].items():
        if canonical in handlers:
            handlers[old] = handlers[canonical]
    tags: dict[str, set[str]] = {}
    for index in (data["by_capability"], data["by_role"]):
        for tag, ilks in index.items():
            nodes = tags.setdefault(tag, set())
            nodes.update(handlers[ilk] for ilk in ilks if ilk in handlers)
    return (generation, version), data, handlers, {t: tuple(sorted(n)) for t, n in tags.items()}


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything of a policy but its engine: what the worker thread reads and checks."""

    version: int
    sha256: str
    artefact: Artefact
    identity_version: tuple[int, int]
    data: dict[str, Any]
    handlers: dict[str, str]
    tag_nodes: dict[str, tuple[str, ...]]

    def load(self) -> Loaded:
        """Load the engine, on the thread that will evaluate with it (regorus engines are bound to
        the thread that made them)."""
        try:
            engine = load(self.artefact, self.data)
        except PolicyError as err:
            raise Refused(POLICY_LOAD_ERROR, str(err)) from err
        return Loaded(self.version, self.sha256, self.artefact, engine, self.identity_version, self.handlers,
                      self.tag_nodes)


def prepare(region: str, hive_id: str, identity_name: str, want: tuple[int, str] | None,
            reuse: Loaded | None) -> Prepared:
    """Read and check a policy and the identity data (in a worker thread). ``want``: the (version,
    digest) an OPA_RELOAD names; ``reuse``: this policy again, with fresh identity data."""
    if reuse is not None:
        version, sha256, artefact = reuse.version, reuse.sha256, reuse.artefact
    else:
        try:
            with PolicyRegionReader(region) as reader:
                version, sha256 = reader.version()
                if want is not None and (version, sha256) != want:
                    code = HASH_MISMATCH if version == want[0] else VERSION_MISMATCH
                    raise Refused(code, f"the policy region holds version {version} sha256:{sha256}, "
                                        f"not version {want[0]} sha256:{want[1]}")
                snapshot = reader.read()
        except RegionNotFoundError as err:
            raise Refused(NO_POLICY_REGION, str(err)) from err
        except PolicyDigestError as err:
            raise Refused(HASH_MISMATCH, str(err)) from err
        except ShmError as err:
            raise Refused(POLICY_LOAD_ERROR, str(err)) from err
        if snapshot is None:
            raise Refused(NO_POLICY_REGION, f"nothing is published in {region}")
        if want is not None and (snapshot.version, snapshot.sha256) != want:  # republished meanwhile
            raise Refused(VERSION_MISMATCH, f"the region moved on to version {snapshot.version}")
        version, sha256 = snapshot.version, snapshot.sha256
        try:
            artefact = Artefact.from_bytes(snapshot.artefact)
        except PolicyError as err:
            raise Refused(POLICY_LOAD_ERROR, str(err)) from err
    identity_version, data, handlers, tag_nodes = identity_data(hive_id, identity_name)
    return Prepared(version, sha256, artefact, identity_version, data, handlers, tag_nodes)


class PolicyRuntime:
    """The policy of one router (see the module docstring)."""

    def __init__(self, router: Router) -> None:
        s = router.settings
        self._router = router
        self.region = policy_region_name(s.hive_id, s.run_dir)
        self.current: Loaded | None = None
        self.error: dict[str, Any] | None = None
        self.refused: set[tuple[int, str]] = set()
        self.turns: dict[str, int] = {}
        self.cache: dict[tuple[int, tuple[int, int], str, str, bytes], Verdict] = {}
        self.audit: deque[tuple[Any, ...]] = deque(maxlen=AUDIT_ENTRIES)
        self.seq = 0
        self.results: Counter[str] = Counter()
        self.cache_hits = 0
        self.cache_misses = 0
        self.reloads: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_poll = -1e9
        self._last_identity_check = -1e9
        self.lane = NullLane(router, self)

    # -- loading ------------------------------------------------------------------------------

    @property
    def guards_actions(self) -> bool:
        """True when the running policy has an ``allow`` rule: messages with ``meta.action`` need it."""
        current = self.current
        return current is not None and current.artefact.allow_entrypoint is not None

    def tick(self) -> None:
        """Called every second: poll the region every POLL_S, the identity version every IDENTITY_CHECK_S."""
        self.flush_lane()
        if self._lock.locked() or self._router.stopped.is_set():
            return
        now = time.monotonic()
        poll = now - self._last_poll >= POLL_S
        identity = (self.current is not None and now - self._last_identity_check >= IDENTITY_CHECK_S)
        if poll or identity:
            self._spawn(self._refresh(poll, identity))

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task this runtime owns (cancelled by :meth:`close`)."""
        self._spawn(coro)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, poll: bool, identity: bool) -> None:
        async with self._lock:
            if poll:
                self._last_poll = time.monotonic()
                found = self._region_version()
                current = self.current
                if found is not None and found[0] > 0 and found not in self.refused and (
                        current is None or found != (current.version, current.sha256)):
                    await self._load(None, None, "poll")
                    return
            if identity and self.current is not None:
                self._last_identity_check = time.monotonic()
                if self._router.l3.identity_version() != self.current.identity_version:
                    await self._load(None, self.current, "identity")

    def _region_version(self) -> tuple[int, str] | None:
        try:
            with PolicyRegionReader(self.region) as reader:
                return reader.version()
        except ShmError:
            return None

    async def reload(self, payload: Any) -> dict[str, Any]:
        """Handle OPA_RELOAD's payload ``{version, hash}``; the OPA_RELOAD_RESPONSE payload."""
        answer: dict[str, Any] = {"router": self._router.name}
        if not isinstance(payload, dict):
            return {**answer, "status": "error", "error_code": INVALID_REQUEST,
                    "error_detail": "the payload must be {version, hash}"}
        version, digest = payload.get("version"), payload.get("hash")
        try:
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError(f"version must be a positive integer, not {version!r}")
            if not isinstance(digest, str):
                raise ValueError("hash must be a string sha256:<64 hex>")
            digest = normalise_digest(digest)
        except ValueError as err:
            return {**answer, "status": "error", "error_code": INVALID_REQUEST, "error_detail": str(err)}
        async with self._lock:
            current = self.current
            if current is None or (current.version, current.sha256) != (version, digest):
                refused = await self._load((version, digest), None, "OPA_RELOAD")
                if refused is not None:
                    return {**answer, "status": "error", "version": version, "hash": f"sha256:{digest}",
                            "error_code": refused.code, "error_detail": refused.detail}
        return {**answer, **self.describe(), "status": "ok"}

    async def _load(self, want: tuple[int, str] | None, reuse: Loaded | None, source: str) -> Refused | None:
        s = self._router.settings
        try:
            prepared = await asyncio.to_thread(prepare, self.region, s.hive_id, self._router.l3.region_name,
                                               want, reuse)
            loaded = prepared.load()
        except Refused as err:
            self.reloads["refused"] += 1
            failed = want if want is not None else self._region_version()
            if failed is not None and err.code != VERSION_MISMATCH:
                self.refused.add(failed)
            self.error = {"code": err.code, "detail": err.detail[:MAX_DETAIL], "source": source,
                          "version": None if failed is None else failed[0],
                          "hash": None if failed is None else f"sha256:{failed[1]}"}
            log.warning("policy refused (%s): %s: %s; %s", source, err.code, err.detail,
                        f"keeping version {self.current.version}" if self.current else "no policy is running")
            return err
        if self._router.stopped.is_set():
            return None
        self.install(loaded)
        self.reloads["ok"] += 1
        if reuse is None:
            self.error = None
            self.refused.discard((loaded.version, loaded.sha256))
            log.info("policy version %d sha256:%s loaded (%s engine, %s)", loaded.version, loaded.sha256,
                     loaded.engine.name, source)
        return None

    def install(self, loaded: Loaded) -> None:
        """Make ``loaded`` the running policy, in one step of the event loop: the fast lane's decisions
        so far are audited under the version that made them, then the lane and the cache are emptied,
        so every later message is decided by ``loaded`` alone."""
        self.flush_lane()
        self.lane.clear()
        self.current = loaded
        self.cache.clear()
        self._router.policy_changed()

    def describe(self) -> dict[str, Any]:
        """The status' ``policy`` section: ``{version, hash, engine, status, error, ...}``."""
        self.flush_lane()
        current = self.current
        return {"version": current.version if current else None,
                "hash": f"sha256:{current.sha256}" if current else None,
                "engine": current.engine.name if current else None,
                "status": "loaded" if current else ("error" if self.error else "none"),
                "error": self.error,
                "identity_version": list(current.identity_version) if current else None,
                "entrypoints": list(current.artefact.entrypoints) if current else [],
                "region": self.region,
                "cache": {"entries": len(self.cache), "hits": self.cache_hits, "misses": self.cache_misses,
                          "lane_entries": self.lane.size, "lane_hits": self.lane.taken},
                "decisions": {r: self.results[r] for r in RESULTS},
                "reloads": dict(self.reloads)}

    # -- deciding -----------------------------------------------------------------------------

    def evaluate(self, src: str, src_l2_name: str, raw_meta: bytes) -> Verdict | None:
        """The running policy's answer for one message (None when no policy is loaded)."""
        current = self.current
        if current is None:
            return None
        key = (current.version, current.identity_version, src, src_l2_name, raw_meta)
        cache = self.cache
        hit = cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            return hit
        self.cache_misses += 1
        try:
            meta = _meta_decoder.decode(raw_meta)
        except msgspec.DecodeError as err:
            return Verdict(None, None, current.engine.name, "", f"meta is not a JSON object: {err}")
        src_ilk = meta.get("src_ilk")
        # canonical through the live aliases (a dst:null meta was rewritten already; an explicit-dst
        # message checked by the allow rule was not): the key holds the identity version, so it stays right
        doc = build_input(meta, src=src, src_l2_name=src_l2_name,
                          src_ilk=self._router.l3.canonical(src_ilk) if isinstance(src_ilk, str) else None)
        digest = hashlib.sha256(canonical_json(doc)).hexdigest()[:16]
        try:
            decision = current.engine.evaluate(doc)
        except PolicyError as err:
            verdict = Verdict(None, None, current.engine.name, digest, str(err))
        except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
            raise
        except BaseException as err:  # an engine bug (a Rust panic is a BaseException) costs one message
            log.exception("policy engine failed on input %s", digest)
            verdict = Verdict(None, None, current.engine.name, digest, f"{type(err).__name__}: {err}")
        else:
            verdict = Verdict(decision.target, decision.allow, decision.engine, digest)
        if len(cache) >= CACHE_ENTRIES:
            del cache[next(iter(cache))]
        cache[key] = Verdict(verdict.target, verdict.allow, verdict.engine, verdict.digest, verdict.error, True)
        return verdict

    def record(self, verdict: Verdict, result: str, reason: str, resolved: str | None) -> None:
        """Audit one decision the router carried out (see :data:`RESULTS`)."""
        current = self.current
        self.seq += 1
        self.results[result] += 1
        now_ms = time.time_ns() // 1_000_000
        self.audit.append((self.seq, now_ms,
                           current.version if current else None,
                           current.identity_version[1] if current else None, verdict.digest, verdict.target,
                           resolved, verdict.allow, result, reason[:MAX_DETAIL], verdict.engine, verdict.cached,
                           1, now_ms))

    def flush_lane(self) -> None:
        """Audit and count the fast lane's decisions since the last flush: one aggregate record per
        entry and node (see the module docstring)."""
        lane = self.lane
        pending = lane.pending
        if not pending:
            return
        lane.pending = []
        now_ms = time.time_ns() // 1_000_000
        l3_counts = self._router.l3.counts
        total = 0
        for entry in pending:
            verdict = entry.verdict
            for resolved, count in entry.counts.items():
                self.seq += 1
                total += count
                self.audit.append((self.seq, now_ms, entry.version, entry.identity_version[1], verdict.digest,
                                   verdict.target, resolved, verdict.allow, "routed",
                                   f"fast lane: {count} decision{'s' if count != 1 else ''} with this input",
                                   verdict.engine, True, count, entry.since_ms))
                l3_counts[entry.l3_outcome] += count
            entry.counts = {}
        self.results["routed"] += total
        self.cache_hits += total
        lane.taken += total

    def decisions(self, payload: Any) -> dict[str, Any]:
        """OPA_DECISIONS_GET: ``{limit?: 1..1000, after?: seq}`` → the audit page (oldest first)."""
        body = payload if isinstance(payload, dict) else {} if payload is None else None
        if body is None:
            raise ValueError("the payload must be null or {limit?, after?}")
        limit, after = body.get("limit", MAX_DECISIONS_PAGE), body.get("after", 0)
        for name, value, top in (("limit", limit, MAX_DECISIONS_PAGE), ("after", after, None)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "limit" else 0) \
                    or (top is not None and value > top):
                raise ValueError(f"{name} must be an integer in [{1 if name == 'limit' else 0}, "
                                 f"{top if top is not None else '...'}], not {value!r}")
        self.flush_lane()
        fields = AUDIT_FIELDS
        page: list[dict[str, Any]] = []
        used = 2048
        for entry in self.audit:
            if entry[0] <= after:
                continue
            item = dict(zip(fields, entry, strict=True))
            size = len(wire.encode(item)) + 1
            if len(page) >= limit or used + size > wire.PAYLOAD_BUDGET:
                break
            used += size
            page.append(item)
        return {"status": "ok", "router": self._router.name, "policy": self.describe(), "decisions": page,
                "next_after": page[-1]["seq"] if page else after, "latest": self.seq}

    def prometheus(self) -> str:
        self.flush_lane()
        current = self.current
        lines = ["# HELP fluxbee_router_policy_decisions_total Policy decisions carried out, by result.",
                 "# TYPE fluxbee_router_policy_decisions_total counter"]
        lines += [f'fluxbee_router_policy_decisions_total{{result="{r}"}} {self.results[r]}' for r in RESULTS]
        lines += ["# HELP fluxbee_router_policy_cache_total Policy decision cache lookups, by outcome.",
                  "# TYPE fluxbee_router_policy_cache_total counter",
                  f'fluxbee_router_policy_cache_total{{outcome="hit"}} {self.cache_hits}',
                  f'fluxbee_router_policy_cache_total{{outcome="miss"}} {self.cache_misses}',
                  "# HELP fluxbee_router_policy_reloads_total Policy loads, by outcome (ok, refused).",
                  "# TYPE fluxbee_router_policy_reloads_total counter"]
        lines += [f'fluxbee_router_policy_reloads_total{{outcome="{k}"}} {self.reloads[k]}' for k in ("ok", "refused")]
        lines += ["# TYPE fluxbee_router_policy_version gauge",
                  f"fluxbee_router_policy_version {current.version if current else 0}"]
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass
