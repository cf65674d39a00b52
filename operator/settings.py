"""Operator settings, read from the environment once at the entry point."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/fluxbee/fluxbee:0.1.0"


class SettingsError(ValueError):
    """A bad environment variable; the message names it."""


@dataclass(frozen=True)
class OperatorSettings:
    image: str = DEFAULT_IMAGE
    """Image of the hive pods (router, admin API) and of runtimes that name no image."""

    image_pull_policy: str = "IfNotPresent"
    """Pull policy of every container the operator creates."""

    namespace: str | None = None
    """Watch only this namespace; None watches all namespaces (needs the ClusterRole)."""

    peering: str | None = None
    """kopf peering name for high availability; None runs standalone (one replica)."""

    priority: int = 0
    """kopf peering priority: the highest-priority replica is active, the others pause."""

    metrics_port: int = 9090
    """Router HTTP port for /healthz, /readyz, /metrics and /status."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        priority_text = env.get("FLUXBEE_OPERATOR_PRIORITY", "")
        try:
            priority = int(priority_text) if priority_text else random.randint(1, 1_000_000)
        except ValueError:
            raise SettingsError(
                f"FLUXBEE_OPERATOR_PRIORITY must be an integer, not {priority_text!r}"
            ) from None
        pull = env.get("FLUXBEE_IMAGE_PULL_POLICY", "IfNotPresent")
        if pull not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                f"FLUXBEE_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, not {pull!r}"
            )
        return cls(
            image=env.get("FLUXBEE_IMAGE", DEFAULT_IMAGE) or DEFAULT_IMAGE,
            image_pull_policy=pull,
            namespace=env.get("FLUXBEE_WATCH_NAMESPACE") or None,
            peering=env.get("FLUXBEE_OPERATOR_PEERING") or None,
            priority=priority,
        )
