"""The HTTP face of the admin actions (aiohttp).

Every answer is the envelope ``{status, action, payload, error_code, error_detail}`` (``/health`` and
``/openapi.json`` excepted); bad input gets a 4xx envelope with a reason (the original closed the
connection): a body that is not JSON or not an object, wrong types and unknown fields, a body over
:attr:`AdminSettings.max_body`, an unknown path or method.  When a token is configured every request
but ``/health`` needs ``Authorization: Bearer <token>``; :func:`check_settings` refuses to serve
beyond loopback without one.  A body nested deeper than :attr:`AdminSettings.max_depth` is refused
(it would exhaust the parser's recursion); slow clients and connection floods are bounded by
:mod:`fluxbee.admin.guard` and the body timeout here.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fluxbee.admin.actions import HIVE_QUERY_SWITCH, ROUTES, Call, Context, Route, dispatch
from fluxbee.admin.errors import SYNC_PENDING, AdminError, envelope, error_envelope
from fluxbee.admin.guard import ConnectionGuard, GuardedSite
from fluxbee.dataplane import env
from fluxbee.dataplane.env import SettingsError

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class AdminSettings:
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs ``token``."""
    port: int = 8080
    """TCP port (0: any free port)."""
    token: str | None = None
    """Bearer token; required for every request but ``/health`` when set."""
    max_body: int = 1 << 20
    """Largest request body accepted (bytes); larger gets 413 PAYLOAD_TOO_LARGE."""
    max_depth: int = 64
    """Deepest nesting of arrays and objects accepted in a body; deeper gets 400 INVALID_JSON (a body
    nested 100,000 deep overflowed the parser's recursion)."""
    header_timeout: float = env.ADMIN_HEADER_TIMEOUT.default
    """Seconds a connection may take to send a request's line and headers (from its opening or the
    previous answer); then 408 REQUEST_TIMEOUT and the connection is closed (idle ones: closed)."""
    body_timeout: float = env.ADMIN_BODY_TIMEOUT.default
    """Seconds a request may take to send its body once its headers are in; then 408 REQUEST_TIMEOUT."""
    max_connections: int = env.ADMIN_MAX_CONNECTIONS.default
    """Open connections served at once; more are answered 503 TOO_MANY_CONNECTIONS and closed."""

    @classmethod
    def with_limits_from_env(cls, environ: Mapping[str, str], **fields: Any) -> AdminSettings:
        """Settings with the limits read from ``FLUXBEE_ADMIN_HEADER_TIMEOUT``,
        ``FLUXBEE_ADMIN_BODY_TIMEOUT`` and ``FLUXBEE_ADMIN_MAX_CONNECTIONS`` (unset: the defaults
        above); a bad value raises :class:`SettingsError` naming the variable."""
        return cls(header_timeout=env.ADMIN_HEADER_TIMEOUT.read(environ),
                   body_timeout=env.ADMIN_BODY_TIMEOUT.read(environ),
                   max_connections=env.ADMIN_MAX_CONNECTIONS.read(environ), **fields)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, token_file: str | None = None,
                 file_flag: str = "--token-file", **fields: Any) -> AdminSettings:
        """Settings from the environment: the limits (:meth:`with_limits_from_env`) and the bearer
        token (``token_file`` named by ``file_flag``, else ``$FLUXBEE_ADMIN_TOKEN``:
        :func:`fluxbee.dataplane.env.admin_token`).  Raises :class:`SettingsError` naming the
        variable, flag or file at fault."""
        environ = os.environ if environ is None else environ
        token = env.admin_token(environ, token_file=token_file, file_flag=file_flag)
        return cls.with_limits_from_env(environ, token=token, **fields)


CTX_KEY = web.AppKey("ctx", Context)
SETTINGS_KEY = web.AppKey("settings", AdminSettings)
GUARD_KEY = web.AppKey("guard", ConnectionGuard)



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: AdminSettings) -> None:
    if not is_loopback(settings.host) and not settings.token:
        raise SettingsError(f"the admin API binds {settings.host}, which is not loopback: a bearer token is "
                            "required (set FLUXBEE_ADMIN_TOKEN or --admin-token-file)")


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, separators=(",", ":")), status=status, content_type="application/json")


def _error(action: str | None, err: AdminError) -> web.Response:
    return _json(error_envelope(action, err.code, err.detail, err.payload), err.http_status)


_HTTP_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
               405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    settings: AdminSettings = request.app[SETTINGS_KEY]
    if settings.token and request.path != "/health":
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            return _error(None, AdminError("UNAUTHORIZED", "missing or wrong bearer token"))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "INVALID_REQUEST")
        detail = exc.text or exc.reason
        if exc.status == 404:
            detail = f"no route {request.method} {request.path}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            detail = f"the body is larger than {settings.max_body} bytes"
        return _json(error_envelope(None, code, detail), exc.status if exc.status < 500 else 400)


