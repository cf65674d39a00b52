"""The identity actions: ILKs and prompt modules, asked of the hive's SY.identity over the router.

SY.identity's error codes that the admin error table knows are passed through; any other becomes
``SERVICE_FAILED`` with the original code in the detail.
"""

from __future__ import annotations

import time
from typing import Any

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, check_hive, record_change
from fluxbee.admin.errors import AdminError

IDENTITY_NODE = "SY.identity"
IDENTITY_TIMEOUT = 5.0
_IDENTITY_CODES = frozenset({"NOT_FOUND", "ILK_NOT_FOUND", "INVALID_REQUEST", "MODULE_EXISTS", "DB_NOT_READY",
                             "UNAUTHORIZED_REGISTRAR", "DB_WRITE_FAILED", "RESPONSE_TOO_LARGE"})


async def _ask(ctx: Context, dst: str, msg: str, payload: dict[str, Any]) -> Any:
    try:
        _, reply = await ctx.link.request(dst, payload, msg_type="system", msg=msg, meta={}, ttl=16,
                                          timeout=IDENTITY_TIMEOUT)
    except AdminError as err:
        if err.code in ("NODE_NOT_FOUND", "UNREACHABLE"):
            raise AdminError("IDENTITY_UNAVAILABLE", f"{dst} cannot be reached ({err.detail})") from err
        raise
    return reply


async def _identity(ctx: Context, hive: str, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One request to the hive's SY.identity as SY.admin; its error codes kept where the table knows them.

    A replica (a worker hive's) answers reads of full records NOT_PRIMARY with the primary's name; the
    request is then sent there once (over the links), as the SDK does."""
    reply = await _ask(ctx, f"{IDENTITY_NODE}@{hive}", msg, payload)
    primary = reply.get("primary") if isinstance(reply, dict) else None
    if isinstance(reply, dict) and reply.get("error_code") == "NOT_PRIMARY" and isinstance(primary, str) and primary:
        reply = await _ask(ctx, primary, msg, payload)
    if not isinstance(reply, dict):
        raise AdminError("SERVICE_FAILED", f"{msg}_RESPONSE payload is not an object")
    if reply.get("status") != "ok":
        code = str(reply.get("error_code") or "SERVICE_FAILED")
        detail = str(reply.get("message") or reply.get("error_detail") or code)
        if code in _IDENTITY_CODES:
            raise AdminError(code, detail)
        raise AdminError("SERVICE_FAILED", f"{IDENTITY_NODE}: {code}: {detail}")
    return {k: v for k, v in reply.items() if k != "status"}


async def list_ilks(ctx: Context, target: str, p: s.IlkListParams, call: Call) -> dict[str, Any]:
    """One page (``limit``/``cursor`` given) or every ILK, fetched page by page.

    SY.identity answers in frame-sized pages; HTTP has no frame limit, so a plain GET follows
    ``next_cursor`` and answers the whole list, as it did before paging.
    """
    await check_hive(ctx, target)
    request: dict[str, Any] = {k: v for k, v in (("limit", p.limit), ("cursor", p.cursor)) if v is not None}
    single = bool(request)
    ilks: list[Any] = []
    while True:
        reply = await _identity(ctx, target, "ILK_LIST", request)
        ilks += reply.get("ilks") or []
        cursor = reply.get("next_cursor")
        if single or not isinstance(cursor, str) or cursor == request.get("cursor"):
            break
        request["cursor"] = cursor
    return {"status": "ok", "hive": target, "count": len(ilks), "ilks": ilks,
            "next_cursor": reply.get("next_cursor") if single else None}


async def get_ilk(ctx: Context, target: str, p: s.IlkParams, call: Call) -> dict[str, Any]:
    await check_hive(ctx, target)
    return {"status": "ok", "hive": target, **await _identity(ctx, target, "ILK_GET", {"ilk_id": p.ilk_id})}


async def list_modules(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_LIST", {})
    items = reply.get("modules", [])
    return {"status": "ok", "modules": sorted({str(m["name"]) for m in items}), "items": items}


async def get_module(ctx: Context, target: str, p: s.ModuleParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_GET", {"name": p.name})
    items = reply.get("versions", [])
    return {"status": "ok", "name": p.name, "versions": [str(m["version"]) for m in items], "items": items}


async def get_module_version(ctx: Context, target: str, p: s.ModuleVersionParams, call: Call) -> dict[str, Any]:
    reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_GET", {"name": p.name, "version": p.version})
    return {"status": "ok", "name": p.name, "version": p.version, "module": reply.get("module")}


async def publish_module(ctx: Context, target: str, p: s.ModulePutParams, call: Call) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        reply = await _identity(ctx, ctx.backend.hive_id, "MODULE_PUT", p.model_dump())
        return {"status": "ok", **reply}

    return await record_change(ctx, call, "modules", "publish_module", time.time(), work(),
                         {"name": p.name, "version": p.version})

