"""Global routes and VPN rules: set on the mother hive, applied on every hive in version order.

``PUT /config/routes`` and ``PUT /config/vpns`` on a hive without a mother (the motherbee) change
the **global config**: one document ``{version, routes, vpns}`` with one version stream for both
lists (as the original's ``routes-vpns`` counter).  The mother applies it to its own router, keeps
it in ``<run dir>/admin/global-config.json``, and sends it to every other hive it knows (registered
with ``POST /hives``, or in its router's link state) as ``ADMIN_COMMAND apply_global_config`` to
``SY.admin@<hive>``; the answers collected within :data:`COLLECT_TIMEOUT` are in the reply
(``hives``), the silent hives are named in ``pending`` (HTTP 202, ``sync_pending``), and a hive
that refused makes the answer ``CONFIG_BROADCAST_FAILED`` (502) — the mother has applied it either
way, as in the original.

A worker (``spec.motherHive``) applies a global config only from its mother and only when its
version is above the one it last applied (kept in the same file): it never goes back to an older
one, whatever order the pushes arrive in.  It also **pulls**: every :data:`PULL_INTERVAL` seconds
it asks ``SY.admin@<mother>`` for the current document (``get_global_config``), so a worker that was
down, cut off or unlinked catches up as soon as it reaches its mother again, and a hive the mother
does not know of directly (reached through a transit hive) gets it too.  On the worker the lists
are applied to its router as ordinary config changes (the router numbers them in its own sequence);
the global version orders them.  A change is recorded only after the router applied it, so a crash
in between makes the worker apply the same version again (harmless) rather than skip it.

Where the document is kept is a :class:`GlobalStore`: locally a file (:class:`FileGlobalStore`), in a
cluster a key of the hive's admin ConfigMap (:mod:`fluxbee.admin.kube_global`), shared by every admin
replica of the hive.  Every change of it (a mother's version, a worker's apply) runs inside
:meth:`GlobalStore.locked`, which excludes every other writer of the same hive, in this process and
in the other replicas, and is saved only over the version it was computed from (:meth:`GlobalStore.save`),
so two replicas never number two changes alike, lose one, or go back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from pydantic import Field

from fluxbee.admin import remote, wan
from fluxbee.admin import schemas as s
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane import wire

if TYPE_CHECKING:
    from fluxbee.admin.actions.common import Call, Context

log = logging.getLogger(__name__)

COLLECT_TIMEOUT: Final = 5.0
"""Seconds the mother waits for the hives' answers to one change (the original's collection window)."""
PULL_INTERVAL: Final = 3.0
"""Seconds between a worker's asks for its mother's current global config."""
STATE_FILE: Final = "global-config.json"
_NOT_REACHED: Final = frozenset({"WAN_TIMEOUT", "HIVE_NOT_CONNECTED", "REMOTE_ADMIN_UNAVAILABLE", "ROUTER_UNREACHABLE",
                                 "ROUTER_UNAVAILABLE"})
"""Errors that mean a hive was not reached (it is pending: it catches up when it pulls), not that it refused."""


class GlobalConfigParams(s.Params):
    """``apply_global_config``: the mother's current global document."""

    version: int = Field(ge=1, le=2**53)
    routes: list[s.RouteBody] | None = Field(default=None, max_length=1024)
    vpns: list[s.VpnBody] | None = Field(default=None, max_length=1024)


@dataclass(slots=True)
class GlobalDoc:
    """The global config a hive holds: set (mother) or last applied (worker)."""

    version: int = 0
    routes: list[dict[str, Any]] | None = None
    vpns: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "routes": self.routes, "vpns": self.vpns}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> GlobalDoc:
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: not a JSON object")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"{where}: version must be a non-negative integer")
        lists: dict[str, list[dict[str, Any]] | None] = {}
        for key in ("routes", "vpns"):
            value = doc.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(i, dict) for i in value)):
                raise ValueError(f"{where}: {key} must be a list of objects or null")
            lists[key] = value
        return cls(version, lists["routes"], lists["vpns"])


