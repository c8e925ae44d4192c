"""The overview warns of callers' tokens refused (a peer with a bad token knocked), next to
the readiness checks, and counts processes by state."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

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
