"""Log in to a daemon's console the way a browser does (form posts, cookies), for the tests
that need no browser; tests/console/test_browser.py drives a real one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser

import aiohttp

from connector.config import load_settings
from tests.harness import Participant


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def console_base(who: Participant) -> str:
    return load_settings(who.dir).management_url + "/console"


def token_of(who: Participant) -> str:
    return load_settings(who.dir).management_token()


@asynccontextmanager
async def logged_in(who: Participant, language: str = "en"
                    ) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A cookie-keeping session logged in to ``who``'s console, and its CSRF token."""
    base = console_base(who)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/login") as resp:
            nonce = csrf_of(await resp.text())
        async with http.post(f"{base}/login", data={"csrf": nonce, "token": token_of(who),
                                                    "lang": language}) as resp:
            assert resp.status == 200, await resp.text()
            csrf = csrf_of(await resp.text())
        yield http, csrf


class TextNodes(HTMLParser):
    """The visible text of a page: text nodes and the labels of inputs, one string each."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("title", "placeholder", "aria-label") and value:
                self.texts.append(value.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))


def visible_texts(html: str) -> list[str]:
    parser = TextNodes()
    parser.feed(html)
    return parser.texts
