"""The routing-policy actions (``/opa/*``): carried to each hive's SY.policy, which keeps the lifecycle.

Writes (``opa_compile_apply``, ``opa_compile``, ``opa_apply``, ``opa_rollback``) go to one hive when
the body names it (``hive`` or ``target``, or the ``/hives/{h}/opa/...`` path), else to every hive
this one knows (itself, the registered ones, the ones its links reach): this hive first — a refusal
here (bad Rego, a version conflict) stops the change before any other hive hears of it — then the
others at once over the links.  The others do not compile: each gets ``POLICY_TAKE`` with what this
hive made (version, SHA-256 and size of the compiled artefact, engine; ``apply`` false for a compile
without apply, which the others stage) and its SY.policy fetches those exact bytes from this hive's
SY.policy in chunks, verifies them and stages or applies them under the same version.  An apply of
the staged version and a rollback reach the others the same way (a rollback is a new version holding
the earlier artefact).  A compile naming one other hive is compiled here as well
(``POLICY_PREPARE``: nothing written, no version taken here) and taken there under that hive's next
version.  The answer lists each hive's result in ``responses``; hives that did not answer in time,
or whose fetch was cut (``FETCH_FAILED``: the hive's catch-up pull takes it later), are named in
``pending_hives`` and the envelope's status is ``sync_pending`` (HTTP 202).

In a cluster (``Context.policies`` set) there is no SY.policy: compile-and-apply, rollback and the two
reads act on the hive's Policy resource (:mod:`fluxbee.admin.kube_policy`): a staging compile pins the
delivered version while the operator compiles the new one, apply unpins it, and ``check`` runs in the
admin process.

Reads (``opa_get_policy``, ``opa_get_status``, ``opa_get_decisions``) and ``opa_check`` are about
one hive (``?hive=``, default this one; another hive's through its admin API over the links).
``opa_check`` compiles in memory and evaluates an ``input``: it writes nothing and takes no version.

A Rego body (with its data) travels in one frame to the hive that compiles it: above
:data:`MAX_POLICY_BYTES` it is refused with 413 ``PAYLOAD_TOO_LARGE`` before anything is compiled or
written.  The compiled artefact reaches the other hives in chunks, whatever its size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import msgspec
from pydantic import Field

from fluxbee.admin import schemas as s
from fluxbee.admin import wan
from fluxbee.admin.actions.common import Call, Context, check_hive, record_change
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane import wire

POLICY_NODE = "SY.policy"
POLICY_TIMEOUT = 30.0
"""How long a hive's SY.policy may take (an ``opa build`` and the routers' reload included)."""
MAX_POLICY_BYTES = wire.PAYLOAD_BUDGET - 8 * 1024
"""Largest Rego plus data accepted (JSON bytes): one frame to every hive, with room for the envelope."""
_PASSED = frozenset({"COMPILE_ERROR", "VERSION_MISMATCH", "NOTHING_STAGED", "NO_BACKUP", "NOT_FOUND",
                     "INVALID_REQUEST", "FORBIDDEN", "OPA_ERROR", "POLICY_LOAD_ERROR", "STATE_WRITE_FAILED",
                     "STATE_READ_FAILED", "RESPONSE_TOO_LARGE", "ARTEFACT_MISMATCH", "ARTEFACT_TOO_LARGE",
                     "VERSION_NOT_FOUND", "BAD_OFFSET"})
_KIND = {"opa_compile_apply": "compile", "opa_compile": "compile", "opa_apply": "apply", "opa_rollback": "rollback"}

Hive = Field(default=None, min_length=1, max_length=64, description="One hive (\"broadcast\" or absent: every hive).")


class OpaWriteParams(s.Params):
    rego: str | None = Field(default=None, description="The Rego module (compile).")
    entrypoint: str | None = Field(default=None, min_length=3, max_length=200,
                                   description="The target rule (default router/target).")
    data: dict[str, Any] | None = Field(default=None, description="The policy's own data document.")
    version: int | None = Field(default=None, ge=1, description="apply: the staged version; rollback: the "
                                                                "applied version to restore.")
    hive: str | None = Hive
    target: str | None = Hive


class OpaCheckParams(s.Params):
    rego: str | None = Field(default=None, description="Rego to validate (default: the staged or current one).")
    entrypoint: str | None = Field(default=None, min_length=3, max_length=200)
    data: dict[str, Any] | None = None
    input: dict[str, Any] | None = Field(default=None, description="An input document to evaluate.")
    against: Literal["staged", "current"] | None = Field(default=None, description="Without rego: which policy.")


class OpaDecisionsParams(s.Params):
    limit: int | None = Field(default=None, ge=1, le=1000)
    after: int | None = Field(default=None, ge=0)


def _raise(reply: dict[str, Any], hive: str) -> None:
    code = str(reply.get("error_code") or "SERVICE_FAILED")
    detail = str(reply.get("error_detail") or code)
    extra = {k: v for k, v in reply.items() if k not in ("status", "error_code", "error_detail")}
    if code in _PASSED:
        raise AdminError(code, detail, payload={"hive": hive, **extra})
    raise AdminError("SERVICE_FAILED", f"{POLICY_NODE}@{hive}: {code}: {detail}", payload={"hive": hive, **extra})


async def _ask(ctx: Context, hive: str, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One request to ``SY.policy@hive``; its answer (``status`` ok or error) or AdminError when it cannot
    be reached (POLICY_UNAVAILABLE) or does not answer (TIMEOUT)."""
    try:
        _, reply = await ctx.link.request(f"{POLICY_NODE}@{hive}", payload, msg_type=wire.TYPE_SYSTEM, msg=msg,
                                          meta={}, ttl=16, timeout=POLICY_TIMEOUT)
    except AdminError as err:
        if err.code in ("NODE_NOT_FOUND", "UNREACHABLE"):
            raise AdminError("POLICY_UNAVAILABLE", f"{POLICY_NODE}@{hive} cannot be reached ({err.detail})") from err
        raise
    if not isinstance(reply, dict):
        raise AdminError("SERVICE_FAILED", f"{msg}_RESPONSE from {POLICY_NODE}@{hive} is not an object")
    return reply


