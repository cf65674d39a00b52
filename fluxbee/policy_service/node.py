"""SY.policy as a node: the hive's policy region writer, answering the admin API's ``POLICY_*`` requests.

Requests are system messages to ``SY.policy@<hive>`` (answers ``<msg>_RESPONSE``):

=================  ==========================================================  =================
message            payload                                                     from
=================  ==========================================================  =================
POLICY_COMPILE     ``{rego, entrypoint?, data?, version?, apply?}``            SY.admin (here or mother)
POLICY_APPLY       ``{version?}`` (the staged one)                             SY.admin (here or mother)
POLICY_ROLLBACK    ``{version?}`` (an applied one; default the previous)       SY.admin (here or mother)
POLICY_TAKE        ``{version?, sha256, size, engine, origin?, apply?}``       SY.admin (here or mother)
POLICY_PREPARE     ``{rego, entrypoint?, data?}``: compile for another hive    SY.admin (here)
POLICY_ARTEFACT_GET ``{version | sha256, offset, length}``: one chunk          any SY.* node
POLICY_CHECK       ``{rego?, input?, data?, entrypoint?, against?}``           any SY.* node
POLICY_GET         ``{}``: current (with its Rego), staged, versions            any SY.* node
POLICY_STATUS      ``{}``: the same without Rego, the last apply, the router's  any SY.* node
=================  ==========================================================  =================

Who sent a request is the name the router stamped on it (``routing.src_l2_name``), proven by the
sender's claim token: nothing is believed because of a name inside a payload.  Changes come only
from ``SY.admin`` of this hive or of its mother hive (an apply made on the mother reaches every
hive's SY.policy over the links).

The mother compiles once: the other hives get ``POLICY_TAKE`` (what to take: the version, the
SHA-256 and size of the serialised artefact, its engine) and fetch the bytes from the asking hive's
SY.policy with ``POLICY_ARTEFACT_GET`` in chunks that fit in a frame (:mod:`.transfer` has the
checks and error codes); a worker's catch-up pull reads the same fields from its mother's
``POLICY_GET`` answer (``current``) every :data:`FOLLOW_S` seconds.  Answers are
``{status: "ok", ...}`` or ``{status: "error", error_code, error_detail, ...}``; a compile error
carries ``line`` and ``column``.  A write naming one other hive is compiled here too
(``POLICY_PREPARE``: nothing written, no version taken, the artefact held in memory, the newest
:data:`TRANSIT_KEPT`) and taken there under that hive's next version, fetched by its ``sha256``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fluxbee.dataplane import wire
from fluxbee.dataplane.policy import TARGET_ENTRYPOINT, Artefact
from fluxbee.dataplane.sdk import FrameTooLargeError, NodeConfig, NodeSender, SdkError, UnreachableError, connect
from fluxbee.dataplane.shm.policy import PolicyRegion, artefact_digest
from fluxbee.dataplane.wire import Message
from fluxbee.policy_service.lifecycle import CompileRequest, Lifecycle, PolicyServiceError
from fluxbee.policy_service.store import PolicyStore, Versioned
from fluxbee.policy_service.transfer import Announced, Ask, fetch, serve_chunk

log = logging.getLogger(__name__)

NODE_NAME = "SY.policy"
CHANGES = frozenset({"POLICY_COMPILE", "POLICY_APPLY", "POLICY_ROLLBACK", "POLICY_TAKE"})
READS = frozenset({"POLICY_CHECK", "POLICY_GET", "POLICY_STATUS", "POLICY_ARTEFACT_GET", "POLICY_PREPARE"})
TRANSIT_KEPT = 4
"""Artefacts compiled for other hives (``POLICY_PREPARE``) held for their fetch."""
CHUNK_TIMEOUT = 10.0
"""How long a taker waits for one POLICY_ARTEFACT_GET answer before calling the fetch failed."""
UNREACHABLE_TRIES = 4
"""Tries of a chunk request whose destination the router cannot reach (a link just made or remade)."""
RELOAD_TIMEOUT = 10.0
"""How long an apply waits for the router's OPA_RELOAD_RESPONSE before calling it ``pending``."""
HEARTBEAT_S = 2.0
FOLLOW_S = 3.0
"""How often a worker's SY.policy asks its mother's for the current policy."""


def state_dir(run_dir: Path) -> Path:
    return run_dir / "policy"


