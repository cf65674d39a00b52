"""The Kubernetes API as the operator's handlers see it.

kopf talks to the API for its own watching; the handlers create and patch children through the
shared async client (:mod:`fluxbee.kube`) so that reconciles stay async (500 FluxNodes converge
without a thread per call), and unit tests fake :class:`Kube` in a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fluxbee.kube import JSON_PATCH, MERGE_PATCH, RESOURCES, ApiError, KubeClient, KubeConfig, object_path

__all__ = ["JSON_PATCH", "MERGE_PATCH", "RESOURCES", "ApiError", "Kube", "KubeClient", "KubeConfig", "object_path"]


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