def _scope(ctx: Context, target: str, p: OpaWriteParams) -> str | None:
    """The one hive a write is for, or None for every hive."""
    named = p.hive or p.target
    if named is None and target != ctx.backend.hive_id:
        named = target  # /hives/{h}/opa/... or ADMIN_COMMAND's target
    return None if named in (None, "broadcast") else named


async def _every_hive(ctx: Context) -> list[str]:
    """This hive, then every other it knows; a worker (a hive with a mother) only itself: the other
    hives' SY.policy take changes from their own admin and their mother's only."""
    if (await ctx.backend.hive_info()).get("mother_hive"):
        return [ctx.backend.hive_id]
    others = set(await ctx.backend.remote_hives()) | set((await wan.wan_view(ctx.link)).reachable)
    return [ctx.backend.hive_id, *sorted(others - {ctx.backend.hive_id})]


def _check_size(p: OpaWriteParams | OpaCheckParams) -> None:
    size = len(msgspec.json.encode({"rego": p.rego, "data": p.data}))
    if size > MAX_POLICY_BYTES:
        raise AdminError("PAYLOAD_TOO_LARGE", f"the policy and its data take {size} bytes; at most "
                                              f"{MAX_POLICY_BYTES} travel to a hive (nothing was compiled or written)")


async def _write(ctx: Context, target: str, p: OpaWriteParams, call: Call, action: str) -> dict[str, Any]:
    kind = _KIND[action]
    if kind == "compile":
        if p.rego is None or not p.rego.strip():
            raise AdminError("COMPILE_ERROR", "rego_missing: the body needs a non-empty rego", status=400)
        _check_size(p)
    scope = _scope(ctx, target, p)
    if scope is not None and scope != ctx.backend.hive_id:
        await _known(ctx, scope)
    first = scope or ctx.backend.hive_id
    msg, body = _request(action, p, version=p.version)

    async def work() -> dict[str, Any]:
        started = time.perf_counter()
        if first != ctx.backend.hive_id and kind == "compile":
            reply = await _compiled_here_taken_there(ctx, first, p, apply=action == "opa_compile_apply")
        else:
            reply = await _ask(ctx, first, msg, body)
        if reply.get("status") != "ok":
            _raise(reply, first)
        responses = [_response(first, reply)]
        expected = [first] if scope is not None else await _every_hive(ctx)
        version = reply.get("version")
        others = [h for h in expected if h != first]
        if others:
            # the others take what this hive made, byte for byte, under the same version
            follow = _take(reply, apply=kind != "compile" or action == "opa_compile_apply")
            results = await asyncio.gather(*(_ask(ctx, h, "POLICY_TAKE", follow) for h in others),
                                           return_exceptions=True)
            for hive, result in zip(others, results, strict=True):
                if isinstance(result, AdminError) and result.code in ("TIMEOUT", "POLICY_UNAVAILABLE"):
                    responses.append({"hive": hive, "status": "pending", "error_code": result.code,
                                      "error_detail": result.detail})
                elif isinstance(result, BaseException):
                    responses.append({"hive": hive, "status": "error", "error_code": getattr(result, "code",
                                      "INTERNAL_ERROR"), "error_detail": str(result)})
                elif result.get("status") != "ok" and result.get("error_code") == "FETCH_FAILED":
                    responses.append({"hive": hive, "status": "pending", "error_code": "FETCH_FAILED",
                                      "error_detail": result.get("error_detail")})
                else:
                    responses.append(_response(hive, result))
        pending = [r["hive"] for r in responses if r["status"] == "pending"]
        failed = [r["hive"] for r in responses if r["status"] == "error"]
        out = {"status": "sync_pending" if pending else "ok", "action": kind, "check_only": False,
               "version": version, "responses": responses, "expected_hives": expected, "pending": bool(pending),
               "pending_hives": pending, "failed_hives": failed,
               "elapsed_ms": int((time.perf_counter() - started) * 1000)}
        if failed:
            raise AdminError("SERVICE_FAILED", f"hives {', '.join(failed)} refused the change", payload=out)
        return out

    return await record_change(ctx, call, "opa", action, time.time(), work(),
                               {"hive": scope or "broadcast", "version": p.version})


