"""Degree digest (pure): sha256 over a canonical encoding of the pinned modules.

Canonical encoding: JSON of ``[{"name", "version", "sha256"}, …]`` in the degree's order, keys
sorted, no whitespace, UTF-8.  Any change of a pinned module's content changes the digest,
which is what an agent verifies before it runs (the Ed25519 signature over it arrives with the
identity service).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from fluxbee.models import DegreeSpec, Module
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.module.build import content_sha256


def canonical_pins(pins: list[tuple[str, str, str]]) -> bytes:
    body = [{"name": n, "version": v, "sha256": d} for n, v, d in pins]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def degree_digest(pins: list[tuple[str, str, str]]) -> str:
    return hashlib.sha256(canonical_pins(pins)).hexdigest()


def degree_outcome(spec: DegreeSpec, modules: Mapping[str, Module]) -> Outcome:
    """Ready with the digest when every pin resolves; Degraded naming the first bad pin."""
    pins: list[tuple[str, str, str]] = []
    for ref in spec.modules:
        module = modules.get(ref.name)
        if module is None:
            return Outcome.degraded("ModuleNotFound", f"module {ref.name!r} does not exist")
        if module.spec.version != ref.version:
            return Outcome.degraded(
                "ModuleVersionMismatch",
                f"module {ref.name!r} is version {module.spec.version!r}; "
                f"the degree pins {ref.version!r}",
            )
        digest = content_sha256(module.spec)
        if ref.sha256 is not None and ref.sha256 != digest:
            return Outcome.degraded(
                "ModuleDigestMismatch",
                f"module {ref.name!r} has sha256 {digest}; the degree pins {ref.sha256}",
            )
        pins.append((ref.name, ref.version, digest))
    return Outcome.ready(
        f"{len(pins)} modules pinned; signature pending (identity service)",
        digest=degree_digest(pins),
    )
