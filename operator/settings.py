"""Operator settings, read from the environment once at the entry point."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/fluxbee/fluxbee:0.1.0"
DEFAULT_POSTGRES_IMAGE = "docker.io/library/postgres:17"
DEFAULT_WAN_CA_SECRET = "fluxbee-wan-ca"


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

    identity_key_config_map: str = "fluxbee-identity-key"
    """ConfigMap (in each FluxNode's namespace) whose key ``ed25519.pub`` holds SY.identity's
    public key (PEM); graduations of FluxNodes with a ``degree`` are verified with it."""

    worker_limit: int = 5000
    """kopf workers per watched kind (one per object with pending events).

    A bound for memory, not for API pressure (the REST client's connection limit is that).
    It must exceed the number of objects that change at once: a worker holds its slot until it
    has been idle for ``worker_idle_timeout``, so with 200 slots 500 new FluxNodes were handled
    200 at a time, each batch waiting for idle workers to exit (16 s for 500 nodes).
    """

    worker_idle_timeout: float = 1.0
    """Seconds an idle kopf worker waits for more events of its object before it exits."""

    resync_interval: float = 600.0
    """Seconds between two reconciles of every Hive without an event: renews link certificates
    before they expire and puts back a deleted or edited Secret of the hive (Secrets are not watched)."""

    postgres_image: str = DEFAULT_POSTGRES_IMAGE
    """Image of the bundled PostgreSQL of a mother hive's SY.identity (a Hive may name its own)."""

    wan_ca_secret: str = DEFAULT_WAN_CA_SECRET
    """Secret holding the CA (``tls.crt``, ``tls.key``) the operator issues the hives' link
    certificates from.  Created once when absent, never regenerated or overwritten: every hive it
    issues for trusts every other, so hives under one operator can link."""

    wan_ca_namespace: str | None = None
    """Namespace of :attr:`wan_ca_secret`; None: the watched namespace, else the Hive's own (one CA
    per namespace).  The chart sets the release namespace, so one operator has one CA."""

    def ca_namespace(self, hive_namespace: str) -> str:
        """Where the CA Secret lives for a hive of ``hive_namespace``."""
        return self.wan_ca_namespace or self.namespace or hive_namespace

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
        limit_text = env.get("FLUXBEE_OPERATOR_WORKER_LIMIT", "")
        try:
            worker_limit = int(limit_text) if limit_text else cls.worker_limit
        except ValueError:
            worker_limit = 0
        if worker_limit < 1:
            raise SettingsError(
                f"FLUXBEE_OPERATOR_WORKER_LIMIT must be a positive integer, not {limit_text!r}"
            )
        resync_text = env.get("FLUXBEE_OPERATOR_RESYNC_INTERVAL", "")
        try:
            resync = float(resync_text) if resync_text else cls.resync_interval
        except ValueError:
            resync = 0.0
        if not 0 < resync < float("inf"):
            raise SettingsError(
                f"FLUXBEE_OPERATOR_RESYNC_INTERVAL must be a positive number of seconds, not {resync_text!r}")
        return cls(
            resync_interval=resync,
            identity_key_config_map=env.get("FLUXBEE_IDENTITY_KEY_CONFIGMAP")
            or cls.identity_key_config_map,
            worker_limit=worker_limit,
            image=env.get("FLUXBEE_IMAGE", DEFAULT_IMAGE) or DEFAULT_IMAGE,
            image_pull_policy=pull,
            namespace=env.get("FLUXBEE_WATCH_NAMESPACE") or None,
            peering=env.get("FLUXBEE_OPERATOR_PEERING") or None,
            priority=priority,
            postgres_image=env.get("FLUXBEE_POSTGRES_IMAGE") or DEFAULT_POSTGRES_IMAGE,
            wan_ca_secret=_name(env, "FLUXBEE_WAN_CA_SECRET") or DEFAULT_WAN_CA_SECRET,
            wan_ca_namespace=_name(env, "FLUXBEE_WAN_CA_NAMESPACE"),
        )


def _name(env: Mapping[str, str], variable: str) -> str | None:
    """An object name from ``variable`` (None when unset or empty); a bad one names the variable."""
    value = env.get(variable) or None
    if value is not None and not _NAME_RE.match(value):
        raise SettingsError(f"{variable} must be a Kubernetes object name (lower case, digits, '-', '.'), "
                            f"not {value!r}")
    return value


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