def _request(action: str, p: OpaWriteParams, *, version: int | None) -> tuple[str, dict[str, Any]]:
    if action in ("opa_compile_apply", "opa_compile"):
        body: dict[str, Any] = {"rego": p.rego, "apply": action == "opa_compile_apply"}
        for key, value in (("entrypoint", p.entrypoint), ("data", p.data), ("version", version)):
            if value is not None:
                body[key] = value
        return "POLICY_COMPILE", body
    message = "POLICY_APPLY" if action == "opa_apply" else "POLICY_ROLLBACK"
    return message, ({"version": version} if version is not None else {})


async def _compiled_here_taken_there(ctx: Context, hive: str, p: OpaWriteParams, *, apply: bool) -> dict[str, Any]:
    """A compile for one other hive: this hive's SY.policy compiles it (nothing written here), that
    hive's takes the artefact under its own next version (or ``version``)."""
    own = ctx.backend.hive_id
    prepare = {k: v for k, v in (("rego", p.rego), ("entrypoint", p.entrypoint), ("data", p.data)) if v is not None}
    made = await _ask(ctx, own, "POLICY_PREPARE", prepare)
    if made.get("status") != "ok":
        _raise(made, own)
    reply = await _ask(ctx, hive, "POLICY_TAKE", {**_take(made, apply=apply), "version": p.version})
    return {**reply, "compile_time_ms": made.get("compile_time_ms")} if reply.get("status") == "ok" else reply


def _take(reply: dict[str, Any], *, apply: bool) -> dict[str, Any]:
    """The ``POLICY_TAKE`` that carries this hive's answer (what it compiled, applied or restored)."""
    return {"apply": apply, **{k: reply.get(k) for k in ("version", "sha256", "size", "engine", "origin")}}


