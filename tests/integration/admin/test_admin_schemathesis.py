"""Schemathesis against the served OpenAPI document: no 5xx, and answers that match the document."""

from __future__ import annotations

import schemathesis
from conftest import AdminHive
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from fluxbee.admin.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_the_document_allows_gets_a_server_error(case: schemathesis.Case, hive: AdminHive) -> None:
    response = case.call(base_url=hive.base, timeout=15)
    case.validate_response(response, checks=(not_a_server_error, response_schema_conformance))
