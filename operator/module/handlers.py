"""Module handler: publish the content digest in status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fluxbee.models import Module
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.module.build import module_outcome
from fluxbee.operator.runtime.build import describe, view


async def reconcile_module(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    try:
        module = Module.model_validate(view(body))
    except ValidationError as err:
        outcome = Outcome.degraded("InvalidSpec", describe(err))
    else:
        outcome = module_outcome(module.spec)
    await write_status(ctx.kube, "modules", body, outcome)
    return outcome
