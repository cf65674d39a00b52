"""Policy handler: syntax validation with regorus; the error goes to status, not a retry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluxbee.models import Policy
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.policy.build import policy_outcome
from fluxbee.operator.runtime.build import parse_resource


async def reconcile_policy(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    try:
        policy = parse_resource(Policy, body)
    except InvalidSpec as err:
        outcome = Outcome.degraded(err.code, err.detail)
    else:
        outcome = policy_outcome(policy.metadata.name, policy.spec)
    await write_status(ctx.kube, "policies", body, outcome)
    return outcome