def next_version(current: int, requested: int | None) -> int:
    """The version of a new global change: ``requested`` if it is above ``current``, else current + 1."""
    if requested is None:
        return current + 1
    if requested <= current:
        raise AdminError("VERSION_MISMATCH", f"version {requested} is not above the global config's "
                                             f"version {current}")
    return requested


def merged(doc: GlobalDoc, version: int, routes: list[dict[str, Any]] | None,
           vpns: list[dict[str, Any]] | None) -> GlobalDoc:
    """The document after a change that sets ``routes`` and/or ``vpns`` (None: that list unchanged)."""
    return GlobalDoc(version, doc.routes if routes is None else routes, doc.vpns if vpns is None else vpns)


DOC_LIMIT: Final = wire.PAYLOAD_BUDGET - 1024
"""Largest encoded global document: it travels to every hive in one ADMIN_COMMAND (and back in one
answer to a worker that asks for it), each one frame with its envelope around it."""


def check_deliverable(doc: GlobalDoc) -> None:
    """Refuse, before anything is applied, a global config that could not reach the other hives."""
    size = len(wire.encode(doc.to_json()))
    if size > DOC_LIMIT:
        raise AdminError("PAYLOAD_TOO_LARGE", f"the global routes and VPN rules would be {size} bytes encoded; "
                                              f"they travel to every hive in one frame: at most {DOC_LIMIT} bytes; "
                                              "nothing was changed")


def is_newer(held: GlobalDoc, offered_version: int) -> bool:
    return offered_version > held.version


@dataclass(frozen=True, slots=True)
class HiveResult:
    hive: str
    status: str
    """ok | error | pending"""
    version: int | None = None
    applied: bool | None = None
    error_code: str | None = None
    error_detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("hive", self.hive), ("status", self.status), ("version", self.version),
                                  ("applied", self.applied), ("error_code", self.error_code),
                                  ("error_detail", self.error_detail)) if v is not None}


def collect(hives: Iterable[str], answers: dict[str, dict[str, Any] | AdminError]) -> list[HiveResult]:
    """One result per hive asked: its answer, its error, or ``pending`` when it did not answer in time
    (or could not be reached: the change reaches it when it pulls)."""
    out = []
    for hive in sorted(set(hives)):
        got = answers.get(hive)
        if got is None:
            out.append(HiveResult(hive, "pending"))
        elif isinstance(got, AdminError):
            pending = got.code in _NOT_REACHED
            out.append(HiveResult(hive, "pending" if pending else "error", error_code=got.code,
                                  error_detail=got.detail))
        else:
            version = got.get("version")
            out.append(HiveResult(hive, "ok", version=version if isinstance(version, int) else None,
                                  applied=bool(got.get("applied"))))
    return out


def summary(results: list[HiveResult]) -> dict[str, Any]:
    """The collection part of the answer: per-hive results, the pending hives, and the answer's status."""
    pending = [r.hive for r in results if r.status == "pending"]
    return {"hives": [r.to_json() for r in results], "pending": pending,
            "status": "sync_pending" if pending else "ok"}


class GlobalStore(Protocol):
    """Where a hive keeps its global document (:class:`FileGlobalStore`, or a ConfigMap in a cluster)."""

    where: str
    """What the store is, for messages (a path, a ConfigMap and key)."""

    async def load(self) -> GlobalDoc:
        """The document held (version 0 when there is none yet); a damaged one is an AdminError, never 0."""
        ...

    async def save(self, doc: GlobalDoc, based_on: int) -> None:
        """Write ``doc`` whole or not at all, only if the held version is still ``based_on`` (else
        ``BUSY``: someone else changed it since it was read)."""
        ...

    def locked(self) -> AbstractAsyncContextManager[None]:
        """Exclude every other writer of this hive's global config while the block runs."""
        ...


