"""The management API's OpenAPI document: a valid OpenAPI 3.1 document, covering every route
the daemon serves and nothing else, served at /api/openapi.json; and the checker that the
whole test run applies to every management answer (tests/conftest.py) finds what is wrong."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from connector.adapters.http.management import ManagementApi
from connector.adapters.http.openapi import document
from connector.registry.search import add_search_route
from tests.contract.check import problems
from tests.managed_space import ManagedSpace

NEGOTIATION: dict[str, Any] = {
    "id": "n1", "role": "consumer", "state": "FINALIZED", "consumerPid": "n1",
    "providerPid": "p1", "datasetId": "d", "offer": {}, "counterpartyAddress": "https://x",
    "history": [{"at": 1.0, "by": "policy", "message": "ContractRequestMessage",
                 "state": "REQUESTED", "note": "ok"}], "agreementId": "a1"}


def test_the_document_is_valid_openapi_3_1() -> None:
    assert document()["openapi"] == "3.1.0"
    validate(document())  # raises on any error of the OpenAPI 3.1 schema


def test_every_route_is_documented_and_nothing_else() -> None:
    api = ManagementApi(token="t", store=None, negotiations=None, transfers=None,  # type: ignore[arg-type]
                        client=None, consumer=None)  # type: ignore[arg-type]
    app = api.app()
    add_search_route(app, None)  # type: ignore[arg-type]
    served = {(route.method.lower(), route.resource.canonical)
              for route in app.router.routes()
              if route.method != "HEAD" and route.resource is not None}
    documented = {(method, path) for path, item in document()["paths"].items()
                  for method in item}
    assert sorted(served - documented) == [], "document these in adapters/http/openapi.yaml"
    assert sorted(documented - served) == [], "the document names routes the daemon lacks"


def test_every_operation_documents_the_error_shape() -> None:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            assert operation["responses"]["default"] == {
                "$ref": "#/components/responses/Error"}, (method, path)


def _answer(route: str, status: int, body: str | None, *, method: str = "GET",
            content_type: str = "application/json") -> dict[str, Any]:
    return {"method": method, "route": route, "status": status, "contentType": content_type,
            "body": body}


def test_the_checker_accepts_a_right_answer_and_finds_wrong_ones() -> None:
    import json

    good = json.dumps(NEGOTIATION)
    assert problems(_answer("/api/negotiations/{id}", 200, good)) == []
    assert problems(_answer("/api/negotiations", 200, f"[{good}]")) == []
    error = '{"error": "NotFound", "message": "no negotiation x"}'
    assert problems(_answer("/api/negotiations/{id}", 404, error)) == []
    no_state = json.dumps({k: v for k, v in NEGOTIATION.items() if k != "state"})
    assert "'state' is a required property" in problems(
        _answer("/api/negotiations/{id}", 200, no_state))[0]
    bad_state = json.dumps({**NEGOTIATION, "state": "DONE"})
    assert "state" in problems(_answer("/api/negotiations/{id}", 200, bad_state))[0]
    assert "message" in problems(_answer("/api/catalog", 400, '{"error": "X"}'))[0]
    assert "content type" in problems(_answer("/api/negotiations", 200, "x",
                                              content_type="text/plain"))[0]
    assert "not in the document" in problems(_answer("/api/nowhere", 200, "{}"))[0]
    assert "not in the document" in problems(_answer("/api/negotiations", 200, "{}",
                                                     method="DELETE"))[0]


@pytest.mark.asyncio
async def test_the_daemon_serves_the_document(managed_space: ManagedSpace) -> None:
    base, headers = managed_space.management(managed_space.consumer)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/openapi.json", headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.json() == document()
        async with session.get(base + "/api/openapi.json") as resp:
            assert resp.status == 401  # behind the token like every other route
            assert (await resp.json())["error"]
