"""The admin API's own small async client for the Kubernetes API (aiohttp).

The operator has one too, but the admin API may not import the operator (import contract): the
two talk to each other only through resources.  Bodies are plain dicts; errors carry the API
server's status and reason, and are raised as :class:`KubeError`.
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
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

API_PREFIX: dict[str, str] = {
    "pods": "/api/v1",
    "configmaps": "/api/v1",
    "hives": "/apis/fluxbee.io/v1alpha1",
    "fluxnodes": "/apis/fluxbee.io/v1alpha1",
    "runtimes": "/apis/fluxbee.io/v1alpha1",
}
"""The resources the admin API reads or changes (plural → API prefix); all namespaced."""


class KubeError(Exception):
    """A non-2xx answer of the API server, or no answer at all (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @classmethod
    def from_environment(cls, server: str | None = None) -> KubeAccess:
        """``server`` if given (no auth: a test API or ``kubectl proxy``), else the in-cluster service
        account, else the current kubeconfig context."""
        if server:
            return cls(server=server.rstrip("/"), insecure=True)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if host and (SA_DIR / "token").exists():
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            return cls(server=f"https://{host}:{port}", token=(SA_DIR / "token").read_text().strip(),
                       ca_file=str(SA_DIR / "ca.crt"))
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
    path = f"{API_PREFIX[plural]}/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


class KubeApi:
    """get/list/create/patch/delete of namespaced objects.  Owns its session: use ``async with``."""

    def __init__(self, access: KubeAccess, *, timeout: float = 10.0) -> None:
        self.access = access
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        headers = {"Accept": "application/json", "User-Agent": "fluxbee-admin"}
        if self.access.token:
            headers["Authorization"] = f"Bearer {self.access.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=self.access.ssl_context(), limit=32),
            timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                      query: Mapping[str, str] | None = None) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("KubeApi used outside `async with`")
        url = self.access.server + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                status, reason = resp.status, str(resp.reason)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise KubeError(0, "Unreachable", f"the API server did not answer: {err!r}", method=method,
                            path=path) from err
        if status >= 400:
            message = text[:500]
            try:
                obj = json.loads(text)
                reason, message = str(obj.get("reason", reason)), str(obj.get("message", message))
            except (ValueError, AttributeError):
                pass
            raise KubeError(status, reason, message, method=method, path=path)
        parsed = json.loads(text) if text else {}
        return parsed if isinstance(parsed, dict) else {}

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", object_path(plural, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, plural: str, namespace: str, labels: Mapping[str, str] | None = None
                   ) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        answer = await self.request("GET", object_path(plural, namespace), query=query)
        items = [i for i in answer.get("items") or [] if isinstance(i, dict)]
        if labels:  # re-checked here: a lax server may ignore the selector
            items = [i for i in items if all(((i.get("metadata") or {}).get("labels") or {}).get(k) == v
                                              for k, v in labels.items())]
        return items

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", object_path(plural, namespace), body=body)

    async def patch(self, plural: str, namespace: str, name: str, body: Any, *,
                    content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return await self.request("PATCH", object_path(plural, namespace, name), body=body,
                                  content_type=content_type)

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        try:
            await self.request("DELETE", object_path(plural, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True
