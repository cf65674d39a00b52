"""Messages the router answers itself: system messages, CONFIG_CHANGED, and refusals of privileged messages.

WITHDRAW, CONFIG_CHANGED for ``routes``/``vpn(s)``, and ROUTER_STATUS_GET / NODE_STATUS_GET addressed to
the router are consumed here; any other system message to the router is UNREACHABLE. A privileged message
its sender may not send (:mod:`fluxbee.dataplane.router.trust`) gets the answer its sender waits for
(an ADMIN_COMMAND_RESPONSE or a CONFIG_RESPONSE with ``FORBIDDEN``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import config_state, status, trust
from fluxbee.dataplane.router.answers import reply, unreachable
from fluxbee.dataplane.router.config import ConfigError, parse_routes, parse_vpns
from fluxbee.dataplane.router.connection import Conn, who
from fluxbee.errors import CodedError

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)


def handle_system(router: Router, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> bool:
    """Handle system messages meant for the router; True if consumed."""
    msg = meta.msg
    routing = env.routing
    to_router = routing.dst in (router.uuid, router.name, router.settings.router_name)
    if msg == wire.WITHDRAW:
        router.unregister(conn)
        router.counters.disconnects["withdraw"] += 1
        conn.closing = True
        if conn.transport is not None:
            conn.transport.close()
        return True
    if msg == wire.CONFIG_CHANGED:
        return config_changed(router, conn, env)
    if msg == wire.OPA_RELOAD:  # whatever its dst, like CONFIG_CHANGED; screen() let only SY.* nodes through
        opa_reload(router, conn, env)
        return True
    if to_router and msg == wire.OPA_DECISIONS_GET:
        try:
            body = msgspec.json.decode(env.payload) if env.payload else None
            page = router.policy.decisions(body)
        except (msgspec.DecodeError, ValueError) as err:
            page = {"status": "error", "error_code": "INVALID_REQUEST", "error_detail": str(err)}
        reply(router, conn, routing, wire.OPA_DECISIONS_GET_RESPONSE, page)
        return True
    if to_router and msg in (wire.LINK_ADD, wire.LINK_REMOVE):
        if router.links is None:
            answer = wire.LINK_ADD_RESPONSE if msg == wire.LINK_ADD else wire.LINK_REMOVE_RESPONSE
            reply(router, conn, routing, answer, {"status": "error", "error_code": "NO_WAN",
                                                  "error_detail": "this router runs no links (no --wan-* flags)"})
        else:
            router.links.control(conn, env, msg)
        return True
    if to_router and msg in (wire.ROUTER_STATUS_GET, wire.NODE_STATUS_GET):
        answer = wire.ROUTER_STATUS_GET_RESPONSE if msg == wire.ROUTER_STATUS_GET else wire.NODE_STATUS_GET_RESPONSE
        try:
            limit, cursor = status_page_request(env.payload)
        except ValueError as err:
            reply(router, conn, routing, answer,
                  {"status": "error", "error_code": "INVALID_REQUEST", "error_detail": str(err)})
            return True
        reply(router, conn, routing, answer, status.status_page(router, limit, cursor))
        return True
    if to_router:
        unreachable(router, conn, routing, wire.NODE_NOT_FOUND, f"the router does not handle {msg}")
        return True
    return False

def opa_reload(router: Router, conn: Conn, env: wire.RawEnvelope) -> None:
    """Load the policy region's artefact OPA_RELOAD names (off the event loop); answer the sender
    OPA_RELOAD_RESPONSE once it runs or was refused."""
    try:
        payload = msgspec.json.decode(env.payload)
    except msgspec.DecodeError:
        payload = None
    routing = wire.Routing(src=env.routing.src, dst=env.routing.dst, ttl=env.routing.ttl,
                           trace_id=env.routing.trace_id)

    async def run() -> None:
        answer = await router.policy.reload(payload)
        if not conn.closing:
            reply(router, conn, routing, wire.OPA_RELOAD_RESPONSE, answer)

    router.policy.spawn(run())


def config_changed(router: Router, conn: Conn, env: wire.RawEnvelope) -> bool:
    """Apply a CONFIG_CHANGED for ``routes`` or ``vpn(s)`` and pass it on to every other node; True if consumed.

    Only frames :func:`decide.screen <fluxbee.dataplane.router.decide.screen>` let through get here, so
    the sender may send CONFIG_CHANGED (an authenticated system node, or granted it).
    """
    try:
        payload = msgspec.json.decode(env.payload)
    except msgspec.DecodeError:
        payload = None
    if not isinstance(payload, dict) or payload.get("subsystem") not in ("routes", "vpn", "vpns"):
        return False  # for nodes: routed like any other message
    subsystem = payload["subsystem"]
    routing = env.routing
    response: dict[str, Any] = {"subsystem": subsystem, "hive": router.hive_id}
    try:
        version = payload.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigRefused("INVALID_PAYLOAD", "version must be a non-negative integer")
        section = "routes" if subsystem == "routes" else "vpns"
        last = getattr(router.section_versions, section)
        if version != 0 and version <= last:
            raise ConfigRefused("STALE_VERSION", f"version {version} is not newer than {last}")
        config = payload.get("config")
        try:
            if section == "routes":
                routes, vpns = parse_routes(config), list(router.registry.table.vpn_specs)
            else:
                routes, vpns = list(router.registry.table.route_specs), parse_vpns(config)
        except ConfigError as err:
            raise ConfigRefused("INVALID_CONFIG", str(err)) from err
        setattr(router.section_versions, section, version or last + 1)
        config_state.apply_config(router, routes, vpns, source="message")
        response.update(status="ok", version=getattr(router.section_versions, section),
                        config_version=router.config_version)
    except ConfigRefused as refused:
        router.counters.config_errors["message"] += 1
        response.update(status="error", error_code=refused.code, error_detail=refused.detail)
    reply(router, conn, routing, wire.CONFIG_RESPONSE, response)
    if response["status"] == "ok":
        routing.src_l2_name = conn.name
        frame = wire.encode_frame(env)
        for other in router.registry.nodes():
            if other is not conn:
                other.send(frame)
    return True


def refuse_privileged(router: Router, conn: Conn, env: wire.RawEnvelope, msg: str) -> None:
    """Refuse a privileged message with the answer its sender waits for."""
    router.counters.forbidden[msg] += 1
    routing = env.routing
    detail = (f"{conn.name} may not send {msg}: only authenticated SY.* nodes and names granted {msg} "
              "in the hive's claims may")
    log.warning("%s from %s (%s) refused FORBIDDEN", msg, conn.name, who(conn))
    if msg == wire.ADMIN_COMMAND:
        try:
            body = msgspec.json.decode(env.payload)
        except msgspec.DecodeError:
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        payload: dict[str, Any] = {"status": "error", "action": action if isinstance(action, str) else None,
                                   "payload": None, "error_code": trust.FORBIDDEN, "error_detail": detail}
        if isinstance(body, dict) and body.get("request_id") is not None:
            payload["request_id"] = body["request_id"]
        conn.send(wire.encode_frame(wire.Message(
            # No src_l2_name: router-generated frames never carry one (as in the original).
            routing=wire.Routing(src=router.uuid, dst=conn.uuid, ttl=wire.DEFAULT_TTL, trace_id=routing.trace_id),
            meta=wire.Meta(type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND_RESPONSE), payload=payload)))
        return
    try:
        body = msgspec.json.decode(env.payload)
    except msgspec.DecodeError:
        body = None
    if msg == wire.OPA_RELOAD:
        reply(router, conn, routing, wire.OPA_RELOAD_RESPONSE,
              {"router": router.name, "status": "error", "error_code": trust.FORBIDDEN, "error_detail": detail})
        return
    if msg in (wire.LINK_ADD, wire.LINK_REMOVE):
        answer = wire.LINK_ADD_RESPONSE if msg == wire.LINK_ADD else wire.LINK_REMOVE_RESPONSE
        reply(router, conn, routing, answer, {"status": "error", "error_code": trust.FORBIDDEN, "error_detail": detail})
        return
    subsystem = body.get("subsystem") if isinstance(body, dict) else None
    reply(router, conn, routing, wire.CONFIG_RESPONSE,
          {"subsystem": subsystem, "hive": router.hive_id, "status": "error",
           "error_code": trust.FORBIDDEN, "error_detail": detail})


class ConfigRefused(CodedError):
    """A CONFIG_CHANGED the router refuses: the error code and detail of its CONFIG_RESPONSE."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail, text=detail)


def status_page_request(raw: msgspec.Raw | bytes) -> tuple[int | None, str | None]:
    """``(limit, cursor)`` from a status request's payload: null, ``{}`` or ``{limit?, cursor?}``.

    Other keys are ignored (the original SDKs send their own); a bad limit or cursor is a ValueError.
    """
    try:
        body = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError as err:
        raise ValueError(f"the payload is not JSON: {err}") from None
    if body is None:
        return None, None
    if not isinstance(body, dict):
        raise ValueError("the payload must be null or an object with `limit` and `cursor`")
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    cursor = body.get("cursor")
    if cursor is not None:
        if not isinstance(cursor, str) or not wire.is_uuid(cursor):
            raise ValueError(f"cursor must be the next_cursor of a previous page, not {cursor!r}")
        cursor = wire.canonical_uuid(cursor)
    return limit, cursor