class RouterPublisher:
    """Writes the hive's policy region and tells the router (``OPA_RELOAD``), then reports its answer."""

    def __init__(self, sender: NodeSender, region: PolicyRegion) -> None:
        self.sender = sender
        self.region = region

    async def publish(self, item: Versioned) -> dict[str, Any]:
        raw = item.artefact.to_bytes()
        digest = artefact_digest(raw)
        try:
            self.region.publish(raw, item.version, digest, engine=item.artefact.engine,
                                entrypoints=item.artefact.entrypoints)
        except ValueError as err:
            return {"status": "error", "error": f"not written to the policy region: {err}"}
        try:
            reply = await self.sender.request(self.sender.router_uuid, {"version": item.version,
                                                                        "hash": f"sha256:{digest}"},
                                              msg_type=wire.TYPE_SYSTEM, msg=wire.OPA_RELOAD, timeout=RELOAD_TIMEOUT)
        except SdkError as err:  # the router polls the region too: it is in place, only unconfirmed
            return {"status": "pending", "error": f"no OPA_RELOAD answer from the router: {err}",
                    "region_version": item.version}
        body = reply.payload if isinstance(reply.payload, dict) else {}
        # a router that took it says so, with the version it now runs (its answer carries its policy
        # description, whose status is "loaded")
        if body.get("status") in ("ok", "loaded") and body.get("version") == item.version:
            return {"status": "applied", "routers": [body]}
        return {"status": "error", "error": body.get("error_detail") or body.get("error_code") or "refused",
                "error_code": body.get("error_code"), "routers": [body]}

    async def router_policy(self) -> dict[str, Any] | None:
        try:
            status = await self.sender.router_status(timeout=5.0)
        except SdkError:
            return None
        policy = status.get("policy")
        return policy if isinstance(policy, dict) else None


