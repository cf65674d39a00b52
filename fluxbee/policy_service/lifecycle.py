"""The policy lifecycle of one hive: compile (stage), apply, rollback, check, and what is in force.

:class:`Lifecycle` holds the rules; the node (:mod:`fluxbee.policy_service.node`) only carries
requests to it, and a :class:`Publisher` carries an applied artefact to the hive's routers.

* Versions strictly increase and are written down (:class:`~fluxbee.policy_service.store.PolicyStore`)
  before use.  A compile that fails takes no version; ``check`` never takes one.
* ``compile`` stages; ``apply`` makes the staged artefact current, then publishes it; the answer
  carries the routers' result (``router``: ``applied``, ``error`` with the router's reason, or
  ``pending`` when no router confirmed in time).
* ``rollback`` publishes an earlier artefact **as a new version** (origin ``rollback:<v>``): the
  routers and the region only take versions above the one they run, so going back is a step
  forward in version with the old artefact.  Without ``version`` it restores the applied version
  before the current one; with ``version`` that applied version (any of the newest kept).
* At start the current artefact is published again (a restarted router or a fresh region gets it).
* Another hive's compiled artefact is taken as it is (:meth:`Lifecycle.take`, fed by
  :mod:`.transfer`): the mother compiles once and every hive runs the same bytes under the same
  version, whatever compiler it has itself.  A worker hive follows its mother: a mother's current
  version above every version the worker gave out is fetched and applied, so a worker that was down
  or cut off during an apply catches up once it reaches its mother again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fluxbee.dataplane.policy import (
    ALLOW_ENTRYPOINT,
    TARGET_ENTRYPOINT,
    Artefact,
    CompileError,
    Decision,
    EvaluationError,
    PolicyLoadError,
    compile_policy,
    load,
)
from fluxbee.policy_service.store import PolicyStore, StoreError, Versioned

if TYPE_CHECKING:
    from fluxbee.policy_service.transfer import Announced

log = logging.getLogger(__name__)
T = TypeVar("T")


class PolicyServiceError(Exception):
    """A refused request: ``code`` is what the admin API answers with, ``extra`` goes into the reply."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        return {"status": "error", "error_code": self.code, "error_detail": self.detail, **self.extra}


class Publisher(Protocol):
    async def publish(self, item: Versioned) -> dict[str, Any]:
        """Carry ``item`` to the hive's routers; the routers' result (``status``: ``applied`` |
        ``error`` | ``pending``, with ``error`` and per-router detail)."""
        ...

    async def router_policy(self) -> dict[str, Any] | None:
        """What the hive's router says it runs (its status's ``policy``), None when it cannot say."""
        ...


@dataclass(frozen=True, slots=True)
class CompileRequest:
    rego: str
    entrypoint: str = TARGET_ENTRYPOINT
    allow_entrypoint: str = ALLOW_ENTRYPOINT
    data: Mapping[str, Any] | None = None
    version: int | None = None
    """A version chosen by the mother hive for every hive (above this hive's last one)."""


def compile_error(err: CompileError) -> PolicyServiceError:
    return PolicyServiceError("COMPILE_ERROR", err.message, line=err.line, column=err.column,
                              compiler=err.compiler or None)


def _compile(req: CompileRequest) -> Artefact:
    """Runs on the policy thread.  The compiler's own exception (whose traceback holds regorus engines,
    which must be dropped on the thread that made them) is freed here; a plain error leaves."""
    try:
        return compile_policy(req.rego, data=req.data, target_entrypoint=req.entrypoint,
                              allow_entrypoint=req.allow_entrypoint)
    except CompileError as err:
        failure = compile_error(err)
    raise failure


def _evaluate(artefact: Artefact, input_doc: dict[str, Any]) -> Decision:
    """Runs on the policy thread; the engine is made and dropped there (see :func:`_compile`)."""
    try:
        return load(artefact, engine="regorus").evaluate(input_doc)
    except (EvaluationError, PolicyLoadError) as err:
        failure = PolicyServiceError(err.code, str(err))
    raise failure


