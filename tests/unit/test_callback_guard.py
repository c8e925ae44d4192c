"""A peer's callbackAddress cannot aim our connector at internal services (SSRF, issue #4).

Two halves: ``core.hosts.callback_refusal``, checked where an initial DSP message is accepted
(nothing is stored for a refused one), and ``PeerClient``'s guard (``adapters.http.guard``),
which refuses IP-address hosts before sending, and names resolving to refused addresses, or
redirects to them, when connecting.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.adapters.http.client import PeerClient
from connector.core.errors import Area, MalformedMessage, PeerError
from connector.core.hosts import callback_refusal
from connector.core.messages import (
    ContractOfferMessage,
    ContractRequestMessage,
    TransferRequestMessage,
)
from connector.service.auth import Identity
from connector.service.catalog import Claims
from connector.service.negotiations import NegotiationService
from connector.service.store import OutboxItem
from connector.service.transfers import TransferService
from tests.unit.test_fetch_guard import FakeResolver

METADATA = "http://169.254.169.254/x"

# -- core.hosts.callback_refusal -----------------------------------------------------------------


@pytest.mark.parametrize(("url", "why"), [
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
    ("https://169.254.0.1:8443/dsp", "link-local"),
    ("http://[fe80::1]/dsp", "fe80::1 is a link-local address"),
    ("http://[fe80::1%25eth0]:8080/dsp", "link-local"),
    ("http://[::ffff:169.254.169.254]/dsp", "link-local"),  # IPv4-mapped
    ("http://[64:ff9b::a9fe:a9fe]/dsp", "link-local"),  # NAT64
    ("http://0.0.0.0:8080/dsp", "0.0.0.0 is an unspecified address"),
    ("http://[::]/dsp", "unspecified"),
    ("http://224.0.0.1/dsp", "multicast"),
    ("http://[ff02::1]/dsp", "multicast"),
    ("http://255.255.255.255/dsp", "the broadcast address"),
    ("http://user:secret@169.254.169.254/dsp", "link-local"),  # userinfo does not hide it
    ("http://2852039166/dsp", "non-standard form"),  # 169.254.169.254 as one number
    ("http://0xa9fea9fe/dsp", "non-standard form"),
    ("http://0251.0376.0251.0376/dsp", "non-standard form"),
    ("http://169.254.43518/dsp", "non-standard form"),
    ("ftp://consumer.example/dsp", "not an http or https URL"),
    ("file:///etc/passwd", "not an http or https URL"),
    ("/dsp/2025-1", "not an http or https URL"),
    ("consumer.example/dsp", "not an http or https URL"),
    ("", "not an http or https URL"),
    ("http:///dsp", "without a host"),
    ("http:dsp", "without a host"),
    ("http://consumer.example:99999/dsp", "not a URL"),
    ("http://consumer.example:port/dsp", "not a URL"),
    ("http://[zz]/dsp", "not a URL"),
    (" http://consumer.example/dsp", "spaces or control characters"),
    ("http://consumer.example/dsp\r\nX: y", "spaces or control characters"),
])
def test_refused_callback_addresses(url: str, why: str) -> None:
    refusal = callback_refusal(url)
    assert refusal is not None and why in refusal


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8282/api/dsp",  # the TCK's and EDC interop profiles' callbacks
    "http://localhost:8282/api/dsp",
    "http://[::1]:8080/dsp",
    "https://10.0.0.7/dsp", "http://192.168.1.20:8080/dsp", "https://172.16.3.4/dsp",
    "https://[fd00::1]/dsp",
    "https://consumer.example/dsp/2025-1", "HTTPS://Consumer.Example./dsp",
    "https://8.8.8.8/dsp", "https://a-1.members.example:8443/dsp",
])
def test_accepted_callback_addresses(url: str) -> None:
    assert callback_refusal(url) is None


# -- intake: refused before anything is stored ---------------------------------------------------

# No store, catalogue or outbox: a refused message must not reach any of them.
CLAIMS = Claims(participant_id="did:web:consumer.example", attributes={})


def _negotiations() -> NegotiationService:
    return NegotiationService(store=None, catalog=None, outbox=None,  # type: ignore[arg-type]
                              did="did:web:us", dsp_base="https://us/dsp", clock=time.time)


def _transfers() -> TransferService:
    return TransferService(store=None, catalog=None, outbox=None,  # type: ignore[arg-type]
                           did="did:web:us", dsp_base="https://us/dsp",
                           data_url="https://us/data", token_ttl_s=60,
                           claims_for=lambda _: CLAIMS, clock=time.time)


OFFER: dict[str, Any] = {"@id": "urn:offer:1", "@type": "Offer", "target": "d"}


async def test_an_initial_contract_request_to_metadata_is_refused() -> None:
    msg = ContractRequestMessage(consumer_pid="urn:c", offer=OFFER, callback_address=METADATA)
    with pytest.raises(MalformedMessage, match=r"callbackAddress 'http://169\.254\.169\.254/x'"
                                               r" refused: its host 169\.254\.169\.254 is a "
                                               r"link-local address") as caught:
        await _negotiations().on_initial_request(msg, CLAIMS)
    assert caught.value.status == 400 and caught.value.consumer_pid == "urn:c"


async def test_an_initial_contract_offer_to_metadata_is_refused() -> None:
    msg = ContractOfferMessage(provider_pid="urn:p", offer=OFFER,
                               callback_address="http://[fe80::a9fe:a9fe]/dsp")
    with pytest.raises(MalformedMessage, match="link-local") as caught:
        await _negotiations().on_initial_offer(msg, CLAIMS)
    assert caught.value.provider_pid == "urn:p"


async def test_a_transfer_request_to_metadata_is_refused() -> None:
    msg = TransferRequestMessage(consumer_pid="urn:c", agreement_id="urn:a",
                                 format="HttpData-PULL", callback_address=METADATA)
    with pytest.raises(MalformedMessage, match=r"callbackAddress .* refused: .*link-local"
                       ) as caught:
        await _transfers().on_request(msg, CLAIMS)
    assert caught.value.area is Area.TRANSFER and caught.value.consumer_pid == "urn:c"


# -- PeerClient ------------------------------------------------------------------------------------


def _client(answers: dict[str, list[str]]) -> tuple[PeerClient, FakeResolver]:
    identity = Identity(did="did:web:us", kid="did:web:us#key-1",
                        key=Ed25519PrivateKey.generate(), ttl_s=60, clock=time.time)
    fake = FakeResolver(answers)
    return PeerClient(identity, ssl.create_default_context(), resolver=lambda: fake), fake


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain-HTTP peer on loopback: its base URL, and the paths it was sent."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path.startswith("/redirect"):
            raise web.HTTPTemporaryRedirect(request.query["to"])
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_a_name_resolving_to_metadata_is_refused_without_a_request() -> None:
    client, fake = _client({"rebound.attacker.example": ["169.254.169.254"]})
    item = OutboxItem(seq=1, process_id="p", url="http://rebound.attacker.example/dsp/x",
                      audience="did:web:attacker", body=b"{}", attempts=0)
    try:
        with pytest.raises(PeerError, match=r"refused, rebound\.attacker\.example resolves to "
                                            r"169\.254\.169\.254, a link-local") as caught:
            await client.deliver(item)
    finally:
        await client.close()
    assert fake.calls == ["rebound.attacker.example"]
    assert not caught.value.retryable  # the outbox drops it and ends the process


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://[fe80::1]:8080/x",
    "http://[::ffff:169.254.169.254]/x", "http://0.0.0.0:9/x", "http://224.0.0.1/x"])
async def test_a_refused_ip_address_is_refused_before_sending(url: str) -> None:
    client, fake = _client({})
    with pytest.raises(PeerError, match=r"refused, .* is an? ") as caught:
        await client.post(url, "did:web:attacker", b"{}")
    with pytest.raises(PeerError, match="data pull: refused"):
        async for _ in client.pull(url, "Bearer t"):
            pass
    with pytest.raises(PeerError, match="push summary: refused"):
        await client.push_summary(url, "Bearer t", {})
    assert not caught.value.retryable
    assert client._session is None and fake.calls == []  # not even a session was opened


async def test_loopback_peers_pass_by_address_and_by_name(
        peer: tuple[str, list[str]]) -> None:
    base, seen = peer
    port = base.rsplit(":", 1)[1]
    client, fake = _client({"peer.example": ["127.0.0.1"]})
    try:
        assert (await client.post(f"{base}/dsp/a", "did:web:peer", b"{}"))[0] == 200
        assert (await client.get(f"http://peer.example:{port}/dsp/b", "did:web:peer"))[0] == 200
    finally:
        await client.close()
    assert seen == ["/dsp/a", "/dsp/b"] and fake.calls == ["peer.example"]


async def test_a_redirect_to_a_refused_address_is_not_followed(
        peer: tuple[str, list[str]]) -> None:
    base, seen = peer
    client, fake = _client({"metadata.attacker.example": ["169.254.169.254"]})
    try:
        with pytest.raises(PeerError, match=r"refused, redirected to http://169\.254\.169\.254"
                                            r"/latest: 169\.254\.169\.254 is a link-local"):
            await client.get(f"{base}/redirect?to=http://169.254.169.254/latest", "did:web:p")
        with pytest.raises(PeerError, match=r"metadata\.attacker\.example resolves to "
                                            r"169\.254\.169\.254"):
            await client.get(f"{base}/redirect?to=http://metadata.attacker.example/latest",
                             "did:web:p")
        # A redirect elsewhere on loopback is still followed.
        status, _ = await client.get(f"{base}/redirect?to={base}/dsp/moved", "did:web:p")
    finally:
        await client.close()
    assert status == 200 and seen[-1] == "/dsp/moved"
    assert fake.calls == ["metadata.attacker.example"]
