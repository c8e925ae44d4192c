"""A space of its own for the fuzz suite (a provider and a consumer daemon over HTTPS, and a
scripted member peer with its callback server), the seed, and the request counts.

``FUZZ_SEED`` replays a run (each test prints its seed, and repeats it in every failure);
``FUZZ_REQUESTS`` sets how many requests each fuzz test sends (500 by default, what
``make test`` runs), ``FUZZ_DSP_REQUESTS`` / ``FUZZ_MANAGEMENT_REQUESTS`` set one of them
(``make soak-fuzz``: 5,000 and 2,000).
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from connector.config import load_settings
from connector.core.binding import DSP_PATH
from connector.core.identity import did_web_from_url
from connector.keys import load_signing_key
from connector.participant.trust import add_trusted_peer
from tests.e2e.conftest import Peer, Space, _callback_app, _peer_folder
from tests.e2e.postgres import postgres_server  # noqa: F401  (a session fixture)
from tests.engines import (  # noqa: F401  (the hook and the fixture)
    _state_on_engine,
    placer,
    pytest_generate_tests,
)
from tests.harness import create_space, free_port, start, stop

DEFAULT_REQUESTS = 500


def requests(kind: str) -> int:
    """How many requests the ``kind`` ("DSP" or "MANAGEMENT") fuzz test sends."""
    return int(os.environ.get(f"FUZZ_{kind}_REQUESTS")
               or os.environ.get("FUZZ_REQUESTS") or DEFAULT_REQUESTS)


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fuzz seed {value} (replay: FUZZ_SEED={value})")
    return value


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="session")
def fuzz_space(state_engine: str, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root = tmp_path_factory.mktemp(f"fuzz-{state_engine}")
    provider, consumer = create_space(root, place=placer(state_engine, request))
    peers = {}
    for name, attrs in (("member", {"membership": "active"}), ("outsider", {})):
        folder, callback = _peer_folder(root, name, free_port())
        add_trusted_peer(provider.dir, folder, attributes=attrs, tls_cert=None)
        settings = load_settings(folder)
        peers[name] = Peer(did=settings.did, kid=settings.signing_kid,
                           key=load_signing_key(settings.signing_key), callback=callback)
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


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fuzz_callbacks(fuzz_space: Space) -> AsyncIterator[Space]:
    runners = [await _callback_app(peer) for peer in (fuzz_space.members, fuzz_space.outsider)]
    yield fuzz_space
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def fuzz_http(fuzz_space: Space) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=fuzz_space.tls, limit=16)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session
