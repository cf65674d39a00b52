"""A small async client for the Kubernetes REST API (aiohttp), shared by the operator and the admin API.

Both talk to the API server with plain dicts (exactly the manifests the pure builders return) and
must not import each other (import contract), so the client lives here.  Errors carry the API
server's status and reason (:class:`ApiError`); an API server that does not answer is status 0.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yaml

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where Kubernetes mounts a pod's service account (token, ca.crt, namespace)."""
SERVICE_ACCOUNT_DIR_ENV = "FLUXBEE_SERVICE_ACCOUNT_DIR"
"""Overrides :data:`SERVICE_ACCOUNT_DIR` (tests, or a token projected elsewhere)."""

RESOURCES: dict[str, str] = {
    "pods": "/api/v1",
    "configmaps": "/api/v1",
    "services": "/api/v1",
    "secrets": "/api/v1",
    "daemonsets": "/apis/apps/v1",
    "deployments": "/apis/apps/v1",
    "statefulsets": "/apis/apps/v1",
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


class KubeConfigError(ValueError):
    """No usable way to reach and log in to an API server; the message names what is missing."""


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to log in to it.

    One value serves both clients of the API: :class:`KubeClient` (the handlers' and the admin
    API's calls) and kopf's own watch connection (``fluxbee.operator.kube.connection_info``),
    so the operator logs in exactly as the admin API does.  Inline kubeconfig data is kept as
    PEM text here; it is written to a private temporary file only for the moment
    :meth:`ssl_context` loads it (Python's ``ssl`` cannot load a client key from memory).
    """

    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    ca_data: str | None = None
    """PEM text of the CA (kubeconfig ``certificate-authority-data``)."""
    cert_data: str | None = None
    """PEM text of the client certificate (kubeconfig ``client-certificate-data``)."""
    key_data: str | None = None
    """PEM text of the client key (kubeconfig ``client-key-data``)."""
    namespace: str | None = None
    """The namespace of the service account, or of the kubeconfig context (None: not given)."""
    source: str = ""
    """Where this came from (``in-cluster service account in DIR``, ``kubeconfig FILE, context C``)."""
    plugin: str | None = None
    """``exec`` or ``auth-provider``: the kubeconfig user's token comes from that plugin."""

    @classmethod
    def from_environment(cls, server: str | None = None,
                         env: Mapping[str, str] | None = None) -> KubeConfig:
        """``server`` if given (no auth: a test API server or ``kubectl proxy``), else the in-cluster
        service account, else the current context of ``$KUBECONFIG`` (or ``~/.kube/config``).

        In a cluster, ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` name the API server
        and the service-account directory (``$FLUXBEE_SERVICE_ACCOUNT_DIR``, default
        ``/var/run/secrets/kubernetes.io/serviceaccount``) holds ``token``, ``ca.crt`` and
        ``namespace``.  Raises :class:`KubeConfigError` naming what is missing.
        """
        env = os.environ if env is None else env
        if server:
            return cls(server=server.rstrip("/"), insecure=True, source=f"--kube-api {server}")
        sa_dir = Path(env.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR)
        host = env.get("KUBERNETES_SERVICE_HOST")
        if host and (sa_dir / "token").exists():
            return cls.in_cluster(sa_dir, host, env.get("KUBERNETES_SERVICE_PORT") or "443")
        paths = [p for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p]
        if not paths:
            default = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
            if not default.exists():
                why = (f"KUBERNETES_SERVICE_HOST is set but there is no {sa_dir / 'token'}" if host
                       else "KUBERNETES_SERVICE_HOST is not set")
                raise KubeConfigError(
                    f"not in a cluster ({why}; {SERVICE_ACCOUNT_DIR_ENV} names another "
                    f"service-account directory) and no kubeconfig (KUBECONFIG is not set and "
                    f"{default} does not exist)")
            paths = [str(default)]
        return cls.from_kubeconfig_files([Path(p).expanduser() for p in paths])

    @classmethod
    def in_cluster(cls, sa_dir: Path, host: str, port: str) -> KubeConfig:
        """The pod's service account: its token, the cluster CA, its namespace."""
        token = _read(sa_dir / "token", "the service-account token").strip()
        if not token:
            raise KubeConfigError(f"the service-account token {sa_dir / 'token'} is empty")
        ca = sa_dir / "ca.crt"
        if not ca.exists():
            raise KubeConfigError(f"in-cluster login needs the cluster CA, and {ca} does not exist")
        ns_file = sa_dir / "namespace"
        namespace = _read(ns_file, "the service-account namespace").strip() if ns_file.exists() else None
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", token=token, ca_file=str(ca),
                   namespace=namespace or None, source=f"in-cluster service account in {sa_dir}")

    @classmethod
    def from_kubeconfig_files(cls, paths: list[Path], context: str | None = None) -> KubeConfig:
        """The current (or the named) context of one or more kubeconfig files, merged as kubectl
        merges ``$KUBECONFIG``: the first file that sets a value or defines a name wins."""
        docs: list[tuple[Path, Mapping[str, Any]]] = []
        for path in paths:
            try:
                doc = yaml.safe_load(_read(path, "the kubeconfig")) or {}
            except yaml.YAMLError as err:
                raise KubeConfigError(f"kubeconfig {path} is not YAML: {err}") from err
            if not isinstance(doc, Mapping):
                raise KubeConfigError(f"kubeconfig {path} is not a mapping")
            docs.append((path, doc))
        config = cls.from_kubeconfig(docs, context)
        if config.needs_plugin:
            return _plugin_login(config, paths, context)
        return config

    @classmethod
    def from_kubeconfig(cls, docs: list[tuple[Path, Mapping[str, Any]]],
                        context: str | None = None) -> KubeConfig:
        """Pure part of :meth:`from_kubeconfig_files`: parsed documents (with the file each came
        from, for relative paths and errors) → a config, or a :class:`KubeConfigError`."""
        where = ", ".join(str(p) for p, _ in docs)
        current = context
        named: dict[str, dict[str, tuple[Path, Mapping[str, Any]]]] = {
            "contexts": {}, "clusters": {}, "users": {}}
        for path, doc in docs:
            if current is None and doc.get("current-context"):
                current = str(doc["current-context"])
            for section, entries in named.items():
                for item in doc.get(section) or []:
                    key = section[:-1]  # "context", "cluster", "user"
                    if isinstance(item, Mapping) and "name" in item and item["name"] not in entries:
                        body = item.get(key)
                        entries[str(item["name"])] = (path, body if isinstance(body, Mapping) else {})
        if current is None:
            raise KubeConfigError(f"kubeconfig {where} sets no current-context")
        if current not in named["contexts"]:
            raise KubeConfigError(f"kubeconfig {where}: context {current!r} is not defined")
        _, ctx = named["contexts"][current]
        cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
        if not cluster_name or cluster_name not in named["clusters"]:
            raise KubeConfigError(f"kubeconfig {where}: context {current!r} names no defined cluster "
                                  f"(cluster: {cluster_name!r})")
        cluster_path, cluster = named["clusters"][cluster_name]
        server = cluster.get("server")
        if not isinstance(server, str) or not server:
            raise KubeConfigError(f"kubeconfig {cluster_path}: cluster {cluster_name!r} has no server")
        source = f"kubeconfig {where}, context {current!r}"
        kwargs: dict[str, Any] = {
            "server": server.rstrip("/"),
            "insecure": bool(cluster.get("insecure-skip-tls-verify")),
            "ca_file": _path(cluster_path, cluster.get("certificate-authority")),
            "ca_data": _pem(cluster.get("certificate-authority-data"), "certificate-authority-data",
                            cluster_path),
            "namespace": str(ctx["namespace"]) if ctx.get("namespace") else None,
            "source": source,
        }
        user: Mapping[str, Any] = {}
        user_path = cluster_path
        if user_name is not None and user_name in named["users"]:
            user_path, user = named["users"][user_name]
        elif user_name is not None:
            raise KubeConfigError(f"kubeconfig {where}: context {current!r} names user {user_name!r}, "
                                  f"which is not defined")
        token = user.get("token")
        token_file = _path(user_path, user.get("tokenFile"))
        if not token and token_file:
            token = _read(Path(token_file), f"the tokenFile of user {user_name!r}").strip()
        kwargs.update(
            token=str(token) if token else None,
            cert_file=_path(user_path, user.get("client-certificate")),
            cert_data=_pem(user.get("client-certificate-data"), "client-certificate-data", user_path),
            key_file=_path(user_path, user.get("client-key")),
            key_data=_pem(user.get("client-key-data"), "client-key-data", user_path),
        )
        has_cert = bool(kwargs["cert_file"] or kwargs["cert_data"])
        has_key = bool(kwargs["key_file"] or kwargs["key_data"])
        if has_cert != has_key:
            missing = "client-key (or client-key-data)" if has_cert else \
                "client-certificate (or client-certificate-data)"
            raise KubeConfigError(f"{source}: user {user_name!r} has a client "
                                  f"{'certificate' if has_cert else 'key'} but no {missing}")
        plugin = "exec" if user.get("exec") else "auth-provider" if user.get("auth-provider") else None
        if plugin is not None and not kwargs["token"] and not has_cert:
            kwargs["source"] = f"{source}, user {user_name!r} via its {plugin} plugin"
            return cls(**kwargs, plugin=plugin)
        if not kwargs["token"] and not has_cert and server.startswith("https"):
            raise KubeConfigError(
                f"{source}: user {user_name!r} has no credentials: give it a token (or tokenFile), "
                f"a client-certificate and client-key (file or -data), or an exec plugin"
                if user_name is not None else
                f"{source}: the context names no user, and {server} needs one to log in")
        return cls(**kwargs)

    @property
    def needs_plugin(self) -> bool:
        """A kubeconfig user whose token only an exec/auth-provider plugin can produce."""
        return self.plugin is not None and not self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=None if self.insecure else self.ca_file,
                                         cadata=None if self.insecure else self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            with tempfile.TemporaryDirectory(prefix="fluxbee-kube-") as tmp:  # mode 0700
                cert = self.cert_file or _private_file(Path(tmp) / "client.crt", self.cert_data or "")
                key = self.key_file or _private_file(Path(tmp) / "client.key", self.key_data or "")
                ctx.load_cert_chain(cert, key)
        return ctx


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise KubeConfigError(f"cannot read {what} {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise KubeConfigError(f"{what} {path} is not UTF-8 text") from err


def _path(origin: Path, value: object) -> str | None:
    """A kubeconfig file path; relative ones are relative to the file that holds them."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else origin.parent / path)


def _pem(value: object, field: str, origin: Path) -> str | None:
    """A kubeconfig ``*-data`` field: base64 of PEM text."""
    if not value:
        return None
    try:
        text = base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, ValueError) as err:
        raise KubeConfigError(f"kubeconfig {origin}: {field} is not base64 of PEM text") from err
    if "-----BEGIN " not in text:
        raise KubeConfigError(f"kubeconfig {origin}: {field} does not hold PEM text")
    return text


def _private_file(path: Path, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    return str(path)


def _plugin_login(config: KubeConfig, paths: list[Path], context: str | None) -> KubeConfig:
    """Run the user's exec/auth-provider plugin through the official client's loader.

    Only the token is taken from it: the plugin protocols (cloud login helpers) are the
    official client's to follow.  A plugin token expires; a restart fetches a new one.
    """
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    conf = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(str(p) for p in paths), context=context,
            client_configuration=conf)
    except Exception as err:  # the loader raises many types, all meaning "the plugin failed"
        raise KubeConfigError(f"{config.source} failed: {err}") from err
    api_key = conf.api_key or {}
    auth = api_key.get("authorization") or api_key.get("BearerToken")
    token = auth.removeprefix("Bearer ").strip() if isinstance(auth, str) else ""
    if not token:
        raise KubeConfigError(f"{config.source} gave no token")
    return dataclasses.replace(config, token=token)


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
            # Connect and read deadlines, not a total: a total also counts the wait for one of the
            # ``limit`` pooled connections, so in a burst (500 FluxNodes deleted at once) queued requests
            # timed out before they were ever sent. A server that stops answering still times out.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout))
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