class Lifecycle:
    """One hive's policy: one request at a time (``lock``)."""

    def __init__(self, store: PolicyStore, publisher: Publisher, hive_id: str) -> None:
        self.store = store
        self.publisher = publisher
        self.hive_id = hive_id
        self.lock = asyncio.Lock()
        self.last_result: dict[str, Any] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        """Compiles and evaluations, one at a time, off the event loop: regorus engines are bound to
        the thread that made them, and one ``opa build`` at a time is plenty."""

    async def _on_policy_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _files(self) -> tuple[Versioned | None, Versioned | None]:
        try:
            return self.store.current(), self.store.staged()
        except StoreError as err:
            raise PolicyServiceError("STATE_READ_FAILED", str(err)) from err

    async def compile(self, req: CompileRequest, *, apply: bool) -> dict[str, Any]:
        """Compile (in a worker thread: ``opa build`` takes a while), then take a version and stage it;
        with ``apply`` make it current at once.

        A compile-and-apply pinned to the version this hive already runs, of the same policy (a retried
        request), is answered as done, with the router's policy: nothing compiled or published again.
        The same version with another policy is still refused (VERSION_MISMATCH)."""
        if req.version is not None and apply:
            current, _ = self._files()
            if current is not None and current.version == req.version and _same_policy(current, req):
                router = await self.publisher.router_policy()
                done = router is not None and router.get("version") == current.version
                return {"status": "ok", "hive": self.hive_id, "version": current.version, "compile_time_ms": 0,
                        **_sizes(current), "staged": False, "applied": True, "already_current": True,
                        "router": {"status": "applied" if done else "pending",
                                   "routers": [router] if router is not None else []}}
        started = time.perf_counter()
        artefact = await self._on_policy_thread(_compile, req)
        compile_ms = int((time.perf_counter() - started) * 1000)
        try:
            version = self.store.take_version(req.version)
        except ValueError as err:
            raise PolicyServiceError("VERSION_MISMATCH", str(err), last_version=self.store.last_version()) from err
        except (OSError, StoreError) as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version not taken: {err}") from err
        item = Versioned(version=version, artefact=artefact, created_at_ms=int(time.time() * 1000))
        try:
            self.store.stage(item)
        except OSError as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version {version} compiled but not staged: {err}") from err
        out = {"status": "ok", "hive": self.hive_id, "version": version, "compile_time_ms": compile_ms,
               **_sizes(item), "staged": True}
        if apply:
            out.update(await self._make_current(item, staged=True))
        return out

    async def apply(self, version: int | None) -> dict[str, Any]:
        _, staged = self._files()
        if staged is None:
            raise PolicyServiceError("NOTHING_STAGED", "no compiled policy is staged; compile one first")
        if version is not None and version != staged.version:
            raise PolicyServiceError("VERSION_MISMATCH", f"version {version} is not the staged one "
                                     f"({staged.version})", staged_version=staged.version)
        return {"status": "ok", "hive": self.hive_id, "version": staged.version, **_sizes(staged),
                **await self._make_current(staged, staged=True)}

    async def rollback(self, version: int | None) -> dict[str, Any]:
        current, _ = self._files()
        try:
            source = self.store.previous() if version is None else self.store.applied(version)
        except StoreError as err:
            raise PolicyServiceError("STATE_READ_FAILED", str(err)) from err
        if source is None:
            kept = self.store.applied_versions()
            raise PolicyServiceError("NO_BACKUP", "no earlier applied version to restore" if version is None else
                                     f"version {version} is not among the applied versions kept ({kept})",
                                     applied_versions=kept)
        if current is not None and source.version == current.version:
            raise PolicyServiceError("VERSION_MISMATCH", f"version {version} is the current one")
        try:
            new_version = self.store.take_version()
        except (OSError, StoreError) as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version not taken: {err}") from err
        item = Versioned(version=new_version, artefact=source.artefact, created_at_ms=int(time.time() * 1000),
                         origin=f"rollback:{source.version}")
        return {"status": "ok", "hive": self.hive_id, "version": new_version, "restored_version": source.version,
                **_sizes(item), **await self._make_current(item, staged=False)}

    async def _make_current(self, item: Versioned, *, staged: bool) -> dict[str, Any]:
        try:
            self.store.make_current(item)
            if staged:
                self.store.unstage()
        except OSError as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version {item.version} not made current: {err}") from err
        result = await self.publisher.publish(item)
        self.last_result = {"version": item.version, "at_ms": int(time.time() * 1000), **result}
        return {"applied": True, "router": result}

    async def take(self, want: Announced, get: Callable[[], Awaitable[Artefact]], *, apply: bool) -> dict[str, Any]:
        """Take another hive's compiled artefact (announced as ``want``) under its version: ``get``
        fetches and verifies the bytes; nothing is written before it returns.  With ``apply`` it becomes
        current (a staged copy of the same artefact is applied without fetching again), else staged.

        An announcement of what this hive already has (the same version and digest, current or staged)
        is answered as done; the same version with other bytes, or a lower one, is VERSION_MISMATCH:
        versions only grow."""
        if want.version is not None:  # None: compiled for this hive alone, taken under its next version
            had = await self._already(want, apply=apply)
            if had is not None:
                return had
        last = self._last_version()
        if want.version is not None and want.version <= last:
            raise PolicyServiceError("VERSION_MISMATCH", f"version {want.version} is not greater than {last}, the "
                                     "last one given out here", last_version=last)
        artefact = await get()
        try:
            version = self.store.take_version(want.version)
        except ValueError as err:
            raise PolicyServiceError("VERSION_MISMATCH", str(err), last_version=self.store.last_version()) from err
        except (OSError, StoreError) as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version not taken: {err}") from err
        item = Versioned(version=version, artefact=artefact, created_at_ms=int(time.time() * 1000),
                         origin=want.origin)
        out = {"status": "ok", "hive": self.hive_id, "version": version, **_sizes(item), "fetched": True}
        if apply:  # as on the mother: a compile-and-apply leaves nothing staged, a rollback keeps it
            return {**out, "staged": False,
                    **await self._make_current(item, staged=not want.origin.startswith("rollback:"))}
        try:
            self.store.stage(item)
        except OSError as err:
            raise PolicyServiceError("STATE_WRITE_FAILED", f"version {version} fetched but not staged: {err}") from err
        return {**out, "staged": True}

    async def _already(self, want: Announced, *, apply: bool) -> dict[str, Any] | None:
        """The answer to an announcement of what this hive already has (current, or staged), else None."""
        current, staged = self._files()
        if current is not None and current.version == want.version and _digest(current) == want.sha256:
            router = await self.publisher.router_policy()
            done = router is not None and router.get("version") == current.version
            return {"status": "ok", "hive": self.hive_id, "version": current.version, **_sizes(current),
                    "staged": False, "applied": True, "already_current": True,
                    "router": {"status": "applied" if done else "pending",
                               "routers": [router] if router is not None else []}}
        if staged is not None and staged.version == want.version and _digest(staged) == want.sha256:
            out = {"status": "ok", "hive": self.hive_id, "version": staged.version, **_sizes(staged),
                   "staged": True, "fetched": False}
            if apply:
                out.update(await self._make_current(staged, staged=True))
            return out
        return None

    async def prepare(self, req: CompileRequest) -> tuple[Artefact, int]:
        """Compile ``req`` for another hive: nothing is written and no version taken here.  The artefact
        and the compile time (ms)."""
        started = time.perf_counter()
        artefact = await self._on_policy_thread(_compile, req)
        return artefact, int((time.perf_counter() - started) * 1000)

    def _last_version(self) -> int:
        try:
            return self.store.last_version()
        except StoreError as err:
            raise PolicyServiceError("STATE_READ_FAILED", str(err)) from err

    def kept(self, version: int) -> Versioned | None:
        """This hive's artefact of ``version``: the current, the staged or an applied one kept."""
        current, staged = self._files()
        for item in (current, staged):
            if item is not None and item.version == version:
                return item
        try:
            return self.store.applied(version)
        except StoreError as err:
            raise PolicyServiceError("STATE_READ_FAILED", str(err)) from err

    async def republish(self) -> None:
        """Publish the current artefact again (at start)."""
        current, _ = self._files()
        if current is not None:
            result = await self.publisher.publish(current)
            self.last_result = {"version": current.version, "at_ms": int(time.time() * 1000), **result}
            log.info("policy version %d published again at start: %s", current.version, result.get("status"))

    async def check(self, rego: str | None, source: str, input_doc: Any, data: Mapping[str, Any] | None,
                    entrypoint: str) -> dict[str, Any]:
        """Validate ``rego`` (when given; else use the staged or current artefact) and, with an input,
        evaluate it with the regorus engine.  Takes no version and writes nothing."""
        if rego is not None:
            artefact = await self._on_policy_thread(_compile, CompileRequest(rego=rego, data=data,
                                                                             entrypoint=entrypoint))
            against = "request"
        else:
            current, staged = self._files()
            chosen = staged if source == "staged" else current
            if chosen is None:
                raise PolicyServiceError("NOTHING_STAGED" if source == "staged" else "NOT_FOUND",
                                         f"there is no {source} policy to check against")
            artefact = chosen.artefact
            against = f"{source}:{chosen.version}"
        out: dict[str, Any] = {"status": "ok", "hive": self.hive_id, "valid": True, "against": against,
                               "module_sha256": artefact.sha256, "engine": artefact.engine}
        if input_doc is not None:
            if not isinstance(input_doc, dict):
                raise PolicyServiceError("INVALID_REQUEST", "input must be a JSON object")
            decision = await self._on_policy_thread(_evaluate, artefact, input_doc)
            out["decision"] = {"target": decision.target, "allow": decision.allow, "engine": decision.engine}
        return out

    async def describe(self, *, with_source: bool) -> dict[str, Any]:
        current, staged = self._files()
        try:
            last = self.store.last_version()
        except StoreError as err:
            raise PolicyServiceError("STATE_READ_FAILED", str(err)) from err
        out: dict[str, Any] = {"status": "ok", "hive": self.hive_id, "last_version": last,
                               "current": current.summary() if current else None,
                               "staged": staged.summary() if staged else None,
                               "applied_versions": self.store.applied_versions()}
        if with_source:
            out["rego"] = current.artefact.source if current else None
            out["entrypoint"] = current.artefact.target_entrypoint if current else None
            out["data"] = dict(current.artefact.data) if current else None
        else:
            out["last_apply"] = self.last_result
            out["router"] = await self.publisher.router_policy()
        return out


def _same_policy(item: Versioned, req: CompileRequest) -> bool:
    """Whether ``req`` asks for the policy ``item`` was compiled from (source, entry point, data)."""
    a = item.artefact
    return a.source == req.rego and a.target_entrypoint == req.entrypoint and dict(a.data) == dict(req.data or {})


def _digest(item: Versioned) -> str:
    return item.hash.removeprefix("sha256:")


def _sizes(item: Versioned) -> dict[str, Any]:
    a = item.artefact
    return {"hash": item.hash, "sha256": _digest(item), "size": len(a.to_bytes()), "origin": item.origin,
            "module_sha256": a.sha256, "engine": a.engine,
            "wasm_size_bytes": len(a.wasm) if a.wasm is not None else None,
            "fallback_reason": a.fallback_reason}
