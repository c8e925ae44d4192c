"""A real provider daemon (separate process, HTTPS on loopback) and a scripted peer.

The scripted peer ("tester") is a pinned participant whose key the test holds: it sends DSP
messages to the provider exactly as it likes (well-formed or not), and runs a plain-HTTP
callback server in the test process that records what the provider sends back.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.client import Management
from connector.config import load_settings
from connector.core.binding import DSP_PATH
from connector.core.identity import did_web_from_url, issue_token
from connector.keys import load_signing_key
from connector.participant.init import init_folder
from connector.participant.trust import add_trusted_peer
from tests.e2e.postgres import (
    postgres_server,  # noqa: F401  (a session fixture for tests/e2e)
)
from tests.engines import (  # noqa: F401  (the hook and the fixture)
    _state_on_engine,
    placer,
    pytest_generate_tests,
)
from tests.harness import Participant, create_space, free_port, start, stop


class PeerToken(str):
    """A scripted peer's token (without the body digest claim, as text) that can be signed
    again, same jti and times, bound to the body of the request it goes with, as our
    connectors send them (``for_body``)."""

    _make: Callable[[bytes | None], str]

    def __new__(cls, text: str, make: Callable[[bytes | None], str]) -> PeerToken:
        token = super().__new__(cls, text)
        token._make = make
        return token

    def for_body(self, body: bytes) -> str:
        return self._make(body)


def bound(token: str | None, body: bytes | None) -> str | None:
    """``token`` bound to ``body`` when it is a scripted peer's; as it is otherwise."""
    return token.for_body(body or b"") if isinstance(token, PeerToken) else token


@dataclass
class Peer:
    """A participant the test plays by hand."""

    did: str
    kid: str
    key: Ed25519PrivateKey
    callback: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def token(self, audience: str, *, now: int | None = None, ttl: int = 60,
              key: Ed25519PrivateKey | None = None, jti: str | None = None) -> PeerToken:
        """A self-issued token; ``call`` signs it again bound to the body it sends."""
        now = int(time.time()) if now is None else now
        jti = jti or str(uuid.uuid4())

        def make(body: bytes | None) -> str:
            digest = None if body is None else hashlib.sha256(body).hexdigest()
            return issue_token(key or self.key, kid=self.kid, issuer=self.did,
                               audience=audience, now=now, jti=jti, ttl_s=ttl,
                               body_digest=digest)

        return PeerToken(make(None), make)

    async def next_message(self, path_part: str, timeout: float = 10) -> dict[str, Any]:
        """Wait for the provider to send a message whose path contains ``path_part``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (path, body) in enumerate(self.received):
                if path_part in path:
                    del self.received[i]
                    return body
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        raise AssertionError(f"no message to *{path_part}* within {timeout}s: {self.received}")


@dataclass
class Space:
    provider: Participant
    consumer: Participant
    provider_did: str
    base: str  # provider's DSP base
    tls: ssl.SSLContext
    members: Peer  # pinned with membership=active
    outsider: Peer  # pinned without attributes


def _peer_folder(root: Path, name: str, callback_port: int) -> tuple[Path, str]:
    url = f"https://127.0.0.1:{free_port()}"
    init_folder(root / name, name=name, url=url)
    return root / name, f"http://127.0.0.1:{callback_port}{DSP_PATH}"


BIG_RECORDS = 400_000  # ~40 MB: long enough to cut or revoke a stream half-way


def add_big_dataset(folder: Path) -> None:
    """A members-only dataset of BIG_RECORDS JSON lines, written once."""
    line = '{"seq": %d, "station": "s-%d", "payload": "%s"}\n'
    with (folder / "data" / "big.jsonl").open("w") as f:
        for i in range(BIG_RECORDS):
            f.write(line % (i, i % 97, "x" * (40 + i % 17)))
    (folder / "datasets" / "counted.toml").write_text(
        'id = "counted"\ntitle = "Counted"\ndescription = "at most 100 uses"\n'
        'keywords = ["count"]\npolicies = ["count-limited"]\n'
        '[source]\ntype = "jsonl"\npath = "data/example.jsonl"\n')
    (folder / "datasets" / "big.toml").write_text(
        'id = "big"\ntitle = "Big"\ndescription = "many records"\nkeywords = ["big"]\n'
        'policies = ["members-only"]\n[source]\ntype = "jsonl"\npath = "data/big.jsonl"\n')


@pytest.fixture(scope="session")
def space(state_engine: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    """A provider and a consumer daemon, their state on the session's ``state_engine``."""
    root = tmp_path_factory.mktemp(f"space-{state_engine}")
    provider, consumer = create_space(root, place=placer(state_engine, request))
    peers = {}
    for name, attrs in (("member", {"membership": "active", "purpose": "research"}),
                        ("outsider", {})):
        folder, callback = _peer_folder(root, name, free_port())
        add_trusted_peer(provider.dir, folder, attributes=attrs, tls_cert=None)
        settings = load_settings(folder)
        peers[name] = Peer(did=settings.did, kid=settings.signing_kid,
                           key=load_signing_key(settings.signing_key), callback=callback)
    add_big_dataset(provider.dir)
    start(provider)
    start(consumer)
    tls = ssl.create_default_context(cafile=str(provider.dir / "tls" / "cert.pem"))
    try:
        yield Space(provider=provider, consumer=consumer,
                    provider_did=did_web_from_url(provider.url), base=provider.url + DSP_PATH,
                    tls=tls, members=peers["member"], outsider=peers["outsider"])
    finally:
        stop(consumer)
        stop(provider)


async def _callback_app(peer: Peer) -> web.AppRunner:
    async def record(request: web.Request) -> web.Response:
        peer.received.append((request.path, msgspec.json.decode(await request.read())))
        peer.arrived.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = int(peer.callback.split(":")[2].split("/")[0])
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def callbacks(space: Space) -> AsyncIterator[Space]:
    """The scripted peers' callback servers, listening for the whole session."""
    runners = []
    for peer in (space.members, space.outsider):
        peer.arrived = asyncio.Event()
        runners.append(await _callback_app(peer))
    yield space
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def http(space: Space) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=space.tls)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def apis(space: Space) -> AsyncIterator[tuple[Management, Management]]:
    """Management API clients of the provider and the consumer daemons."""
    provider = Management(load_settings(space.provider.dir))
    consumer = Management(load_settings(space.consumer.dir))
    yield provider, consumer
    await provider.close()
    await consumer.close()
