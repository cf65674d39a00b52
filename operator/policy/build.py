"""Policy validation (pure): parse the Rego with regorus and report the first error."""

from __future__ import annotations

import hashlib

import regorus  # type: ignore[import-untyped]

from fluxbee.models import PolicySpec
from fluxbee.operator.conditions import Outcome


def rego_error_text(err: BaseException) -> str:
    """regorus errors carry a Rust backtrace after the message; keep the message only."""
    text = str(err).split("\nStack backtrace:", 1)[0].strip()
    return text or type(err).__name__


def policy_outcome(name: str, spec: PolicySpec) -> Outcome:
    sha = hashlib.sha256(spec.rego.encode("utf-8")).hexdigest()
    engine = regorus.Engine()
    try:
        package = engine.add_policy(f"{name}.rego", spec.rego)
    except (RuntimeError, ValueError) as err:
        message = rego_error_text(err)
        return Outcome.degraded("RegoSyntaxError", message, sha256=sha, error=message)
    packages = [str(package)]
    wanted = spec.entrypoint.rsplit(".", 1)[0]
    if wanted not in packages:
        message = f"entrypoint {spec.entrypoint} is outside the policy's package {packages[0]}"
        return Outcome.degraded("EntrypointNotDefined", message, sha256=sha, packages=packages,
                                error=message)
    return Outcome.ready(f"package {packages[0]}", sha256=sha, packages=packages, error=None)
