"""The effective config a node process reads (`FLUXBEE_NODE_CONFIG`).

Upstream rule (admin-api reference §4): the runtime's config template, then the node's
``config`` overrides (shallow: a top-level key replaces the template's value wholesale), then
``tenant_id`` if the node names one and the config does not, then a forced ``_system`` block
that nothing upstream of it may set (``ilk_id`` in it when the node has an ILK, ``spec.agentIlk``).
Shared by the operator (ConfigMap) and the local hive (config file), so both start nodes with
byte-identical configs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fluxbee.models.resources import FluxNode, Runtime

MANAGED_BY_OPERATOR = "fluxbee-operator"


def resolve_runtime_version(runtime: Runtime, requested: str) -> str:
    """The concrete version a node runs: ``current`` (or empty) means the runtime's version.

    A Runtime resource publishes exactly one version, so an explicit request must equal it.
    """
    if requested in ("", "current") or requested == runtime.spec.version:
        return runtime.spec.version
    raise ValueError(
        f"runtime {runtime.metadata.name!r} publishes version {runtime.spec.version!r}, "
        f"not {requested!r}"
    )


def effective_config(
    runtime: Runtime,
    node: FluxNode,
    hive_id: str,
    now_ms: int,
    *,
    managed_by: str = MANAGED_BY_OPERATOR,
    created_at_ms: int | None = None,
    config_version: int = 1,
    base: Runtime | None = None,
) -> dict[str, Any]:
    """Template defaults + spec overrides + ``tenant_id`` + the forced ``_system`` block.

    ``base`` is the base runtime of a ``config_only``/``workflow`` package; it is recorded as
    ``runtime_base`` (and its template is *not* merged: the package's own template wins).
    Raises ``ValueError`` when the node asks for a version the runtime does not publish.
    """
    spec = node.spec
    version = resolve_runtime_version(runtime, spec.runtime_version)
    config: dict[str, Any] = dict(runtime.spec.config_template)
    config.pop("_system", None)
    config.update(spec.config)
    if spec.tenant_id is not None and "tenant_id" not in config:
        config["tenant_id"] = spec.tenant_id
    system: dict[str, Any] = {
        "managed_by": managed_by,
        "node_name": qualified_node_name(spec.node_name, hive_id),
        "hive_id": hive_id,
        "runtime": runtime.metadata.name,
        "runtime_version": version,
        "config_version": config_version,
        "created_at_ms": now_ms if created_at_ms is None else created_at_ms,
        "updated_at_ms": now_ms,
    }
    tenant = config.get("tenant_id")
    if isinstance(tenant, str):
        system["tenant_id"] = tenant
    if spec.agent_ilk is not None:  # the node's ILK (registered at spawn): status and the node read it here
        system["ilk_id"] = spec.agent_ilk
    if runtime.spec.type != "full_runtime":
        base_name = runtime.spec.runtime_base
        system["runtime_base"] = base.metadata.name if base is not None else base_name
        system["package_path"] = f"/var/lib/fluxbee/dist/runtimes/{runtime.metadata.name}/{version}"
    config["_system"] = system
    return config


def qualified_node_name(node_name: str, hive_id: str) -> str:
    """``TYPE.f2…fN@hive``: the hive suffix is added when the name has none."""
    return node_name if "@" in node_name else f"{node_name}@{hive_id}"


def config_digest(config: dict[str, Any], *, ignore_times: bool = True) -> str:
    """sha256 of the canonical JSON of ``config``.

    With ``ignore_times`` the ``_system`` timestamps are left out, so the digest changes only
    when what the node would run with changes (used to decide whether Pods must be replaced).
    """
    body = dict(config)
    if ignore_times and isinstance(body.get("_system"), dict):
        system = dict(body["_system"])
        system.pop("created_at_ms", None)
        system.pop("updated_at_ms", None)
        body["_system"] = system
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
