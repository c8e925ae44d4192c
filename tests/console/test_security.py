"""The console is secure by default: no session, no page; no CSRF token, no change; a strict
CSP on every answer; the management token never in a URL, a page or a cookie."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from connector.client import Management
from connector.config import load_settings
from connector.console.web import CSP
from tests.console.browser_session import console_base, csrf_of, logged_in, token_of
from tests.managed_space import ManagedSpace

pytestmark = pytest.mark.asyncio(loop_scope="session")


def pages(space: ManagedSpace) -> list[str]:
    provider = quote(space.provider.url, safe="")
    return ["/", "/discover", "/discover?q=weather", f"/discover?provider={provider}",
            f"/discover/confirm?provider={provider}&dataset=example-weather&offer=x",
            "/negotiations", "/negotiations?state=FINALIZED&role=consumer",
            "/transfers", f"/transfers/{space.transfer_id}", "/agreements", "/policies",
            "/audit", "/negotiations/no-such-id"]


async def test_no_session_redirects_to_the_login(managed_space: ManagedSpace) -> None:
    base = console_base(managed_space.consumer)
    async with aiohttp.ClientSession() as http:
        for page in pages(managed_space):
            async with http.get(base + page, allow_redirects=False) as resp:
                assert resp.status == 303, page
                assert resp.headers["Location"] == "/console/login"
        async with http.get(base + "/", cookies={"console_session": "made-up"},
                            allow_redirects=False) as resp:
            assert resp.status == 303


async def test_a_post_without_the_csrf_token_is_refused(managed_space: ManagedSpace) -> None:
    consumer = managed_space.consumer
    base = console_base(consumer)
    form = {"provider": managed_space.provider.url, "dataset": "example-weather",
            "offer": "x", "accept": "yes"}
    api = Management(load_settings(consumer.dir))
    before = len(await api.call("GET", "/api/negotiations"))
    async with logged_in(consumer) as (http, csrf):
        for data in (form, {**form, "csrf": ""}, {**form, "csrf": csrf[:-2] + "xx"}):
            async with http.post(f"{base}/negotiations", data=data,
                                 allow_redirects=False) as resp:
                assert resp.status == 403
        async with http.post(f"{base}/logout", data={}, allow_redirects=False) as resp:
            assert resp.status == 403  # logging out is a change too
        async with http.get(f"{base}/", allow_redirects=False) as resp:
            assert resp.status == 200  # still logged in
    async with aiohttp.ClientSession() as http:  # no session at all
        async with http.post(f"{base}/negotiations", data={**form, "csrf": "x"},
                             allow_redirects=False) as resp:
            assert resp.status == 403
        async with http.post(f"{base}/login", data={"token": token_of(consumer)},
                             allow_redirects=False) as resp:
            assert resp.status == 403  # the login form's own token is missing
    assert len(await api.call("GET", "/api/negotiations")) == before
    await api.close()


async def test_every_answer_carries_the_csp(managed_space: ManagedSpace) -> None:
    base = console_base(managed_space.consumer)
    async with aiohttp.ClientSession() as http:
        for page in ("/login", "/static/console.css", "/static/console.js", "/"):
            async with http.get(base + page, allow_redirects=False) as resp:
                assert resp.headers["Content-Security-Policy"] == CSP, page
    async with logged_in(managed_space.consumer) as (http, _):
        for page in pages(managed_space):
            async with http.get(base + page) as resp:
                assert resp.headers["Content-Security-Policy"] == CSP, page
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert resp.headers["Cache-Control"] == "no-store"
                html = await resp.text()
                assert "<script>" not in html and " style=" not in html, page
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP


async def test_the_token_is_never_in_a_url_a_page_or_a_cookie(
        managed_space: ManagedSpace) -> None:
    consumer = managed_space.consumer
    token, base = token_of(consumer), console_base(consumer)
    async with logged_in(consumer) as (http, _):
        for page in pages(managed_space):
            async with http.get(base + page) as resp:
                assert token not in str(resp.url)
                assert all(token not in str(r.url) for r in resp.history)
                assert token not in await resp.text(), page
        cookies = {c.key: c for c in http.cookie_jar}
        session = cookies["console_session"]
        assert session.value != token and token not in session.value
        assert session["httponly"] and session["samesite"] == "Strict"
        assert session["path"] == "/console"


async def test_a_wrong_token_gets_no_session(managed_space: ManagedSpace) -> None:
    base = console_base(managed_space.consumer)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/login") as resp:
            nonce = csrf_of(await resp.text())
        async with http.post(f"{base}/login", data={"csrf": nonce, "token": "wrong"},
                             allow_redirects=False) as resp:
            assert resp.status == 401
            assert "console_session" not in {c.key for c in http.cookie_jar}
        async with http.get(f"{base}/", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_the_management_api_still_wants_its_token(managed_space: ManagedSpace) -> None:
    """The console's own authentication opens nothing of the API."""
    base = load_settings(managed_space.consumer.dir).management_url
    async with logged_in(managed_space.consumer) as (http, _), http.get(
            f"{base}/api/negotiations") as resp:
        assert resp.status == 401
