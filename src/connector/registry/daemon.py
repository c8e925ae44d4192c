"""The registry daemon: its folder, its settings, and the process that serves it.

A registry folder looks like a participant's, minus datasets and policies::

    registry.toml  did.json  trust/*.json  tls/cert.pem  keys/ (0600)  state/registry.db

``trust/`` pins the members (``membership = active``) exactly as a participant pins its
peers (``connector trust add --dir REGISTRY ...``), plus peer registries (``role = registry``)
whose TLS certificates the replicator trusts. The registry has its own did:web DID and key,
so that it can call peer registries with self-issued tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from connector import keys, logs
from connector.adapters.http import tls_buffers
from connector.adapters.http.client import client_ssl_context
from connector.config import Endpoint, endpoint_fields
from connector.core.errors import ConfigError, ConnectorError
from connector.core.identity import did_web_from_url
from connector.participant.init import endpoint_toml, owner_toml, write_identity
from connector.participant.layout import DID_FILE, check_init_target, parse_public_url, toml_str
from connector.participant.trust import load_trust
from connector.registry.http import RegistryApi
from connector.registry.replication import DEFAULT_INTERVAL_S, Replicator
from connector.registry.service import RegistryService
from connector.registry.store import RegistryStore
from connector.service.auth import Identity, Verifier
from connector.signals import until_signalled

log = logging.getLogger("connector.registry")
REGISTRY_FILE = "registry.toml"
DATABASE = "state/registry.db"
# trust/ is re-read when it changes (polled once a second, like the connector's folder).
RELOAD_INTERVAL_S = 1.0
# Expired entries are already invisible to searches; the sweep only reclaims space.
SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True, kw_only=True)
class RegistrySettings(Endpoint):
    """``registry.toml``: the shared endpoint, and which registries to replicate from."""

    peers: tuple[str, ...] = ()
    interval_s: float = DEFAULT_INTERVAL_S


def _registry_toml(name: str, url: str, did: str, host: str, port: int,
                   peers: Sequence[str]) -> str:
    listed = ", ".join(toml_str(p.rstrip("/")) for p in peers)
    return f"""\
{owner_toml("registry", name, did, url)}
{endpoint_toml(did, host, port)}
[storage]
sqlite = "{DATABASE}"

[replication]
# Peer registries to pull changes from; pin each in trust/ with role=registry.
peers = [{listed}]
interval_s = {DEFAULT_INTERVAL_S}
"""


def init_registry(dir: Path, *, url: str, name: str = "registry",
                  peers: Sequence[str] = ()) -> None:
    """Create a registry folder at ``dir`` (absent or empty) for the public root ``url``."""
    host, port = parse_public_url(url)
    url = url.rstrip("/")
    check_init_target(dir)
    did = did_web_from_url(url)
    (dir / "state").mkdir(parents=True, exist_ok=True)
    (dir / REGISTRY_FILE).write_text(_registry_toml(name, url, did, host, port, peers))
    # The DataService entry carries the registry's root URL, so that participants can pin it
    # with `connector trust add REGISTRY/did.json --tls-cert REGISTRY/tls/cert.pem`.
    write_identity(dir, did=did, host=host, service_url=url)


def load_registry_settings(root: Path) -> RegistrySettings:
    """Load ``root/registry.toml``; ConfigError names the file and the key."""
    root = root.resolve()
    path = root / REGISTRY_FILE
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    reg, server, signing = (data.get(t, {}) for t in ("registry", "server", "signing"))
    replication = data.get("replication", {})
    peers = replication.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise ConfigError(f"{path} [replication]: key 'peers' must be a list of URLs")
    return RegistrySettings(
        **endpoint_fields(root, reg, server, signing, str(path), "registry"),
        database=root / data.get("storage", {}).get("sqlite", DATABASE),
        peers=tuple(p.rstrip("/") for p in peers),
        interval_s=float(replication.get("interval_s", DEFAULT_INTERVAL_S)),
    )


def _trust_stamp(root: Path) -> tuple[tuple[str, float], ...]:
    return tuple((str(p), p.stat().st_mtime) for p in sorted((root / "trust").glob("*.json")))


class RegistryDaemon:
    """Composition root: settings -> store -> service -> HTTPS app, replication, sweeps."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.peers = load_trust(settings.root)
        self._stamp = _trust_stamp(settings.root)
        key = keys.load_any_signing_key(settings.signing_key)
        self.identity = Identity(did=settings.did, kid=settings.signing_kid, key=key,
                                 ttl_s=settings.token_ttl_s, clock=time.time)
        self.verifier = Verifier(did=settings.did, peers=self.peers,
                                 leeway_s=settings.clock_leeway_s, clock=time.time)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx = client_ssl_context(p.tls_cert_pem or "" for p in self.peers.values())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def start(self) -> None:
        s = self.settings
        self.store = await RegistryStore.open(s.database)
        # Replays stay refused across a restart: the jtis accepted before it, until they expire.
        live = await self.verifier.restore(self.store)
        if live:
            log.info("remembering %d unexpired token ids from before the restart", live)
        self.service = RegistryService(self.store, self.peers, leeway_s=s.clock_leeway_s,
                                       clock=time.time)
        did_document = json.loads((s.root / DID_FILE).read_text())
        app = RegistryApi(self.service, self.verifier, did_document).app()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        await web.TCPSite(self._runner, s.host, s.port, ssl_context=ctx, backlog=1024).start()
        replicator = Replicator(self.service, s.peers, identity=self.identity,
                                session=self.session, interval_s=s.interval_s)
        for loop in (replicator.run(), self._reload_loop(), self._sweep_loop()):
            self._tasks.append(asyncio.create_task(loop))

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_S)
            try:
                if _trust_stamp(self.settings.root) == self._stamp:
                    continue
                self._stamp = _trust_stamp(self.settings.root)
                peers = load_trust(self.settings.root)
            except (ConnectorError, OSError) as exc:
                log.error("trust/ changed but cannot be loaded; keeping the previous: %s", exc)
                continue
            self.peers = peers
            self.verifier.reload(peers)
            self.service.reload(peers)
            old, self._session = self._session, None  # new TLS anchors for the next pull
            if old is not None:
                await old.close()
            log.info("reloaded trust/ (%d pinned)", len(peers))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            gone = await self.service.sweep()
            if gone:
                log.info("expired %d entries", gone)
            await self.store.purge_jtis(int(time.time()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await self.store.close()


async def serve(root: Path) -> None:
    """Run the registry until SIGINT/SIGTERM."""
    settings = load_registry_settings(root)
    daemon = RegistryDaemon(settings)
    await daemon.start()
    await until_signalled(f"registry {settings.name} ready: {settings.public_url}")
    await daemon.stop()


def run_forever(root: Path) -> None:
    logs.setup(logs.LogSettings())
    tls_buffers.install()  # every connector's publications and searches: 16 KiB each
    asyncio.run(serve(root))
