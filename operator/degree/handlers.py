"""Degree handler: resolve pinned modules, publish the digest and the graduations' status.

Also the loaders the FluxNode reconcile uses to verify an agent's graduation: the Degree with
its Modules, and the identity public key from a ConfigMap (see ``OperatorSettings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fluxbee.identity import degrees as dg
from fluxbee.models import Degree, FluxNode, Module
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.context import OperatorContext, write_status
from fluxbee.operator.degree.build import (
    DEGREE_NOT_FOUND,
    KEY_UNAVAILABLE,
    degree_outcome,
    verify_binding,
)
from fluxbee.operator.runtime.build import describe, view

PUBLIC_KEY_ITEM = "ed25519.pub"


async def load_modules(ctx: OperatorContext, namespace: str, degree: Degree) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for ref in degree.spec.modules:
        found = await ctx.kube.get("modules", namespace, ref.name)
        if found is None:
            continue
        try:
            modules[ref.name] = Module.model_validate(view(found))
        except ValidationError:
            continue
    return modules


async def load_degree(
    ctx: OperatorContext, namespace: str, name: str
) -> tuple[Degree, dict[str, Module]]:
    """The Degree ``name`` and the Modules it pins; DegreeVerificationError if unusable."""
    body = await ctx.kube.get("degrees", namespace, name)
    if body is None:
        raise dg.DegreeVerificationError(
            DEGREE_NOT_FOUND, f"Degree {name!r} does not exist in namespace {namespace}"
        )
    try:
        degree = Degree.model_validate(view(body))
    except ValidationError as err:
        raise dg.DegreeVerificationError(
            DEGREE_NOT_FOUND, f"Degree {name!r} is invalid: {describe(err)}"
        ) from err
    return degree, await load_modules(ctx, namespace, degree)


async def load_identity_key(ctx: OperatorContext, namespace: str) -> Ed25519PublicKey:
    """SY.identity's public key; DegreeVerificationError(IdentityKeyUnavailable) if absent."""
    name = ctx.settings.identity_key_config_map
    config_map = await ctx.kube.get("configmaps", namespace, name)
    pem = ((config_map or {}).get("data") or {}).get(PUBLIC_KEY_ITEM)
    if not isinstance(pem, str):
        raise dg.DegreeVerificationError(
            KEY_UNAVAILABLE,
            f"ConfigMap {namespace}/{name} with key {PUBLIC_KEY_ITEM} (the identity public "
            "key, PEM) is missing; graduations cannot be verified",
        )
    try:
        return dg.load_public_key(pem.encode())
    except ValueError as err:
        raise dg.DegreeVerificationError(
            KEY_UNAVAILABLE, f"ConfigMap {namespace}/{name}: {PUBLIC_KEY_ITEM} is not an "
            f"Ed25519 public key in PEM: {err}"
        ) from err


async def nodes_running(ctx: OperatorContext, namespace: str, degree: str) -> list[dict[str, Any]]:
    """FluxNodes whose ``spec.degree.name`` is ``degree``."""
    return [
        item for item in await ctx.kube.list("fluxnodes", namespace)
        if ((item.get("spec") or {}).get("degree") or {}).get("name") == degree
    ]


async def _count_graduations(
    ctx: OperatorContext, namespace: str, degree: Degree, modules: Mapping[str, Module]
) -> tuple[int, int]:
    nodes = await nodes_running(ctx, namespace, degree.metadata.name)
    if not nodes:
        return 0, 0
    try:
        key = await load_identity_key(ctx, namespace)
    except dg.DegreeVerificationError:
        return 0, len(nodes)
    verified = 0
    for item in nodes:
        try:
            node = FluxNode.model_validate(view(item))
            if node.spec.degree is None or node.spec.agent_ilk is None:
                continue
            verify_binding(node.spec.degree, node.spec.agent_ilk, degree.metadata.name,
                           degree.spec, modules, key)
        except (ValidationError, dg.DegreeVerificationError):
            continue
        verified += 1
    return verified, len(nodes)


async def reconcile_degree(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    namespace = body["metadata"]["namespace"]
    try:
        degree = Degree.model_validate(view(body))
    except ValidationError as err:
        outcome = Outcome.degraded("InvalidSpec", describe(err))
    else:
        modules = await load_modules(ctx, namespace, degree)
        counts = await _count_graduations(ctx, namespace, degree, modules)
        outcome = degree_outcome(degree.spec, modules, counts)
    await write_status(ctx.kube, "degrees", body, outcome)
    return outcome


async def degrees_pinning(ctx: OperatorContext, namespace: str, module: str) -> list[dict[str, Any]]:
    items = await ctx.kube.list("degrees", namespace)
    return [
        d for d in items
        if any(m.get("name") == module for m in (d.get("spec") or {}).get("modules") or [])
    ]
