"""The action registry, the route table, the error table and the OpenAPI document agree."""

from __future__ import annotations

import re
from pathlib import Path

from fluxbee.admin.actions import ACTIONS, ROUTES
from fluxbee.admin.errors import HTTP_STATUS, http_status
from fluxbee.admin.openapi import openapi_document


def test_every_error_code_the_admin_code_raises_has_a_deliberate_status() -> None:
    source = "".join(p.read_text() for p in Path("fluxbee/admin").rglob("*.py"))
    source += Path("fluxbee/supervisor/store.py").read_text()
    raised = set(re.findall(r'(?:AdminError|StoreError)\("([A-Z_]+)"', source))
    assert raised and raised <= set(HTTP_STATUS), raised - set(HTTP_STATUS)
    assert http_status("NODE_ALREADY_EXISTS") == 409 and http_status("SSH_AUTH_FAILED") == 502


def test_the_openapi_document_lists_exactly_the_served_routes() -> None:
    doc = openapi_document()
    served = {(r.method.lower(), r.path) for r in ROUTES} | {("get", "/health"), ("get", "/openapi.json")}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    assert all(r.action in ACTIONS for r in ROUTES)
    body = doc["paths"]["/hives/{hive}/nodes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"node_name", "runtime"}
