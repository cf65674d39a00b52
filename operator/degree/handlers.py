"""Degree handler: resolve pinned modules and publish the digest in status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fluxbee.models import Degree, Module
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.degree.build import degree_outcome
from fluxbee.operator.runtime.build import describe, view


async def reconcile_degree(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    namespace = body["metadata"]["namespace"]
    try:
        degree = Degree.model_validate(view(body))
    except ValidationError as err:
        outcome = Outcome.degraded("InvalidSpec", describe(err))
    else:
        modules: dict[str, Module] = {}
        for ref in degree.spec.modules:
            found = await ctx.kube.get("modules", namespace, ref.name)
            if found is None:
                continue
            try:
                modules[ref.name] = Module.model_validate(view(found))
            except ValidationError:
                continue
        outcome = degree_outcome(degree.spec, modules)
    await write_status(ctx.kube, "degrees", body, outcome)
    return outcome


async def degrees_pinning(ctx: OperatorContext, namespace: str, module: str) -> list[dict[str, Any]]:
    items = await ctx.kube.list("degrees", namespace)
    return [
        d for d in items
        if any(m.get("name") == module for m in (d.get("spec") or {}).get("modules") or [])
    ]
