"""The history actions: the deployments and drift-alerts journals, globally or for one hive."""

from __future__ import annotations

from typing import Any

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context, check_hive
from fluxbee.admin.errors import AdminError
from fluxbee.admin.history import HistoryUnavailable


async def _history(ctx: Context, target: str | None, name: str, p: s.HistoryParams) -> dict[str, Any]:
    if target is not None:
        await check_hive(ctx, target)
    filters: dict[str, str | None] = {"category": p.category}
    if name == "drift-alerts.jsonl":
        filters.update(severity=p.severity, kind=p.kind)
    try:
        entries, dropped = await ctx.history.read(name, limit=p.limit, filters=filters)
    except HistoryUnavailable as err:
        raise AdminError("KUBERNETES_API_ERROR", str(err)) from err
    out: dict[str, Any] = {"status": "ok", "view": "history", "entries": entries, "dropped_entries": dropped}
    if target is not None:
        out["hive_id"] = target
    return out


async def list_deployments(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, None, "deployments.jsonl", p)


async def get_deployments(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, target, "deployments.jsonl", p)


async def list_drift_alerts(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, None, "drift-alerts.jsonl", p)


async def get_drift_alerts(ctx: Context, target: str, p: s.HistoryParams, call: Call) -> dict[str, Any]:
    return await _history(ctx, target, "drift-alerts.jsonl", p)