class FileGlobalStore:
    """The global document of one local hive, in a file written whole (temp file + rename) or not at
    all; its one admin process is the only writer, so an asyncio lock excludes the others."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock = asyncio.Lock()

    async def load(self) -> GlobalDoc:
        return self._load()

    def _load(self) -> GlobalDoc:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return GlobalDoc()
        except OSError as err:
            raise AdminError("STATE_WRITE_FAILED", f"cannot read {self.path}: {err.strerror or err}") from err
        try:
            return GlobalDoc.from_json(json.loads(raw), str(self.path))
        except ValueError as err:  # a damaged file must not make a worker go back to version 0
            raise AdminError("STATE_WRITE_FAILED", f"{err}; fix or remove the file") from err

    async def save(self, doc: GlobalDoc, based_on: int) -> None:
        held = self._load().version
        if held != based_on:
            raise AdminError("BUSY", f"{self.path} holds version {held}, not {based_on}: it changed since it was "
                                     "read; nothing was written")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**doc.to_json(), "saved_at_ms": int(time.time() * 1000)}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:
            raise AdminError("STATE_WRITE_FAILED", f"cannot write {self.path}: {err.strerror or err}") from err

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        async with self._lock:
            yield


@dataclass(slots=True)
class GlobalConfig:
    """The global config of one hive: where it is kept (which also orders its changes)."""

    store: GlobalStore
    applied: Callable[[int], Awaitable[None]] | None = None
    """Told each version once it is applied here and recorded (a cluster annotates the Hive with it)."""


async def _mark(gc: GlobalConfig, version: int) -> None:
    """Tell :attr:`GlobalConfig.applied` (a failure there is logged: the version is applied and recorded)."""
    if gc.applied is None:
        return
    try:
        await gc.applied(version)
    except AdminError as err:
        log.warning("global config version %d is applied and recorded, but could not be marked: %s", version, err)


async def _apply_lists(ctx: Context, routes: list[dict[str, Any]] | None, vpns: list[dict[str, Any]] | None) -> None:
    config = ctx.route_config()
    for subsystem, items in (("routes", routes), ("vpn", vpns)):
        if items is None:
            continue
        reply = await config.apply(subsystem, items, 0)
        if reply.get("status") != "ok":
            raise AdminError("CONFIG_FAILED", f"the router refused the global {subsystem}: "
                                              f"{reply.get('error_code')}: {reply.get('error_detail')}")


async def apply_offered(ctx: Context, gc: GlobalConfig, offered: GlobalDoc) -> dict[str, Any]:
    """Apply ``offered`` here if it is newer than what this hive holds; never go back."""
    async with gc.store.locked():
        held = await gc.store.load()
        if not is_newer(held, offered.version):
            return {"status": "ok", "applied": False, "version": held.version,
                    "reason": f"version {offered.version} is not above the applied {held.version}"}
        async with ctx.route_lock(ctx.backend.hive_id):  # not between the read and write of a local edit
            await _apply_lists(ctx, offered.routes, offered.vpns)
        await gc.store.save(merged(held, offered.version, offered.routes, offered.vpns), held.version)
        await _mark(gc, offered.version)
    log.info("global config version %d applied (was %d)", offered.version, held.version)
    return {"status": "ok", "applied": True, "version": offered.version, "previous_version": held.version}


def _to_doc(p: GlobalConfigParams) -> GlobalDoc:
    return GlobalDoc(p.version, None if p.routes is None else [r.model_dump(mode="json") for r in p.routes],
                     None if p.vpns is None else [v.model_dump(mode="json") for v in p.vpns])


async def _mother_of_this_hive(ctx: Context) -> str | None:
    mother = (await ctx.backend.hive_info()).get("mother_hive")
    return mother if isinstance(mother, str) and mother else None


async def apply_global_config(ctx: Context, target: str, p: GlobalConfigParams, call: Call) -> dict[str, Any]:
    """A worker takes its mother's global config (``ADMIN_COMMAND`` from ``SY.admin@<mother>`` only)."""
    gc = ctx.global_config
    if gc is None:
        raise AdminError("NOT_IMPLEMENTED", "this admin API keeps no global config")
    mother = await _mother_of_this_hive(ctx)
    if mother is None or call.actor != remote.admin_of(mother):
        raise AdminError("FORBIDDEN", f"the global config is taken only from this hive's mother's SY.admin "
                                      f"({remote.admin_of(mother) if mother else 'none: no spec.motherHive'}), "
                                      f"not from {call.actor}")
    return await apply_offered(ctx, gc, _to_doc(p))


