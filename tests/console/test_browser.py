"""The console in a real browser (Playwright driving Debian's headless Chromium) against real
daemons: search -> confirm and negotiate -> agreement -> pull with live progress -> the
provider revokes -> the consumer's transfer shows TERMINATED with the reason; and a denied
negotiation shows the failing constraint in words. Screenshots go to the test's folder (and
to CONSOLE_SCREENSHOTS when set: `CONSOLE_SCREENSHOTS=docs` refreshes the README's).

Waits are Playwright's polling assertions (generous deadlines), never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from connector.client import Management
from connector.config import load_settings
from connector.participant.trust import add_trusted_peer
from tests.console.browser_session import console_base, token_of
from tests.console.chromium import chromium_path
from tests.e2e.conftest import BIG_RECORDS
from tests.harness import Participant
from tests.managed_space import ManagedSpace

pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_MS = 60_000


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        # As root Chromium needs --no-sandbox; the pages are our own, on loopback.
        launched = await p.chromium.launch(executable_path=chromium_path(), headless=True,
                                           args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Any:
    folders = [tmp_path] + ([Path(os.environ["CONSOLE_SCREENSHOTS"])]
                            if os.environ.get("CONSOLE_SCREENSHOTS") else [])

    async def shot(page: Page, name: str) -> None:
        for folder in folders:
            await page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)
        assert (tmp_path / f"console-{name}.png").stat().st_size > 0

    return shot


async def open_console(browser: Browser, who: Participant, language: str = "en"
                       ) -> tuple[Page, list[str]]:
    """A page logged in to ``who``'s console by typing the token, and the console errors
    (a CSP violation would show there)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url')}")
            if m.type == "error" else None)
    await page.goto(f"{console_base(who)}/")
    await expect(page).to_have_url(f"{console_base(who)}/login")
    if language != "en":
        await page.goto(f"{console_base(who)}/login?lang={language}")
    await page.fill("#token", token_of(who))
    await page.click("#login")
    await expect(page).to_have_url(f"{console_base(who)}/")
    return page, errors


async def test_negotiate_pull_and_revoke_in_the_browser(
        managed_space: ManagedSpace, browser: Browser, shots: Any) -> None:
    space = managed_space
    page, errors = await open_console(browser, space.consumer)
    await shots(page, "overview")

    # Discover: the registry finds the dataset, its provider's catalogue offers it.
    await page.click("text=Discover")
    await page.fill("#q", "big")
    await page.click("#search")
    row = page.locator("#results tr", has_text="big")
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await row.locator(".catalog-link").click()
    await page.locator("#dataset-big .negotiate").click()

    # The confirmation names the policy; nothing is sent before the box is ticked.
    policy = page.locator("#policy-id")
    await expect(policy).to_have_text("urn:offer:big:members-only")
    await expect(page.locator("#policy")).to_contain_text("membership is active")
    await shots(page, "confirm")
    await page.check("#accept")
    await page.click("#confirm")

    # The negotiation, followed live, ends FINALIZED with an agreement.
    await expect(page.locator("#state")).to_have_text("FINALIZED", timeout=WAIT_MS)
    await expect(page.locator("#agreement")).to_be_visible()
    await expect(page.locator("#timeline")).to_contain_text("ContractAgreementMessage")
    await shots(page, "negotiation")
    negotiation = page.url

    # A transfer under the agreement, pulled with live progress, verified and completed.
    await page.click("#start-transfer")
    await expect(page.locator("#state")).to_have_text("STARTED", timeout=WAIT_MS)
    await page.click("#pull")
    await expect(page.locator("#progress")).to_be_visible()
    seen = await _watch_records(page)
    await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(page.locator("#records")).to_have_text(str(BIG_RECORDS), timeout=WAIT_MS)
    assert seen[-1] <= BIG_RECORDS and seen == sorted(seen)
    await shots(page, "pull")

    # A second transfer is running when the provider revokes the agreement.
    await page.goto(negotiation)
    agreement = (await page.locator("#agreement").inner_text()).strip()
    await page.click("#start-transfer")
    await expect(page.locator("#state")).to_have_text("STARTED", timeout=WAIT_MS)
    running = page.url.rsplit("/", 1)[1]

    provider, provider_errors = await open_console(browser, space.provider)
    await provider.click("text=Agreements")
    card = provider.locator(f"article[id='agreement-{agreement}']")
    await card.locator(".reason").fill("consent withdrawn by the data subject")
    await card.locator(".revoke-button").click()
    await expect(provider.locator("#revoked")).to_contain_text("consent withdrawn")
    await expect(provider.locator("#stopped")).to_contain_text(running)
    await shots(provider, "revoked")

    # The consumer's page, still open, turns TERMINATED and says why.
    await expect(page.locator("#state")).to_have_text("TERMINATED", timeout=WAIT_MS)
    await expect(page.locator("#reason")).to_contain_text("consent withdrawn by the data subject")
    await shots(page, "terminated")
    assert errors == [] and provider_errors == []


async def _watch_records(page: Page, total: int = BIG_RECORDS) -> list[int]:
    """The record counts the progress line showed, read until the stream is done."""
    seen: list[int] = []
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        text = await page.locator("#records").inner_text()
        seen.append(int(text))
        if seen[-1] == total or await page.locator("#pull-error").count():
            break
        await asyncio.sleep(0.1)
    return seen


async def _catalogue_shows(space: ManagedSpace, dataset: str, shown: bool) -> None:
    """Wait until the provider shows (or hides) ``dataset`` to the consumer: it has read an
    edit of its trust folder (it checks the folder every second)."""
    api = Management(load_settings(space.consumer.dir))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            doc = await api.call("GET", f"/api/catalog?provider={space.provider.url}")
            ids = {d.get("@id") for d in doc.get("dataset", [])}
            if (dataset in ids) == shown:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{dataset} still {'hidden' if shown else 'shown'}")
    finally:
        await api.close()


