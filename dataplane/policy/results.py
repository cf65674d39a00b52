"""Turning an engine's raw results into a :class:`Decision`, with the same checks for both engines."""

from __future__ import annotations

from typing import Any

from fluxbee.dataplane.policy.artefact import Decision, EngineName
from fluxbee.dataplane.policy.errors import EvaluationError


def json_type(value: Any) -> str:
    """The Rego type name of a value as either engine hands it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (set, frozenset)):
        return "set"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def decision_from(target: tuple[bool, Any], allow: tuple[bool, Any] | None, *, engine: EngineName) -> Decision:
    """``target``/``allow`` are ``(defined, value)``; ``allow`` is ``None`` when the policy has no
    allow rule. A target that is not a string, or an allow that is not a boolean, is the policy's
    error (``OPA_ERROR``), not a silent miss."""
    defined, value = target
    if defined and not isinstance(value, str):
        raise EvaluationError(f"target must be a string, the policy produced a {json_type(value)}", engine=engine)
    allowed: bool | None = None
    if allow is not None:
        allow_defined, allow_value = allow
        if allow_defined and not isinstance(allow_value, bool):
            raise EvaluationError(f"allow must be a boolean, the policy produced a {json_type(allow_value)}",
                                  engine=engine)
        allowed = bool(allow_value) if allow_defined else False
    return Decision(target=value if defined else None, allow=allowed, engine=engine)
