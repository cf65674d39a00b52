"""The OpenAPI 3.1 document, generated from the same route table and parameter models the server uses."""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

from fluxbee import __version__
from fluxbee.admin.actions import ACTIONS, ROUTES, Route

ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["status", "action", "payload", "error_code", "error_detail"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "sync_pending", "error"]},
        "action": {"type": ["string", "null"]},
        "payload": {},
        "error_code": {"type": ["string", "null"]},
        "error_detail": {"type": ["string", "null"]},
    },
}
_TYPES = {int: {"type": "integer"}, bool: {"type": "boolean"}, str: {"type": "string"}}
_REF = "#/components/schemas/{model}"


def _body_schema(route: Route, components: dict[str, Any]) -> dict[str, Any] | None:
    if route.body == "none":
        return None
    if route.body == "config":
        return {"type": "object", "additionalProperties": True,
                "description": "Top-level config keys to set (never `_system`)."}
    model = ACTIONS[route.action].params
    schema = copy.deepcopy(model.model_json_schema(ref_template=_REF))
    components.update(schema.pop("$defs", {}))
    taken = set(route.path_params.values()) | set(route.query)
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in taken}
    schema["properties"] = props
    required = [k for k in schema.get("required", []) if k not in taken]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    schema.pop("title", None)
    return schema


def _query_schema(route: Route, name: str, kind: type) -> dict[str, Any]:
    field = ACTIONS[route.action].params.model_fields.get(name)
    schema: dict[str, Any] = dict(_TYPES[kind])
    if field is not None:
        for meta in field.metadata:
            for attr, key in (("ge", "minimum"), ("le", "maximum"), ("min_length", "minLength"),
                              ("max_length", "maxLength")):
                value = getattr(meta, attr, None)
                if value is not None:
                    schema[key] = value
        if name == "severity":
            schema = {"type": "string", "enum": ["info", "warning", "critical"]}
    return schema


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    action = ACTIONS[route.action]
    params: list[dict[str, Any]] = []
    for var in re.findall(r"{(\w+)}", route.path):
        params.append({"name": var, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}})
    for name, kind in route.query.items():
        required = name in ACTIONS[route.action].params.model_json_schema().get("required", [])
        params.append({"name": name, "in": "query", "required": required, "schema": _query_schema(route, name, kind)})
    op: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', route.path).strip('_')}",
        "summary": action.summary,
        "description": f"Action `{action.name}` (also reachable as ADMIN_COMMAND).",
        "tags": [route.path.split("/")[1]],
        "parameters": params,
        "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": _REF.format(
                model="Envelope")}}}},
            "default": {"description": "error envelope; the status follows error_code",
                        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Envelope")}}}},
        },
    }
    body = _body_schema(route, components)
    if body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": {"application/json": {"schema": body}}}
    return op


@functools.cache
def _build() -> dict[str, Any]:
    components: dict[str, Any] = {"Envelope": ENVELOPE}
    paths: dict[str, Any] = {
        "/health": {"get": {"operationId": "get_health", "summary": "Liveness", "tags": ["health"],
                            "security": [], "responses": {"200": {"description": "ok", "content": {
                                "application/json": {"schema": {"type": "object", "required": ["status"],
                                                                "properties": {"status": {"const": "ok"}}}}}}}}},
        "/openapi.json": {"get": {"operationId": "get_openapi", "summary": "This document", "tags": ["health"],
                                  "responses": {"200": {"description": "OpenAPI document",
                                                        "content": {"application/json": {"schema": {
                                                            "type": "object"}}}},
                                                "default": {"description": "error envelope", "content": {
                                                    "application/json": {"schema": {"$ref": _REF.format(
                                                        model="Envelope")}}}}}}},
    }
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fluxbee admin API (SY.admin)", "version": __version__,
                 "description": "The original SY.admin paths and envelope; errors map to HTTP statuses by "
                                "error_code. A bearer token is required when the server is configured with one."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
    }


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_build())