def _int_or_none(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PolicyServiceError("INVALID_REQUEST", f"{field} must be a positive integer")
    return value


def _str_or(value: Any, field: str, default: str | None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise PolicyServiceError("INVALID_REQUEST", f"{field} must be a non-empty string")
    return value


def _data(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise PolicyServiceError("INVALID_REQUEST", "data must be a JSON object")


class PolicyService:
    """One hive's SY.policy: :meth:`run` until ``stop`` is set."""

    def __init__(self, hive_id: str, run_dir: Path, mother_hive: str | None = None) -> None:
        self.hive_id = hive_id
        self.run_dir = run_dir
        self.mother_hive = mother_hive
        self.store = PolicyStore(state_dir(run_dir))
        self.lifecycle: Lifecycle | None = None
        self._sender: NodeSender | None = None
        self._served: tuple[int, bytes] | None = None
        """The last artefact served in chunks (a version's artefact never changes once given out)."""
        self._transit: dict[str, bytes] = {}

    def _artefact_bytes(self, version: int | None, sha256: str | None) -> bytes | None:
        if version is None:
            return self._transit.get(sha256 or "")
        if self._served is not None and self._served[0] == version:
            return self._served[1]
        assert self.lifecycle is not None
        item = self.lifecycle.kept(version)
        if item is None:
            return None
        self._served = (version, item.artefact.to_bytes())
        return self._served[1]

    @property
    def sender(self) -> NodeSender:
        assert self._sender is not None
        return self._sender

    def may_change(self, sender: str | None) -> bool:
        allowed = {f"SY.admin@{self.hive_id}"} | ({f"SY.admin@{self.mother_hive}"} if self.mother_hive else set())
        return sender in allowed

    async def run(self, stop: asyncio.Event) -> None:
        sender, receiver = await connect(NodeConfig(name=NODE_NAME, run_dir=self.run_dir, persistent=True))
        self._sender = sender
        region = PolicyRegion.create(self.hive_id, owner_uuid=sender.uuid, run_dir=self.run_dir,
                                     owner_name=NODE_NAME)
        self.lifecycle = Lifecycle(self.store, RouterPublisher(sender, region), self.hive_id)
        tasks = [asyncio.create_task(self._heartbeat(region), name="policy-heartbeat"),
                 asyncio.create_task(self._republish(), name="policy-republish")]
        if self.mother_hive:
            tasks.append(asyncio.create_task(self._follow_mother(sender), name="policy-follow-mother"))

        async def serve() -> None:
            async for message in receiver:
                await self.handle(sender, message)

        serving = asyncio.create_task(serve(), name="policy-serve")
        stopper = asyncio.create_task(stop.wait(), name="policy-stop")
        try:
            await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (serving, stopper, *tasks):
                t.cancel()
            for t in (serving, stopper, *tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await sender.close()
            region.close()
            self.lifecycle.close()
        if serving.done() and not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]

    async def _heartbeat(self, region: PolicyRegion) -> None:
        while True:
            region.heartbeat()
            await asyncio.sleep(HEARTBEAT_S)

    async def _republish(self) -> None:
        assert self.lifecycle is not None
        try:
            async with self.lifecycle.lock:
                await self.lifecycle.republish()
        except PolicyServiceError as err:
            log.error("the current policy could not be published again at start: %s", err.detail)

    async def _follow_mother(self, sender: NodeSender) -> None:
        """Every :data:`FOLLOW_S`, ask the mother's SY.policy for its current policy and take a newer one
        (its compiled artefact, fetched in chunks)."""
        assert self.lifecycle is not None and self.mother_hive is not None
        mother = f"{NODE_NAME}@{self.mother_hive}"
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                reply = await sender.request(mother, {}, msg_type=wire.TYPE_SYSTEM, msg="POLICY_GET", timeout=10.0)
            except SdkError as err:  # down, unlinked: asked again next time
                log.debug("%s not asked for its policy: %s", mother, err)
                continue
            if reply.routing.src_l2_name != mother or not isinstance(reply.payload, dict) \
                    or reply.payload.get("status") != "ok" or not isinstance(reply.payload.get("current"), dict):
                continue
            try:
                want = Announced.parse(reply.payload["current"])
                if want.version is None or want.version <= self.store.last_version():
                    continue
                async with self.lifecycle.lock:
                    taken = await self.lifecycle.take(want, self._getter(sender, self.mother_hive, want), apply=True)
            except PolicyServiceError as err:
                log.error("the mother's policy could not be taken: %s: %s", err.code, err.detail)
                continue
            except Exception:  # a bad answer or state must not end the catch-up for good
                log.exception("the mother's policy could not be taken")
                continue
            log.info("policy version %d taken from %s (%d bytes)", taken["version"], mother, want.size)

    def _getter(self, sender: NodeSender, hive: str, want: Announced) -> Callable[[], Awaitable[Artefact]]:
        """Fetches ``want`` from ``SY.policy@hive``; only that node's answers are believed."""
        source = f"{NODE_NAME}@{hive}"

        async def ask(body: dict[str, Any]) -> dict[str, Any]:
            for attempt in range(1, UNREACHABLE_TRIES + 1):
                try:
                    reply = await sender.request(source, body, msg_type=wire.TYPE_SYSTEM, msg="POLICY_ARTEFACT_GET",
                                                 timeout=CHUNK_TIMEOUT)
                    break
                except UnreachableError as err:  # a route not (yet, or any more) there: a moment, then again
                    if attempt == UNREACHABLE_TRIES:
                        raise PolicyServiceError("FETCH_FAILED", f"{source} cannot be reached: {err}; nothing "
                                                 "was taken") from err
                    await asyncio.sleep(0.5 * attempt)
                except SdkError as err:
                    raise PolicyServiceError("FETCH_FAILED", f"{source} did not answer POLICY_ARTEFACT_GET at "
                                             f"offset {body.get('offset')}: {err}; nothing was taken") from err
            if reply.routing.src_l2_name != source or not isinstance(reply.payload, dict):
                raise PolicyServiceError("ARTEFACT_MISMATCH", f"an answer from {reply.routing.src_l2_name} "
                                         f"instead of {source}")
            return reply.payload

        asker: Ask = ask

        async def get() -> Artefact:
            return await fetch(want, asker)

        return get

    async def handle(self, sender: NodeSender, msg: Message) -> None:
        action = msg.meta.msg
        if msg.meta.type != wire.TYPE_SYSTEM or action not in CHANGES | READS:
            return
        try:
            payload = await self.answer(action, msg.routing.src_l2_name, msg.payload)
        except PolicyServiceError as err:
            payload = err.payload()
        except Exception as err:  # a bug must answer, not leave the admin API to its timeout
            log.exception("%s failed", action)
            payload = {"status": "error", "error_code": "INTERNAL_ERROR", "error_detail": str(err)}
        try:
            try:
                await sender.reply(msg, payload, msg_type=wire.TYPE_SYSTEM, msg=f"{action}_RESPONSE")
            except FrameTooLargeError as err:  # say so rather than leave the asker to its timeout
                await sender.reply(msg, {"status": "error", "error_code": "RESPONSE_TOO_LARGE",
                                         "error_detail": f"the {action}_RESPONSE answer does not fit in a frame "
                                                         f"({err.size} > {err.max_size} bytes)"},
                                   msg_type=wire.TYPE_SYSTEM, msg=f"{action}_RESPONSE")
        except Exception as err:
            log.warning("%s_RESPONSE to %s lost: %s", action, msg.routing.src_l2_name, err)

    async def answer(self, action: str, sender: str | None, body: Any) -> dict[str, Any]:
        lc = self.lifecycle
        assert lc is not None
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise PolicyServiceError("INVALID_REQUEST", f"{action} payload must be a JSON object")
        if not (sender or "").startswith("SY."):
            raise PolicyServiceError("FORBIDDEN", f"{sender or '(no name)'} may not ask SY.policy")
        if action in CHANGES and not self.may_change(sender):
            raise PolicyServiceError("FORBIDDEN", f"{sender} may not change the policy of {self.hive_id}")
        if action == "POLICY_CHECK":  # reads only: no lock held while it compiles
            rego = body.get("rego")
            if rego is not None and not isinstance(rego, str):
                raise PolicyServiceError("INVALID_REQUEST", "rego must be a string")
            against = _str_or(body.get("against"), "against", "staged" if body.get("rego") is None else "request")
            if rego is None and against not in ("staged", "current"):
                raise PolicyServiceError("INVALID_REQUEST", "against must be staged or current")
            entrypoint = _str_or(body.get("entrypoint"), "entrypoint", TARGET_ENTRYPOINT)
            assert against is not None and entrypoint is not None
            return await lc.check(rego, against, body.get("input"), _data(body.get("data")), entrypoint)
        if action == "POLICY_PREPARE":  # compiles like a check; holds the artefact for another hive's fetch
            if sender != f"SY.admin@{self.hive_id}":
                raise PolicyServiceError("FORBIDDEN", f"{sender} may not compile for another hive here")
            rego = body.get("rego")
            if not isinstance(rego, str) or not rego.strip():
                raise PolicyServiceError("INVALID_REQUEST", "rego_missing: rego must be a non-empty string")
            entrypoint = _str_or(body.get("entrypoint"), "entrypoint", TARGET_ENTRYPOINT)
            assert entrypoint is not None
            artefact, compile_ms = await lc.prepare(CompileRequest(rego=rego, entrypoint=entrypoint,
                                                                   data=_data(body.get("data"))))
            raw = artefact.to_bytes()
            sha = hashlib.sha256(raw).hexdigest()
            self._transit.pop(sha, None)
            self._transit[sha] = raw
            while len(self._transit) > TRANSIT_KEPT:
                del self._transit[next(iter(self._transit))]
            return {"status": "ok", "hive": self.hive_id, "sha256": sha, "size": len(raw), "engine": artefact.engine,
                    "module_sha256": artefact.sha256, "compile_time_ms": compile_ms, "origin": "compile"}
        if action == "POLICY_ARTEFACT_GET":  # reads files written whole (renamed): no lock
            return serve_chunk(self._artefact_bytes, body)
        async with lc.lock:
            if action == "POLICY_COMPILE":
                rego = body.get("rego")
                if not isinstance(rego, str) or not rego.strip():
                    raise PolicyServiceError("INVALID_REQUEST", "rego_missing: rego must be a non-empty string")
                entrypoint = _str_or(body.get("entrypoint"), "entrypoint", TARGET_ENTRYPOINT)
                assert entrypoint is not None
                req = CompileRequest(rego=rego, entrypoint=entrypoint, data=_data(body.get("data")),
                                     version=_int_or_none(body.get("version"), "version"))
                return await lc.compile(req, apply=bool(body.get("apply")))
            if action == "POLICY_APPLY":
                return await lc.apply(_int_or_none(body.get("version"), "version"))
            if action == "POLICY_TAKE":
                source_hive = (sender or "").partition("@")[2]
                if source_hive == self.hive_id or not source_hive:
                    raise PolicyServiceError("INVALID_REQUEST", "POLICY_TAKE takes another hive's artefact; "
                                             "this hive's own are compiled here")
                want = Announced.parse(body)
                return await lc.take(want, self._getter(self.sender, source_hive, want),
                                     apply=bool(body.get("apply")))
            if action == "POLICY_ROLLBACK":
                return await lc.rollback(_int_or_none(body.get("version"), "version"))
            return await lc.describe(with_source=action == "POLICY_GET")


def serve(hive_id: str, run_dir: Path, mother_hive: str | None) -> None:
    """Run SY.policy until SIGINT/SIGTERM."""
    import signal

    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await PolicyService(hive_id, run_dir, mother_hive).run(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