async def get_global_config(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    gc = ctx.global_config
    if gc is None:
        raise AdminError("NOT_IMPLEMENTED", "this admin API keeps no global config")
    return {"status": "ok", "hive": ctx.backend.hive_id, **(await gc.store.load()).to_json()}


async def put_global(ctx: Context, gc: GlobalConfig, requested: int | None, routes: list[dict[str, Any]] | None,
                     vpns: list[dict[str, Any]] | None,
                     apply_here: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """A global change on the mother: a version, the local apply, the record, then every hive.

    A change of neither list (an empty body: ``ok``, as in the original) takes no version."""
    if routes is None and vpns is None:
        return {**await apply_here(), "global_version": (await gc.store.load()).version, "hives": [], "pending": []}
    async with gc.store.locked():
        held = await gc.store.load()
        version = next_version(held.version, requested)
        doc = merged(held, version, routes, vpns)
        check_deliverable(doc)
        out = await apply_here()
        await gc.store.save(doc, held.version)
        await _mark(gc, version)
    hives = await wan.known_hives(ctx.link, await ctx.backend.remote_hives()) - {ctx.backend.hive_id}
    answers = await fan_out(ctx, hives, doc)
    results = collect(hives, answers)
    done = summary(results)
    out = {**out, "global_version": version, "hives": done["hives"], "pending": done["pending"],
           "status": done["status"]}
    failed = [r for r in results if r.status == "error"]
    if failed:
        raise AdminError("CONFIG_BROADCAST_FAILED",
                         "applied here, refused by " + ", ".join(f"{r.hive} ({r.error_code}: {r.error_detail})"
                                                                 for r in failed), payload=out)
    return out


async def fan_out(ctx: Context, hives: Iterable[str], doc: GlobalDoc) -> dict[str, dict[str, Any] | AdminError]:
    """Send ``doc`` to every hive at once; the answers that came within :data:`COLLECT_TIMEOUT`."""
    answers: dict[str, dict[str, Any] | AdminError] = {}

    async def one(hive: str) -> None:
        try:
            answers[hive] = await remote.relay(ctx.link, hive, "apply_global_config", doc.to_json(),
                                               timeout=COLLECT_TIMEOUT)
        except AdminError as err:
            answers[hive] = err

    tasks = [asyncio.create_task(one(h), name=f"global-config-to-{h}") for h in sorted(set(hives))]
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=COLLECT_TIMEOUT + 1.0)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return answers


async def follow_mother(ctx: Context, gc: GlobalConfig, mother: str, interval: float = PULL_INTERVAL,
                        leader: Callable[[], Awaitable[bool]] | None = None) -> None:
    """A worker's catch-up loop: ask the mother for its global config and apply what is newer, until cancelled.

    With ``leader`` (several admin replicas of one hive), a round asks only while it answers True, so
    one replica follows at a time; the others take over when it stops."""
    last_problem: str | None = None
    while True:
        try:
            if leader is not None and not await leader():
                await asyncio.sleep(interval)
                continue
            doc = await remote.relay(ctx.link, mother, "get_global_config", {}, timeout=max(interval, 5.0))
            offered = GlobalDoc.from_json(doc, f"{remote.admin_of(mother)}'s global config")
            if is_newer(await gc.store.load(), offered.version):
                await apply_offered(ctx, gc, offered)
            if last_problem is not None:
                log.info("global config: %s reached again", remote.admin_of(mother))
            last_problem = None
        except (AdminError, ValueError) as err:
            problem = f"{err}"
            if problem != last_problem:
                log.warning("global config: cannot follow %s (%s); will ask again every %g s",
                            remote.admin_of(mother), problem, interval)
            last_problem = problem
        await asyncio.sleep(interval)
