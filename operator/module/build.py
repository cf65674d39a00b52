"""Module content digest (pure)."""

from __future__ import annotations

import hashlib

from fluxbee.models import ModuleSpec
from fluxbee.operator.conditions import Outcome


def content_sha256(spec: ModuleSpec) -> str:
    return hashlib.sha256(spec.content.encode("utf-8")).hexdigest()


def module_outcome(spec: ModuleSpec) -> Outcome:
    digest = content_sha256(spec)
    size = len(spec.content.encode("utf-8"))
    return Outcome.ready(f"version {spec.version}, {size} bytes", sha256=digest, size=size)
