"""The overview warns of callers' tokens refused (a peer with a bad token knocked), next to
the readiness checks, and counts processes by state."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import aiohttp
import pytest

from connector.client import Management
from connector.config import load_settings
from connector.core.binding import DSP_PATH
from tests.console.browser_session import console_base, logged_in
from tests.managed_space import ManagedSpace

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_refused_tokens_are_a_warning(managed_space: ManagedSpace) -> None:
    consumer = managed_space.consumer
    tls = ssl.create_default_context(cafile=str(consumer.dir / "tls" / "cert.pem"))
    headers = {"Authorization": "Bearer not-a-token", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http, \
            http.post(f"{consumer.url}{DSP_PATH}/catalog/request", data=b"{}",
                      headers=headers) as resp:
        assert resp.status == 401
    async with logged_in(consumer) as (http, _), http.get(
            f"{console_base(consumer)}/") as resp:
        html = await resp.text()
    assert 'id="refused"' in html and "Callers&#39; tokens refused since the start" in html
    assert "malformed" in html  # the reason, from the metrics' bounded set
    assert "FINALIZED: <strong>" in html  # the negotiation the space made, by state


async def test_the_provider_sees_the_uses_counted_under_an_agreement(
        managed_space: ManagedSpace, tmp_path: Path) -> None:
    space = managed_space
    api = Management(load_settings(space.consumer.dir))
    try:
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": space.agreement_id})
        pulled = await api.call("POST", f"/api/transfers/{transfer['id']}/pull",
                                {"sink": str(tmp_path / "copy.jsonl")})
        assert pulled["records"] == 10
    finally:
        await api.close()
    async with logged_in(space.provider) as (http, _), http.get(
            f"{console_base(space.provider)}/agreements") as resp:
        html = await resp.text()
    card = html[html.index(f'id="agreement-{space.agreement_id}"'):]
    card = card[:card.index("</article>")]
    uses = re.search(r'<dd class="uses">(\d+)', card)
    assert uses is not None and int(uses.group(1)) >= 1, card
