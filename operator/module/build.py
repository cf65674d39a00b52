"""Module content digest (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fluxbee.models import ModuleSpec
from fluxbee.operator.conditions import Outcome


def content_sha256(spec: ModuleSpec) -> str:
    return hashlib.sha256(spec.content.encode("utf-8")).hexdigest()


def module_outcome(spec: ModuleSpec, pinned_by: Sequence[str] = ()) -> Outcome:
    digest = content_sha256(spec)
    size = len(spec.content.encode("utf-8"))
    return Outcome.ready(
        f"version {spec.version}, {size} bytes",
        sha256=digest,
        size=size,
        signature="CoveredByDegree" if pinned_by else "NotPinned",
        pinnedBy=list(pinned_by),
    )
