"""A captured token stays refused after the provider restarts (#4: a jti store with expiry).

A real provider daemon over HTTPS, a scripted pinned peer. The peer makes valid requests, the
provider is restarted (gracefully, then killed), and the same Authorization headers are
replayed: each replay gets the spec's refusal (404, nothing persisted) and "replayed" in the
provider's log.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio

from connector.config import load_settings
from connector.core.binding import DSP_PATH
from connector.core.identity import did_web_from_url
from connector.keys import load_signing_key
from connector.participant.trust import add_trusted_peer
from tests.e2e.conftest import Peer, _callback_app, _peer_folder, free_port
from tests.e2e.test_dsp_edge import CTX, call, request_body
from tests.harness import Participant, create_space, start, stop

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class World:
    provider: Participant
    provider_did: str
    base: str
    tls: ssl.SSLContext
    peer: Peer

    def log(self) -> str:
        return (self.provider.dir / "state" / "daemon.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("replay")
    provider, _ = create_space(root)
    folder, callback = _peer_folder(root, "member", free_port())
    add_trusted_peer(provider.dir, folder, attributes={"membership": "active"}, tls_cert=None)
    settings = load_settings(folder)
    peer = Peer(did=settings.did, kid=settings.signing_kid,
                key=load_signing_key(settings.signing_key), callback=callback)
    start(provider)
    try:
        yield World(provider, did_web_from_url(provider.url), provider.url + DSP_PATH,
                    ssl.create_default_context(cafile=str(provider.dir / "tls" / "cert.pem")),
                    peer)
    finally:
        stop(provider)


@pytest_asyncio.fixture(loop_scope="module")
async def http(world: World) -> AsyncIterator[aiohttp.ClientSession]:
    peer = world.peer
    peer.arrived = asyncio.Event()
    callbacks = await _callback_app(peer)  # the provider's answers to our negotiations
    # No keep-alive: a pooled connection would outlive the provider's restart.
    connector = aiohttp.TCPConnector(ssl=world.tls, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session
    await callbacks.cleanup()


async def _use(http: aiohttp.ClientSession, w: World) -> list[str]:
    """Two valid requests (a catalogue query, a negotiation); their tokens."""
    catalog, negotiation = (w.peer.token(w.provider_did, ttl=300) for _ in range(2))
    status, doc = await call(http, "POST", f"{w.base}/catalog/request",
                             {"@context": CTX, "@type": "CatalogRequestMessage"}, catalog)
    assert status == 200, doc
    status, doc = await call(http, "POST", f"{w.base}/negotiations/request",
                             request_body(w.peer), negotiation)
    assert status == 201, doc
    return [catalog, negotiation]


async def _assert_replay_refused(http: aiohttp.ClientSession, w: World, token: str) -> None:
    body = request_body(w.peer)
    status, doc = await call(http, "POST", f"{w.base}/negotiations/request", body, token)
    assert status == 404, doc
    assert doc["@type"] == "ContractNegotiationError"
    status, doc = await call(http, "GET", f"{w.base}/negotiations/{body['consumerPid']}",
                             token=w.peer.token(w.provider_did))
    assert status == 404, doc  # nothing was persisted under the replayed request
    for _ in range(40):
        if "replayed" in w.log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"'replayed' not in the provider's log:\n{w.log()[-2000:]}")


async def test_a_replay_is_refused_after_a_graceful_restart(http: aiohttp.ClientSession,
                                                            world: World) -> None:
    tokens = await _use(http, world)
    stop(world.provider)  # SIGTERM right away: the close commits the queued jtis
    start(world.provider)  # a fresh daemon.log
    assert "replayed" not in world.log()
    for token in tokens:
        await _assert_replay_refused(http, world, token)
    assert (await _use(http, world))  # fresh tokens are still accepted


async def test_a_replay_is_refused_after_a_crash(http: aiohttp.ClientSession,
                                                 world: World) -> None:
    tokens = await _use(http, world)
    await asyncio.sleep(0.3)  # well past the write-behind flush (milliseconds)
    process = world.provider.process
    assert process is not None
    process.kill()  # no shutdown: only what the group commit already wrote survives
    process.wait()
    world.provider.process = None
    start(world.provider)
    assert "replayed" not in world.log()
    for token in tokens:
        await _assert_replay_refused(http, world, token)
