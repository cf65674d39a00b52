"""A small async client for the Kubernetes REST API (aiohttp), shared by the operator and the admin API.

Both talk to the API server with plain dicts (exactly the manifests the pure builders return) and
must not import each other (import contract), so the client lives here.  Errors carry the API
server's status and reason (:class:`ApiError`); an API server that does not answer is status 0.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

RESOURCES: dict[str, str] = {
    "pods": "/api/v1",
    "configmaps": "/api/v1",
    "services": "/api/v1",
    "secrets": "/api/v1",
    "daemonsets": "/apis/apps/v1",
    "hives": "/apis/fluxbee.io/v1alpha1",
    "fluxnodes": "/apis/fluxbee.io/v1alpha1",
    "runtimes": "/apis/fluxbee.io/v1alpha1",
    "modules": "/apis/fluxbee.io/v1alpha1",
    "degrees": "/apis/fluxbee.io/v1alpha1",
    "policies": "/apis/fluxbee.io/v1alpha1",
}
"""The namespaced resources Fluxbee reads or manages: plural → API prefix."""


class ApiError(Exception):
    """A non-2xx answer of the API server (``status`` and ``reason`` from its Status), or none (status 0)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @classmethod
    def from_environment(cls, server: str | None = None) -> KubeConfig:
        """``server`` if given (no auth: a test API server or ``kubectl proxy``), else the in-cluster
        service account, else the current kubeconfig context."""
        if server:
            return cls(server=server.rstrip("/"), insecure=True)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if host and (_SA_DIR / "token").exists():
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            return cls(server=f"https://{host}:{port}", token=(_SA_DIR / "token").read_text().strip(),
                       ca_file=str(_SA_DIR / "ca.crt"))
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        conf = k8s_client.Configuration()
        k8s_config.load_kube_config(client_configuration=conf)  # type: ignore[no-untyped-call]
        api_key = conf.api_key or {}
        auth = api_key.get("authorization") or api_key.get("BearerToken")
        token = auth.removeprefix("Bearer ").strip() if isinstance(auth, str) else None
        return cls(server=str(conf.host), token=token, ca_file=conf.ssl_ca_cert, cert_file=conf.cert_file,
                   key_file=conf.key_file, insecure=not conf.verify_ssl)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=None if self.insecure else self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def object_path(plural: str, namespace: str, name: str | None = None) -> str:
    try:
        prefix = RESOURCES[plural]
    except KeyError:
        raise ValueError(f"resource {plural!r} is not one Fluxbee manages") from None
    path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


class KubeClient:
    """get/list/create/patch/delete of namespaced objects.  Owns its session: use ``async with``."""

    def __init__(self, config: KubeConfig, *, limit: int = 32, timeout: float = 30.0,
                 user_agent: str = "fluxbee") -> None:
        self._config = config
        self._limit = limit
        self._timeout = timeout
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._config.token:
            headers["Authorization"] = f"Bearer {self._config.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=self._config.ssl_context(), limit=self._limit),
            timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                       query: Mapping[str, str] | None = None) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("KubeClient used outside `async with`")
        url = self._config.server.rstrip("/") + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                status, reason = resp.status, str(resp.reason)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError(0, "Unreachable", f"the API server did not answer: {err!r}", method=method,
                           path=path) from err
        if status >= 400:
            message = text[:500]
            try:
                obj = json.loads(text)
                reason, message = str(obj.get("reason", reason)), str(obj.get("message", message))
            except (ValueError, AttributeError):
                pass
            raise ApiError(status, reason, message, method=method, path=path)
        parsed = json.loads(text) if text else {}
        return parsed if isinstance(parsed, dict) else {}

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", object_path(plural, namespace, name))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def list(self, plural: str, namespace: str, labels: Mapping[str, str] | None = None
                   ) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        answer = await self._request("GET", object_path(plural, namespace), query=query)
        items = [i for i in answer.get("items") or [] if isinstance(i, dict)]
        return [i for i in items if _labels_match(i, labels)]  # re-checked: a lax server may ignore it

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", object_path(plural, namespace), body=body)

    async def patch(self, plural: str, namespace: str, name: str, body: Any, *, subresource: str | None = None,
                    content_type: str = MERGE_PATCH) -> dict[str, Any]:
        path = object_path(plural, namespace, name)
        if subresource:
            path += f"/{subresource}"
        return await self._request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        try:
            await self._request("DELETE", object_path(plural, namespace, name))
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return True


def _labels_match(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """Client-side check of an equality selector."""
    if not labels:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