@web.middleware
async def _paced(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """No header deadline while a request is handled; a fresh one for the next (see guard.py)."""
    guard = request.app[GUARD_KEY]
    guard.request_started(request)
    try:
        return await handler(request)
    finally:
        guard.request_done(request)


def _convert(name: str, kind: type, raw: str) -> Any:
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise AdminError("INVALID_REQUEST", f"query parameter {name}: expected an integer, got {raw!r}") from None
    if kind is bool:
        low = raw.lower()
        if low in ("1", "true", "yes"):
            return True
        if low in ("0", "false", "no"):
            return False
        raise AdminError("INVALID_REQUEST", f"query parameter {name}: expected true/false, got {raw!r}")
    return raw


async def _body(request: web.Request, route: Route, settings: AdminSettings) -> dict[str, Any] | None:
    max_body = settings.max_body
    if request.content_length is not None and request.content_length > max_body:
        raise AdminError("PAYLOAD_TOO_LARGE", f"the body is larger than {max_body} bytes")
    try:
        async with asyncio.timeout(settings.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise AdminError("REQUEST_TIMEOUT", f"the body did not arrive within {settings.body_timeout:g} s") from None
    if not raw.strip():
        if route.body_required:
            raise AdminError("INVALID_REQUEST", "a JSON object body is required")
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise AdminError("INVALID_JSON", f"the body is not valid JSON: {err}") from None
    except RecursionError:  # nested beyond the parser's reach
        raise AdminError("INVALID_JSON", f"the body is nested deeper than {settings.max_depth} levels") from None
    if _depth(doc) > settings.max_depth:  # what is accepted must also be safe to walk, store and echo
        raise AdminError("INVALID_JSON", f"the body is nested deeper than {settings.max_depth} levels")
    if not isinstance(doc, dict):
        raise AdminError("INVALID_REQUEST", f"the body must be a JSON object, not {type(doc).__name__}")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON document, without recursion (1 for a flat object)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return deepest


def make_handler(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        ctx = request.app[CTX_KEY]
        settings = request.app[SETTINGS_KEY]
        action = route.action
        try:
            target = request.match_info.get("hive")
            params: dict[str, Any] = dict(route.fixed)
            for var, field_name in route.path_params.items():
                params[field_name] = request.match_info[var]
            for name, kind in route.query.items():
                if name in request.query:
                    value = _convert(name, kind, request.query[name])
                    if name in route.query_fields:
                        params[route.query_fields[name]] = value
                    elif name == "hive":
                        target = value
                        action = HIVE_QUERY_SWITCH.get(action, action)
                    else:
                        params[name] = value
            if target is None and "hive" in route.query and action not in HIVE_QUERY_SWITCH:
                target = ctx.backend.hive_id  # global /routes, /vpns: the local hive's (as in the original)
            if route.body != "none":
                body = await _body(request, route, settings)
                if body is not None and route.body == "config":
                    params["config"] = body
                elif body is not None:
                    clash = sorted(set(body) & set(params))
                    if clash:
                        raise AdminError("INVALID_REQUEST", f"{', '.join(clash)}: given by the path or query; "
                                                            "leave it out of the body")
                    params.update(body)
            payload = await dispatch(ctx, action, target, params, Call("admin_api", request.remote or "http"))
        except AdminError as err:
            if err.code == "REQUEST_TIMEOUT":  # the rest of the body may still trickle in: do not wait for it
                resp = _error(action, err)
                resp.force_close()
                return resp
            return _error(action, err)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(action, AdminError("INTERNAL_ERROR", "the admin API failed; see its log"))
        doc = envelope(action, payload)
        return _json(doc, 202 if doc["status"] == SYNC_PENDING else 200)

    handle.__name__ = f"http_{route.action}"
    return handle


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _openapi(request: web.Request) -> web.Response:
    from fluxbee.admin.openapi import openapi_document

    return _json(openapi_document())


def build_app(ctx: Context, settings: AdminSettings) -> web.Application:
    app = web.Application(middlewares=[_paced, _guard], client_max_size=settings.max_body)
    app[CTX_KEY] = ctx
    app[SETTINGS_KEY] = settings
    app[GUARD_KEY] = ConnectionGuard(max_connections=settings.max_connections, header_timeout=settings.header_timeout)
    app.router.add_get("/health", _health, allow_head=False)
    app.router.add_get("/openapi.json", _openapi, allow_head=False)
    for route in ROUTES:
        for path in (route.path, route.path + "/"):  # the original tolerates a trailing slash
            app.router.add_route(route.method, path, make_handler(route))
    return app


def admin_site(runner: web.AppRunner, settings: AdminSettings) -> web.BaseSite:
    """The TCP site to serve ``runner``'s app on, behind its connection limits."""
    return GuardedSite(runner, settings.host, settings.port, runner.app[GUARD_KEY])
