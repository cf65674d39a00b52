"""Operator settings, read from the environment once at the entry point."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

from fluxbee.dataplane import env as E
from fluxbee.dataplane.env import SettingsError

DEFAULT_IMAGE = E.IMAGE.default
DEFAULT_POSTGRES_IMAGE = E.POSTGRES_IMAGE.default
DEFAULT_WAN_CA_SECRET = E.WAN_CA_SECRET.default

__all__ = ["DEFAULT_IMAGE", "OperatorSettings", "SettingsError"]


@dataclass(frozen=True)
class OperatorSettings:
    image: str = DEFAULT_IMAGE
    """Image of the hive pods (router, admin API) and of runtimes that name no image."""

    image_pull_policy: str = E.IMAGE_PULL_POLICY.default
    """Pull policy of every container the operator creates."""

    namespace: str | None = None
    """Watch only this namespace; None watches all namespaces (needs the ClusterRole)."""

    peering: str | None = None
    """kopf peering name for high availability; None runs standalone (one replica)."""

    priority: int = 0
    """kopf peering priority: the highest-priority replica is active, the others pause."""

    metrics_port: int = 9090
    """Router HTTP port for /healthz, /readyz, /metrics and /status."""

    identity_key_config_map: str = E.IDENTITY_KEY_CONFIGMAP.default
    """ConfigMap (in each FluxNode's namespace) whose key ``ed25519.pub`` holds SY.identity's
    public key (PEM); graduations of FluxNodes with a ``degree`` are verified with it."""

    worker_limit: int = E.OPERATOR_WORKER_LIMIT.default
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
        """Settings from the ``FLUXBEE_*`` variables the table in :mod:`fluxbee.dataplane.env` gives
        the operator; a bad value raises :class:`SettingsError` naming the variable."""
        env = os.environ if env is None else env
        priority = E.OPERATOR_PRIORITY.read(env)
        return cls(
            identity_key_config_map=E.IDENTITY_KEY_CONFIGMAP.read(env),
            worker_limit=E.OPERATOR_WORKER_LIMIT.read(env),
            image=E.IMAGE.read(env),
            image_pull_policy=E.IMAGE_PULL_POLICY.read(env),
            namespace=E.WATCH_NAMESPACE.read(env),
            peering=E.OPERATOR_PEERING.read(env),
            priority=random.randint(1, 1_000_000) if priority is None else priority,
            resync_interval=E.OPERATOR_RESYNC_INTERVAL.read(env),
            postgres_image=E.POSTGRES_IMAGE.read(env),
            wan_ca_secret=E.WAN_CA_SECRET.read(env),
            wan_ca_namespace=E.WAN_CA_NAMESPACE.read(env),
        )

