"""The node-control contract: what a node answers to CONFIG_GET, CONFIG_SET and NODE_STATUS_GET.

Pure functions of the request and the node's state, so the SDK, the admin API, the operator and the
local backend's tests share one definition of the version rules: a CONFIG_SET replaces every key but
``_system``, its ``config_version`` (when given) must be greater than the current one, and an
accepted one without a version bumps it by one.  No I/O and no asyncio (an import-linter contract).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fluxbee.dataplane import wire

CONFIG_CONTRACT: dict[str, Any] = {
    "schema_version": "1",
    "apply_modes": ["replace"],
    "target": "node_config_control",
    "notes": "CONFIG_SET replaces every key but `_system`; config_version must increase",
}
"""Sent with every CONFIG_RESPONSE: what this node's config control accepts."""


@dataclass(slots=True)
class NodeStatus:
    """What the default NODE_STATUS_GET handler reports."""

    lifecycle_state: str = "RUNNING"
    health_state: str = "HEALTHY"
    status_version: int = 1
    last_error: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


class ConfigAnswer(NamedTuple):
    """A CONFIG_RESPONSE payload and the node's config state after the request."""

    payload: dict[str, Any]
    config_version: int
    node_config: dict[str, Any]


def initial_config_version(node_config: dict[str, Any]) -> int:
    """The version in ``_system.config_version`` when it is a positive integer, else 1."""
    system = node_config.get("_system")
    version = system.get("config_version") if isinstance(system, dict) else None
    return version if isinstance(version, int) and version > 0 else 1


def answer_config(request: str, body: Any, *, node_name: str, config_version: int, node_config: dict[str, Any],
                  on_config_set: Callable[[dict[str, Any]], str | None] | None = None) -> ConfigAnswer:
    """The answer to CONFIG_GET or CONFIG_SET (``request``, the message's ``meta.msg``) and the new state.

    ``body`` is the request's payload (anything but a dict counts as empty).  ``on_config_set`` is
    called with a proposed config that passes the rules; a text it returns refuses it.  A refused
    request leaves ``config_version`` and ``node_config`` as they were.
    """
    request_body = body if isinstance(body, dict) else {}
    error: str | None = None
    state = "current"
    if request == wire.CONFIG_SET:
        proposed = request_body.get("config")
        version = request_body.get("config_version")
        mode = request_body.get("apply_mode", "replace")
        if not isinstance(proposed, dict):
            error = "INVALID_CONFIG_SET: config must be a JSON object"
        elif mode != "replace":
            error = f"INVALID_CONFIG_SET: apply_mode {mode!r} is not supported (only 'replace')"
        elif "_system" in proposed:
            error = "INVALID_CONFIG_SET: `_system` is managed by the hive and cannot be set"
        elif version is not None and (not isinstance(version, int) or version <= config_version):
            error = f"STALE_CONFIG_VERSION: config_version must be greater than {config_version}"
        else:
            refused = on_config_set(proposed) if on_config_set is not None else None
            if refused:
                error = f"REJECTED: {refused}"
            else:
                system = node_config.get("_system")
                config_version = version if isinstance(version, int) else config_version + 1
                node_config = dict(proposed)
                if isinstance(system, dict):
                    node_config["_system"] = {**system, "config_version": config_version}
                state = "applied"
        if error is not None:
            state = "rejected"
    payload = {
        "ok": error is None,
        "state": state,
        "node_name": node_name,
        "config_version": config_version,
        "effective_config": node_config,
        "error": error,
        "contract": CONFIG_CONTRACT,
    }
    return ConfigAnswer(payload, config_version, node_config)


def answer_status(node_name: str, status: NodeStatus) -> dict[str, Any]:
    """The NODE_STATUS_GET_RESPONSE payload for a node in ``status``."""
    payload: dict[str, Any] = {
        "status": "ok",
        "node_name": node_name,
        "lifecycle_state": status.lifecycle_state,
        "health_state": status.health_state,
        "health_source": "NODE_REPORTED",
        "status_version": status.status_version,
    }
    if status.last_error:
        payload["last_error"] = status.last_error
    if status.extensions:
        payload["extensions"] = status.extensions
    return payload
