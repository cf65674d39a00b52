"""The Kubernetes API as the operator's handlers see it.

kopf talks to the API for its own watching; the handlers create and patch children through the
shared async client (:mod:`fluxbee.kube`) so that reconciles stay async (500 FluxNodes converge
without a thread per call), and unit tests fake :class:`Kube` in a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import kopf

from fluxbee.kube import (
    JSON_PATCH,
    MERGE_PATCH,
    RESOURCES,
    ApiError,
    KubeClient,
    KubeConfig,
    KubeConfigError,
    object_path,
)

__all__ = ["JSON_PATCH", "MERGE_PATCH", "RESOURCES", "ApiError", "Kube", "KubeClient", "KubeConfig",
           "KubeConfigError", "connection_info", "object_path"]


def connection_info(config: KubeConfig) -> kopf.ConnectionInfo:
    """kopf's login for its watch streams, from the same :class:`KubeConfig` as the handlers' client.

    Without a login handler kopf has no credentials at all ("Ran out of valid credentials"), and
    its own fallbacks would read the kubeconfig a second, different way; one source means the
    operator's watches and writes always go to the same server as the same user.
    """
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=None if config.insecure else config.ca_file,
        ca_data=None if config.insecure else config.ca_data,
        insecure=config.insecure,
        scheme="Bearer" if config.token else None,
        token=config.token,
        certificate_path=config.cert_file,
        certificate_data=None if config.cert_file else config.cert_data,
        private_key_path=config.key_file,
        private_key_data=None if config.key_file else config.key_data,
        default_namespace=config.namespace,
    )


class Kube(Protocol):
    """What reconcilers need from the API: plain dicts in, plain dicts out."""

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(
        self, plural: str, namespace: str, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]: ...

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]: ...

    async def delete(self, plural: str, namespace: str, name: str) -> bool: ...