async def test_a_denied_negotiation_shows_the_failing_constraint(
        managed_space: ManagedSpace, browser: Browser, shots: Any) -> None:
    """The consumer confirms an offer it saw; meanwhile the provider stopped counting it a
    member: the provider refuses, and the page says which constraint failed."""
    space = managed_space
    page, errors = await open_console(browser, space.consumer, "fr")
    await page.goto(f"{console_base(space.consumer)}/discover?provider={space.provider.url}")
    await page.locator("#dataset-big .negotiate").click()
    await expect(page.locator("#policy-id")).to_have_text("urn:offer:big:members-only")
    add_trusted_peer(space.provider.dir, space.consumer.dir,
                     attributes={"membership": "lapsed"}, tls_cert=None)
    try:
        await _catalogue_shows(space, "big", shown=False)
        await page.check("#accept")
        await page.click("#confirm")
        await expect(page.locator("#state")).to_have_text("TERMINATED", timeout=WAIT_MS)
        await expect(page.locator("#reason")).to_contain_text("membership")
        await shots(page, "denied")
    finally:
        add_trusted_peer(space.provider.dir, space.consumer.dir,
                         attributes={"membership": "active"}, tls_cert=None)
        await _catalogue_shows(space, "big", shown=True)
    assert errors == []


DRIPPED = 6_000  # records the slow upstream serves, DRIP_BLOCKS blocks a DRIP_PAUSE_S apart
DRIP_BLOCKS, DRIP_PAUSE_S = 30, 0.1


class _Drip(BaseHTTPRequestHandler):
    """An upstream that serves its JSON lines slowly, so a push of them can be watched."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        per_block = DRIPPED // DRIP_BLOCKS
        for block in range(DRIP_BLOCKS):
            first = block * per_block
            self.wfile.write("".join(f'{{"seq": {i}}}\n'
                                     for i in range(first, first + per_block)).encode())
            self.wfile.flush()
            time.sleep(DRIP_PAUSE_S)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def dripped_dataset(space: ManagedSpace) -> Iterator[None]:
    """The provider offers ``dripped`` for push, read from a slow upstream on loopback."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    decl = space.provider.dir / "datasets" / "dripped.toml"
    decl.write_text(
        'id = "dripped"\ntitle = "Dripped"\ndescription = "records that come slowly"\n'
        'keywords = ["slow"]\npolicies = ["members-only"]\n'
        'formats = ["HttpData-PULL", "HttpData-PUSH"]\n[source]\ntype = "http"\n'
        f'url = "http://127.0.0.1:{server.server_port}/records"\nformat = "jsonl"\n')
    try:
        yield
    finally:
        decl.unlink()
        server.shutdown()
        server.server_close()


async def _negotiated(page: Page, space: ManagedSpace, dataset: str) -> None:
    """Negotiate ``dataset`` from the provider's catalogue, confirmed; the page ends on the
    FINALIZED negotiation."""
    await page.goto(f"{console_base(space.consumer)}/discover?provider={space.provider.url}")
    await page.locator(f"#dataset-{dataset} .negotiate").click()
    await page.check("#accept")
    await page.click("#confirm")
    await expect(page.locator("#state")).to_have_text("FINALIZED", timeout=WAIT_MS)


async def test_a_push_shows_live_progress_on_both_sides(
        managed_space: ManagedSpace, browser: Browser, shots: Any) -> None:
    """The consumer has the provider push: its transfer page shows the records, bytes and
    rate arriving, then COMPLETED; the list shows the same figures; the provider's pages show
    what it sent."""
    space = managed_space
    page, errors = await open_console(browser, space.consumer)
    with dripped_dataset(space):
        await _catalogue_shows(space, "dripped", shown=True)
        await _negotiated(page, space, "dripped")
        await page.click("#start-push")
        await expect(page.locator("#format")).to_have_text("HttpData-PUSH")
        transfer = page.url.rsplit("/", 1)[1]
        await expect(page.locator("#progress")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#progress h2")).to_have_text("Push received")
        seen = await _watch_records(page, DRIPPED)
        await expect(page.locator("#state")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(page.locator("#records")).to_have_text(str(DRIPPED), timeout=WAIT_MS)
    assert seen == sorted(seen) and seen[-1] <= DRIPPED
    assert len([n for n in seen if 0 < n < DRIPPED]) > 1, seen  # it moved while we watched
    assert int(await page.locator("#bytes").inner_text()) > DRIPPED
    await expect(page.locator("#timeline")).to_contain_text("push copy verified")
    await shots(page, "push")

    # The list shows the stream's figures in the transfer's row.
    await page.goto(f"{console_base(space.consumer)}/transfers")
    cell = page.locator(f"[data-pid='{transfer}'] [data-part='records']")
    await expect(cell).to_have_text(str(DRIPPED), timeout=WAIT_MS)

    # The provider's side of the same transfer: what it pushed.
    provider, provider_errors = await open_console(browser, space.provider)
    await provider.goto(f"{console_base(space.provider)}/transfers?state=COMPLETED")
    pushed = provider.locator("tr", has=provider.locator(
        "[data-part='records']", has_text=str(DRIPPED)))
    await pushed.first.locator("a").first.click()
    await expect(provider.locator("#progress h2")).to_have_text("Push sent")
    await expect(provider.locator("#records")).to_have_text(str(DRIPPED))
    await expect(provider.locator("#state")).to_have_text("COMPLETED")
    assert errors == [] and provider_errors == []
