"""The management API fuzzed from its OpenAPI document (schemathesis: valid and invalid
parameters and bodies for every operation) against a running consumer daemon: never a 5xx,
every status, content type and body as the document says.

Ids in paths are generated, so most answers are 404s in the error shape; the lists answer
the negotiation and transfer the space made, the search what the registry holds
(tests/managed_space.py).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from connector.adapters.http.openapi import document
from tests.managed_space import ManagedSpace

schema = schemathesis.openapi.from_dict(document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Examples per operation (18 operations, about 500 requests in all).
EXAMPLES = 25


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_management_api_matches_its_document(case: schemathesis.Case,
                                             managed_space: ManagedSpace) -> None:
    base, headers = managed_space.management(managed_space.consumer)
    case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=60)