def _response(hive: str, reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("status") != "ok":
        return {"hive": hive, "status": "error", **{k: v for k, v in reply.items() if k != "status"}}
    keep = ("version", "restored_version", "compile_time_ms", "wasm_size_bytes", "hash", "module_sha256",
            "engine", "fallback_reason", "staged", "applied", "router", "fetched", "already_current", "sha256",
            "size", "origin")
    return {"hive": hive, "status": "ok", **{k: reply[k] for k in keep if k in reply}}


async def _known(ctx: Context, hive: str) -> None:
    others = set(await ctx.backend.remote_hives()) | set((await wan.wan_view(ctx.link)).reachable)
    if hive in others:
        return
    await check_hive(ctx, hive)  # raises NOT_FOUND / HIVE_NOT_CONNECTED


async def _cluster_write(ctx: Context, target: str, p: OpaWriteParams, call: Call, action: str) -> dict[str, Any]:
    """In a cluster: write the hive's Policy resource and answer with what the operator made of it."""
    policies = ctx.policies
    assert policies is not None
    await check_hive(ctx, p.hive or p.target or target)  # this hive only: other hives have their own Policy
    kind = _KIND[action]
    if kind == "compile":
        if p.rego is None or not p.rego.strip():
            raise AdminError("COMPILE_ERROR", "rego_missing: the body needs a non-empty rego", status=400)
        _check_size(p)

    async def work() -> dict[str, Any]:
        started = time.perf_counter()
        if action == "opa_compile":
            assert p.rego is not None
            before, written = await policies.stage(p.rego, p.entrypoint, p.data)
            return await policies.staged_answer(before, written, await policies.settled(written), started)
        if action == "opa_apply":
            written = await policies.apply_staged(p.version)
        elif kind == "compile":
            assert p.rego is not None
            written = await policies.write(p.rego, p.entrypoint, p.data)
        else:
            written = await policies.pin(p.version)
        return policies.answer(kind, written, await policies.settled(written), started)

    return await record_change(ctx, call, "opa", action, time.time(), work(),
                               {"hive": ctx.backend.hive_id, "version": p.version})


async def _write_here_or_cluster(ctx: Context, target: str, p: OpaWriteParams, call: Call,
                                 action: str) -> dict[str, Any]:
    """A policy write: on the Policy resource in a cluster, through SY.policy otherwise."""
    if ctx.policies is not None:
        return await _cluster_write(ctx, target, p, call, action)
    return await _write(ctx, target, p, call, action)


def _refuse_source(p: OpaWriteParams, why: str) -> None:
    if p.rego is not None or p.data is not None:
        raise AdminError("INVALID_REQUEST", f"{why}: leave rego and data out")


async def opa_compile_apply(ctx: Context, target: str, p: OpaWriteParams, call: Call) -> dict[str, Any]:
    return await _write_here_or_cluster(ctx, target, p, call, "opa_compile_apply")


async def opa_compile(ctx: Context, target: str, p: OpaWriteParams, call: Call) -> dict[str, Any]:
    return await _write_here_or_cluster(ctx, target, p, call, "opa_compile")


async def opa_apply(ctx: Context, target: str, p: OpaWriteParams, call: Call) -> dict[str, Any]:
    _refuse_source(p, "apply takes the staged policy")
    return await _write_here_or_cluster(ctx, target, p, call, "opa_apply")


async def opa_rollback(ctx: Context, target: str, p: OpaWriteParams, call: Call) -> dict[str, Any]:
    _refuse_source(p, "rollback restores an applied policy")
    return await _write_here_or_cluster(ctx, target, p, call, "opa_rollback")


async def opa_check(ctx: Context, target: str, p: OpaCheckParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    _check_size(p)
    if ctx.policies is not None:
        out = await ctx.policies.check(p.rego, p.entrypoint, p.data, p.input, p.against)
        return {**out, "action": "compile", "check_only": True}
    body = {k: v for k, v in p.model_dump().items() if v is not None}
    reply = await _ask(ctx, target, "POLICY_CHECK", body)
    if reply.get("status") != "ok":
        _raise(reply, target)
    return {**reply, "action": "compile", "check_only": True}


async def opa_get_policy(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    if ctx.policies is not None:
        return await ctx.policies.describe(with_source=True)
    reply = await _ask(ctx, target, "POLICY_GET", {})
    if reply.get("status") != "ok":
        _raise(reply, target)
    return reply


async def opa_get_status(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    if ctx.policies is not None:
        return await ctx.policies.describe(with_source=False)
    reply = await _ask(ctx, target, "POLICY_STATUS", {})
    if reply.get("status") != "ok":
        _raise(reply, target)
    return reply


async def opa_get_decisions(ctx: Context, target: str, p: OpaDecisionsParams, call: Call) -> dict[str, Any]:
    """The router's decision audit ring (``OPA_DECISIONS_GET``), newest last."""
    await check_hive(ctx, target)
    request = {k: v for k, v in (("limit", p.limit), ("after", p.after)) if v is not None}
    msg, reply = await ctx.link.router_request(wire.OPA_DECISIONS_GET, request, timeout=5.0)
    if not isinstance(reply, dict) or msg != wire.OPA_DECISIONS_GET_RESPONSE:
        raise AdminError("SERVICE_FAILED", f"the router answered {msg} to OPA_DECISIONS_GET")
    if reply.get("status") != "ok":
        _raise(reply, target)
    return {**reply, "status": "ok", "hive": target}
