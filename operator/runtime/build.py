"""Runtime readiness (pure): is the package consistent, and does its base exist and run?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fluxbee.models import Runtime, runtime_package_problem
from fluxbee.operator.conditions import InvalidSpec, Outcome
from fluxbee.operator.settings import OperatorSettings


def describe(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
    )


M = TypeVar("M", bound=BaseModel)


def parse_resource(model: type[M], body: Mapping[str, Any], reason: str = "InvalidSpec") -> M:
    """The resource's model from a stored object; InvalidSpec(``reason``, what is wrong) if it does not fit."""
    try:
        return model.model_validate(_resource_view(body))
    except ValidationError as err:
        raise InvalidSpec(reason, describe(err)) from err


def parse_runtime(body: Mapping[str, Any]) -> Runtime:
    return parse_resource(Runtime, body, "InvalidPackage")


def _resource_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """apiVersion/kind/metadata/spec only: status and server fields are not the model's."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        },
        "spec": body.get("spec") or {},
    }


def runtime_outcome(
    runtime: Runtime, base: Runtime | None, settings: OperatorSettings
) -> Outcome:
    """Ready when the package is consistent and (for derived packages) its base is runnable."""
    problem = runtime_package_problem(runtime.spec)
    if problem is not None:
        return Outcome.degraded("InvalidPackage", problem)
    if runtime.spec.type == "full_runtime":
        return Outcome.ready(
            f"{runtime.spec.type} {runtime.spec.version}",
            image=runtime.spec.image or settings.image,
            command=list(runtime.spec.command),
        )
    base_name = runtime.spec.runtime_base
    if base is None:
        return Outcome.degraded(
            "BaseRuntimeNotFound", f"runtimeBase {base_name!r} is not a Runtime in this namespace"
        )
    if base.spec.type != "full_runtime":
        return Outcome.degraded(
            "BaseRuntimeNotRunnable",
            f"runtimeBase {base_name!r} is a {base.spec.type} package; it must be a full_runtime",
        )
    return Outcome.ready(
        f"{runtime.spec.type} {runtime.spec.version} on {base_name} {base.spec.version}",
        image=base.spec.image or settings.image,
        command=list(base.spec.command),
    )


view = _resource_view
