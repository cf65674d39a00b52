"""Runtime handlers: validate the package and publish readiness; wake waiting FluxNodes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fluxbee.models import Runtime
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.runtime.build import parse_runtime, runtime_outcome

log = logging.getLogger(__name__)


async def load_base(ctx: OperatorContext, namespace: str, runtime: Runtime) -> Runtime | None:
    """The Runtime named by ``runtimeBase`` (None when unset, missing or invalid: the outcome says why)."""
    if not runtime.spec.runtime_base:
        return None
    body = await ctx.kube.get("runtimes", namespace, runtime.spec.runtime_base)
    if body is None:
        return None
    try:
        return parse_runtime(body)
    except InvalidSpec:
        return None


async def reconcile_runtime(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    namespace = body["metadata"]["namespace"]
    try:
        runtime = parse_runtime(body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
    else:
        outcome = runtime_outcome(runtime, await load_base(ctx, namespace, runtime), ctx.settings)
    await write_status(ctx.kube, "runtimes", body, outcome)
    return outcome


async def dependants(ctx: OperatorContext, namespace: str, runtime: str) -> list[dict[str, Any]]:
    """Runtimes built on ``runtime`` (to re-check when it changes)."""
    items = await ctx.kube.list("runtimes", namespace)
    return [r for r in items if (r.get("spec") or {}).get("runtimeBase") == runtime]
