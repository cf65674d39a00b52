"""Status as an explicit state machine: pure functions from an outcome to a status patch.

kopf does not write ``observedGeneration`` or conditions; every reconciler ends by turning an
:class:`Outcome` into a status body with :func:`status_patch`.  ``lastTransitionTime`` only
moves when a condition's status flips, as the Kubernetes convention asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from fluxbee.errors import CodedError

Phase = Literal["Pending", "Reconciling", "Ready", "Degraded"]


@dataclass(frozen=True)
class Outcome:
    """Where a reconcile ended: the phase, why, and kind-specific status fields."""

    phase: Phase
    reason: str
    message: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def ready(cls, message: str = "", **fields: Any) -> Outcome:
        return cls("Ready", "Ready", message, fields)

    @classmethod
    def reconciling(cls, reason: str, message: str, **fields: Any) -> Outcome:
        return cls("Reconciling", reason, message, fields)

    @classmethod
    def degraded(cls, reason: str, message: str, **fields: Any) -> Outcome:
        return cls("Degraded", reason, message, fields)


class InvalidSpec(CodedError):
    """The spec can never be reconciled as written; the resource ends Degraded, not retried.

    ``code`` becomes the Degraded condition's ``reason`` and ``detail`` its ``message``."""


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    old = previous.get(ctype)
    changed = old is None or old.get("status") != status
    when = now if changed or not old or not old.get("lastTransitionTime") else old["lastTransitionTime"]
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def status_patch(
    outcome: Outcome,
    generation: int | None,
    previous: Sequence[Mapping[str, Any]] = (),
    now: str | None = None,
) -> dict[str, Any]:
    """The full status body for ``outcome`` (Ready / Reconciling / Degraded all present)."""
    now = now or now_rfc3339()
    prev = {str(c.get("type")): c for c in previous if isinstance(c, Mapping)}
    ready = outcome.phase == "Ready"
    reconciling = outcome.phase in ("Reconciling", "Pending")
    degraded = outcome.phase == "Degraded"
    msg = outcome.message
    conditions = [
        _condition(
            "Ready", "True" if ready else "False", outcome.reason, msg, generation, prev, now
        ),
        _condition(
            "Reconciling",
            "True" if reconciling else "False",
            outcome.reason if reconciling else "Reconciled",
            msg if reconciling else "",
            generation,
            prev,
            now,
        ),
        _condition(
            "Degraded",
            "True" if degraded else "False",
            outcome.reason if degraded else "AsExpected",
            msg if degraded else "",
            generation,
            prev,
            now,
        ),
    ]
    body: dict[str, Any] = {"phase": outcome.phase, "conditions": conditions}
    if generation is not None:
        body["observedGeneration"] = generation
    body.update(outcome.fields)
    return body


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything but transition times."""
    if not old:
        return True

    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k != "conditions" and k != "kopf"}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions") or []
        ]
        return out

    return strip(old) != strip({**{k: v for k, v in old.items() if k not in new}, **new})
