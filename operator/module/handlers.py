"""Module handler: publish the content digest, and which degrees pin (and so sign) it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluxbee.models import Module
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.degree.handlers import degrees_pinning
from fluxbee.operator.module.build import module_outcome
from fluxbee.operator.runtime.build import parse_resource


async def reconcile_module(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    try:
        module = parse_resource(Module, body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
    else:
        pinned_by = sorted(d["metadata"]["name"]
                           for d in await degrees_pinning(ctx, meta["namespace"], meta["name"]))
        outcome = module_outcome(module.spec, pinned_by)
    await write_status(ctx.kube, "modules", body, outcome)
    return outcome
