"""Registries pull each other's changes, so any one of them can go down.

Each registry remembers, per peer registry, the last change version it applied, and asks
``GET <peer>/changes?since=<version>`` every few seconds until it has caught up. Every pulled
snapshot goes through the same path as a publication (signature with the publisher's pinned
key, membership, content checks, last writer wins by signed ``iat``), so a peer registry can
relay snapshots but never forge or alter one. A registry that was down resumes from its
cursor; pulling back what it already holds is a no-op, so two registries never ping-pong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp
import msgspec

from connector.core.codec import within_depth
from connector.core.errors import ConnectorError, PeerError
from connector.core.identity import did_web_from_url
from connector.registry.search import get_ok
from connector.registry.service import MAX_CHANGES, RegistryService
from connector.service.auth import Identity

log = logging.getLogger("connector.registry.replication")
# How often each peer is polled; a change reaches every registry within about this.
DEFAULT_INTERVAL_S = 5.0


class Replicator:
    def __init__(self, service: RegistryService, peers: Sequence[str], *, identity: Identity,
                 session: Callable[[], aiohttp.ClientSession],
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._service = service
        self._peers = [p.rstrip("/") for p in peers]
        self._identity = identity
        self._session = session
        self._interval_s = interval_s

    async def run(self) -> None:
        """Pull every peer, forever; a peer that is down is tried again next round."""
        while True:
            for peer in self._peers:
                try:
                    await self.pull(peer)
                except PeerError as exc:
                    log.info("replication from %s: %s", peer, exc.message)
            await asyncio.sleep(self._interval_s)

    async def pull(self, peer: str) -> int:
        """Apply the peer's changes since our cursor; returns how many were new here."""
        applied = 0
        since = await self._service.store.replication_cursor(peer)
        while True:
            changes = await self._fetch(peer, since)
            for version, jws in changes:
                applied += await self._apply(peer, jws)
                since = version
            if changes:
                await self._service.store.set_replication_cursor(peer, since)
            if len(changes) < MAX_CHANGES:
                return applied

    async def _apply(self, peer: str, jws: str) -> int:
        try:
            return 0 if (await self._service.publish(jws)).version is None else 1
        except ConnectorError as exc:  # not a member here, expired meanwhile, refused
            log.info("replication from %s: skipped a snapshot: %s", peer, exc.message)
            return 0

    async def _fetch(self, peer: str, since: int) -> list[tuple[int, str]]:
        url = f"{peer}/changes?since={since}&limit={MAX_CHANGES}"
        body = await get_ok(self._session(), url, shown=f"GET {url}",
                            authorization=self._identity.authorization(did_web_from_url(peer)))
        try:
            doc = msgspec.json.decode(within_depth(body))
            return [(int(c["version"]), str(c["snapshot"])) for c in doc["changes"]]
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"GET {url}: not a change feed") from exc
