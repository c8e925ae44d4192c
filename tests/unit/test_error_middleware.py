"""The one error middleware: the tree's statuses, a bug as 500 with an id in answer and log."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connector.adapters.http.errors import error_middleware
from connector.core.errors import ConfigError, InvalidParameter

# The daemon marks its DSP app with app["dsp"], as this test does.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


async def _bug(request: web.Request) -> web.Response:
    raise KeyError("secret-detail")


async def _config(request: web.Request) -> web.Response:
    raise ConfigError("no registry configured: add [registry] urls to connector.toml")


async def _param(request: web.Request) -> web.Response:
    raise InvalidParameter("offset must be a non-negative integer, not '-1'")


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[tuple[TestClient[web.Request, web.Application],
                                           TestClient[web.Request, web.Application]]]:
    plain = web.Application(middlewares=[error_middleware])
    dsp = web.Application(middlewares=[error_middleware])
    dsp["dsp"] = True
    for app in (plain, dsp):
        app.router.add_get("/api/bug", _bug)
        app.router.add_get("/dsp/2025-1/negotiations/{pid}", _bug)
        app.router.add_get("/api/config", _config)
        app.router.add_get("/api/param", _param)
    async with TestClient(TestServer(plain)) as a, TestClient(TestServer(dsp)) as b:
        yield a, b


async def test_a_bug_is_a_500_with_an_id_that_the_logged_traceback_repeats(
        clients: tuple[TestClient[web.Request, web.Application], ...],
        caplog: pytest.LogCaptureFixture) -> None:
    plain, dsp = clients
    with caplog.at_level(logging.ERROR, logger="connector.http"):
        resp = await plain.get("/api/bug")
        body = await resp.json()
    assert resp.status == 500 and body["error"] == "internal"
    error_id = re.fullmatch(r"internal error ([0-9a-f]{16})", body["message"]).group(1)
    assert "secret-detail" not in str(body)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is KeyError
    assert record.error_id == error_id

    resp = await dsp.get("/dsp/2025-1/negotiations/urn:1")  # the DSP shape on DSP routes
    body = await resp.json()
    assert resp.status == 500 and body["@type"] == "ContractNegotiationError"
    assert body["reason"][0].startswith("internal error ")


@pytest.mark.parametrize(("path", "status", "code"), [("/api/config", 503, "config"),
                                                       ("/api/param", 400, "invalid-parameter")])
async def test_the_tree_is_rendered_with_the_status_each_class_states(
        clients: tuple[TestClient[web.Request, web.Application], ...], path: str,
        status: int, code: str) -> None:
    resp = await clients[0].get(path)
    assert resp.status == status and (await resp.json())["error"] == code
