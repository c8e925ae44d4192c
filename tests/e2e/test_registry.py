"""Real registry daemons over HTTPS on loopback, with a real provider and consumer.

Publication (signed, incremental), refusals (forged, non-member, data-bearing, oversized),
search from the consumer's CLI, replication convergence after a registry was down, and a
registry outage during a negotiation and a transfer, which both complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.config import load_settings
from connector.daemon import read_folder
from connector.participant.init import init_folder
from connector.participant.trust import add_trusted_peer
from connector.registry.daemon import REGISTRY_FILE, init_registry
from connector.registry.membership import join_registry, pair_registries
from connector.registry.model import sign_snapshot
from connector.registry.publisher import RegistryPublisher, Signer, registry_catalog
from connector.registry.search import find_provider_url
from tests.harness import Participant, create_space, free_port, running

READY_TIMEOUT_S = 20.0


@dataclass
class Registry:
    dir: Path
    url: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.dir / "state" / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "registry", "run", str(self.dir)],
            stdout=subprocess.PIPE, stderr=log, env=dict(os.environ))
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if b"ready" in line:
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"registry did not start; see {self.dir}/state/registry.log")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def make_registry(root: Path, name: str, peers: list[str] | None = None,
                  port: int | None = None) -> Registry:
    url = f"https://127.0.0.1:{port or free_port()}"
    init_registry(root / name, url=url, name=name, peers=peers or [])
    config = root / name / REGISTRY_FILE
    config.write_text(config.read_text().replace("interval_s = 5.0", "interval_s = 0.2"))
    return Registry(root / name, url)


@dataclass
class World:
    root: Path
    registry: Registry
    provider: Participant
    consumer: Participant
    outsider: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("registry")
    provider, consumer = create_space(root)
    registry = make_registry(root, "registry-a")
    join_registry(provider.dir, registry.dir)
    join_registry(consumer.dir, registry.dir)
    init_folder(root / "outsider", name="outsider", url=f"https://127.0.0.1:{free_port()}")
    add_trusted_peer(registry.dir, root / "outsider", attributes={}, tls_cert=None)
    registry.start()
    try:
        yield World(root, registry, provider, consumer, root / "outsider")
    finally:
        registry.stop()


def tls_for(*registries: Registry) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for r in registries:
        ctx.load_verify_locations(cafile=str(r.dir / "tls" / "cert.pem"))
    return ctx


@pytest_asyncio.fixture
async def http(world: World) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_for(
            world.registry))) as session:
        yield session


def publisher_of(folder: Path, session: aiohttp.ClientSession) -> RegistryPublisher:
    settings = load_settings(folder)
    return RegistryPublisher.from_settings(settings, session=lambda: session,
                                           catalog=lambda: read_folder(settings).catalog)


async def health(session: aiohttp.ClientSession, registry: Registry) -> dict[str, Any]:
    async with session.get(f"{registry.url}/health") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def post(session: aiohttp.ClientSession, registry: Registry, body: str) -> int:
    async with session.post(f"{registry.url}/publish", data=body.encode()) as resp:
        return resp.status


async def test_publish_is_signed_and_incremental(world: World,
                                                 http: aiohttp.ClientSession) -> None:
    publisher = publisher_of(world.provider.dir, http)
    (etag,) = (await publisher.publish_all()).values()
    assert etag
    version = (await health(http, world.registry))["version"]
    fresh = publisher_of(world.provider.dir, http)  # a restarted connector: asks the hash first
    assert list((await fresh.publish_all()).values()) == [etag]
    assert (await health(http, world.registry))["version"] == version  # nothing re-published


async def test_forged_non_member_and_data_bearing_publications_are_refused(
        world: World, http: aiohttp.ClientSession) -> None:
    settings = load_settings(world.provider.dir)
    doc = registry_catalog(read_folder(settings).catalog)
    forged = sign_snapshot(Ed25519PrivateKey.generate(), kid=settings.signing_kid,
                           did=settings.did, catalog=doc, now=int(time.time()))
    assert await post(http, world.registry, forged) == 401
    outsider = Signer.from_settings(load_settings(world.outsider))
    other = {**doc, "participantId": outsider.did}
    assert await post(http, world.registry, outsider.snapshot(other)) == 403
    signer = Signer.from_settings(settings)
    leaky = {**doc, "dataset": [{**doc["dataset"][0], "dataAddress": {"endpoint": "x"}}]}
    assert await post(http, world.registry, signer.snapshot(leaky)) == 422
    big = {**doc, "description": "x" * 400_000}
    assert await post(http, world.registry, signer.snapshot(big)) == 413


async def test_search_needs_a_member_token(world: World, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{world.registry.url}/search?q=weather") as resp:
        assert resp.status == 401
    outsider = Signer.from_settings(load_settings(world.outsider))
    headers = {"Authorization": outsider.authorization(world.registry.url)}
    async with http.get(f"{world.registry.url}/search?q=weather", headers=headers) as resp:
        assert resp.status == 403


def test_consumer_finds_the_provider_then_negotiates_and_transfers_with_the_registry_down(
        world: World) -> None:
    asyncio.run(_publish(world.provider.dir, world.registry))
    found = world.consumer.cli("search", "weather")
    assert found.returncode == 0, found.stderr
    assert "example-weather" in found.stdout and world.provider.url in found.stdout
    as_json = world.consumer.cli("search", "weather", "--json")  # what scripts read
    assert as_json.returncode == 0, as_json.stderr
    assert "example-weather" in json.dumps(json.loads(as_json.stdout))
    assert find_provider_url(world.consumer.dir, "weather") == world.provider.url
    with running([world.provider, world.consumer]):
        world.registry.stop()
        try:
            agreement = world.consumer.cli("negotiate", world.provider.url, "example-weather")
            assert agreement.returncode == 0, agreement.stderr
            out = world.root / "received.jsonl"
            moved = world.consumer.cli("transfer", agreement.stdout.strip(), "--out", str(out))
            assert moved.returncode == 0, moved.stderr
            assert out.read_text().count("\n") == 10
            stale = world.consumer.cli("search", "weather")  # the last results are kept
            assert stale.returncode == 0 and "last results kept" in stale.stdout
            assert "example-weather" in stale.stdout
        finally:
            world.registry.start()


async def _publish(folder: Path, registry: Registry) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_for(registry))) as s:
        assert all((await publisher_of(folder, s).publish_all()).values())


async def test_replicas_converge_after_one_was_down(tmp_path: Path) -> None:
    ports = free_port(), free_port()
    urls = [f"https://127.0.0.1:{p}" for p in ports]
    a = make_registry(tmp_path, "a", [urls[1]], ports[0])
    b = make_registry(tmp_path, "b", [urls[0]], ports[1])
    pair_registries(a.dir, b.dir)
    init_folder(tmp_path / "p", name="p", url=f"https://127.0.0.1:{free_port()}")
    join_registry(tmp_path / "p", a.dir)
    add_trusted_peer(b.dir, tmp_path / "p", attributes={"membership": "active"}, tls_cert=None)
    a.start()
    b.start()
    try:
        b.stop()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_for(a, b))) as s:
            assert all((await publisher_of(tmp_path / "p", s).publish_all()).values())
            assert (await health(s, a))["entries"] == 1
            b.start()
            signer = Signer.from_settings(load_settings(tmp_path / "p"))
            deadline = time.monotonic() + 10
            while True:
                headers = {"Authorization": signer.authorization(b.url)}
                async with s.get(f"{b.url}/search?q=weather", headers=headers) as resp:
                    found = await resp.json()
                if found["total"] == 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert found["total"] == 1, found
            assert found["items"][0]["datasetId"] == "example-weather"
            await asyncio.sleep(0.6)  # a few more rounds: no ping-pong between the two
            assert (await health(s, a))["version"] == 1 and (await health(s, b))["version"] == 1
    finally:
        a.stop()
        b.stop()
