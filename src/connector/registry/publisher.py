"""The participant's side of publishing: sign the catalogue, send it only when it changed.

On start and whenever the folder changes, the connector builds its metadata-only catalogue
(``registry_catalog``: datasets with title, description, keywords, format and the DSP
endpoint; no offers, since which offers a consumer sees depends on its claims and is for the
provider to answer over DSP) and calls ``publish`` for each registry:

1. the hash first: ``GET /participant?id=<did>`` with ``If-None-Match: "<etag>"``; a 304
   means the registry holds this catalogue and needs no renewal yet, and nothing is sent;
2. otherwise ``POST /publish`` with the snapshot JWS.

``RegistryPublisher`` also remembers what each registry acknowledged, so an unchanged
catalogue costs no request at all until half of the entry's lifetime has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from connector.config import Settings
from connector.core.catalog import catalog_doc
from connector.core.errors import PeerError
from connector.core.identity import did_web_from_url, issue_token
from connector.keys import load_any_signing_key
from connector.registry.model import DEFAULT_TTL_S, etag_of, sign_snapshot
from connector.service.catalog import Catalog

log = logging.getLogger("connector.registry.publisher")
# Retries after a failed publication: 1 s, doubling, at most a minute apart.
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0
# Tokens for the registry's GET endpoints live as long as the connector's DSP tokens.
TOKEN_TTL_S = 300


@dataclass(frozen=True)
class Signer:
    """A participant's DID and signing key, for snapshots and for tokens to registries."""

    did: str
    kid: str
    key: Any  # Ed25519 or EC private key; Any keeps the repr from touching it
    clock: Callable[[], float] = time.time

    def __repr__(self) -> str:  # never show the key
        return f"Signer(did={self.did!r}, kid={self.kid!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        return cls(did=settings.did, kid=settings.signing_kid,
                   key=load_any_signing_key(settings.signing_key))

    def snapshot(self, catalog: Mapping[str, Any], ttl_s: int = DEFAULT_TTL_S) -> str:
        return sign_snapshot(self.key, kid=self.kid, did=self.did, catalog=catalog,
                             now=int(self.clock()), ttl_s=ttl_s)

    def authorization(self, registry_url: str) -> str:
        """A self-issued token for a registry: ``aud`` is the registry's did:web."""
        token = issue_token(self.key, kid=self.kid, issuer=self.did,
                            audience=did_web_from_url(registry_url), now=int(self.clock()),
                            jti=str(uuid.uuid4()), ttl_s=TOKEN_TTL_S)
        return f"Bearer {token}"


def registry_catalog(catalog: Catalog) -> dict[str, Any]:
    """The metadata-only DCAT catalogue a connector publishes (no offers, no data)."""
    doc = catalog_doc([(e, list(e.offers)) for e in catalog.entries.values()],
                      participant_id=catalog.participant_id, dsp_base=catalog.dsp_base,
                      catalog_id=f"{catalog.participant_id}#catalog")
    for dataset in doc.get("dataset", []):
        dataset.pop("hasPolicy", None)
    return doc


async def publish(session: aiohttp.ClientSession, registry_url: str,
                  catalog_doc: Mapping[str, Any], identity: Signer, *,
                  ttl_s: int = DEFAULT_TTL_S) -> str:
    """Publish ``catalog_doc`` to one registry unless it already holds it; returns the ETag.

    Raises PeerError when the registry cannot be reached or refuses the snapshot.
    """
    base = registry_url.rstrip("/")
    etag = etag_of(catalog_doc)
    headers = {"Authorization": identity.authorization(base), "If-None-Match": f'"{etag}"'}
    status, body = await _call(session, "GET", f"{base}/participant?id={quote(identity.did)}",
                               headers=headers)
    if status == 304:
        return etag
    if status not in (200, 404):
        raise PeerError(f"registry {base} answered {status}: {body[:300]!r}", peer_status=status)
    status, body = await _call(session, "POST", f"{base}/publish",
                               data=identity.snapshot(catalog_doc, ttl_s).encode("ascii"),
                               headers={"Content-Type": "application/jose"})
    if status != 200:
        raise PeerError(f"registry {base} refused the snapshot ({status}): {body[:300]!r}",
                        peer_status=status)
    return etag


async def _call(session: aiohttp.ClientSession, method: str, url: str, *,
                headers: Mapping[str, str], data: bytes | None = None) -> tuple[int, bytes]:
    try:
        async with session.request(method, url, headers=headers, data=data) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PeerError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc


class RegistryPublisher:
    """Publishes the connector's catalogue on start, on every change, and to renew it."""

    def __init__(self, registries: Sequence[str], signer: Signer, *,
                 session: Callable[[], aiohttp.ClientSession],
                 catalog: Callable[[], Mapping[str, Any]], ttl_s: int = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic,
                 on_published: Callable[[str, bool], None] | None = None) -> None:
        self._registries = [r.rstrip("/") for r in registries]
        self._on_published = on_published  # (registry, succeeded) of each attempt (metrics)
        self._signer = signer
        self._session = session
        self._catalog = catalog
        self._ttl_s = ttl_s
        self._clock = clock
        self._acknowledged: dict[str, tuple[str, float]] = {}  # registry -> (etag, when)
        self._changed = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings, *, session: Callable[[], aiohttp.ClientSession],
                      catalog: Callable[[], Catalog],
                      on_published: Callable[[str, bool], None] | None = None
                      ) -> RegistryPublisher:
        """For the connector daemon: its registries, its key, its live catalogue."""
        return cls(settings.registries, Signer.from_settings(settings), session=session,
                   catalog=lambda: registry_catalog(catalog()), on_published=on_published)

    def use_signer(self, signer: Signer) -> None:
        """Sign with a rotated key from now on, and publish again with it right away (a
        registry that re-pinned us may have dropped the old key)."""
        self._signer = signer
        self._acknowledged.clear()
        self._changed.set()

    def changed(self) -> None:
        """The folder changed: publish again now (a no-op for registries if nothing did)."""
        self._changed.set()

    async def publish_all(self) -> dict[str, str | None]:
        """One round: the ETag each registry holds now, or None where publishing failed."""
        doc = self._catalog()
        etag = etag_of(doc)
        out: dict[str, str | None] = {}
        for registry in self._registries:
            held = self._acknowledged.get(registry)
            if held and held[0] == etag and self._clock() < held[1] + self._ttl_s / 2:
                out[registry] = etag  # unchanged and not due: costs nothing
                continue
            try:
                out[registry] = await publish(self._session(), registry, doc, self._signer,
                                              ttl_s=self._ttl_s)
                self._acknowledged[registry] = (etag, self._clock())
            except PeerError as exc:
                log.warning("publishing to %s failed: %s", registry, exc.message)
                out[registry] = None
            if self._on_published is not None:
                self._on_published(registry, out[registry] is not None)
        return out

    async def run(self) -> None:
        """Publish now, then on every change, renew at half-life, retry failures with backoff."""
        retry = RETRY_FIRST_S
        while self._registries:
            self._changed.clear()
            results = await self.publish_all()
            failed = any(v is None for v in results.values())
            wait = retry if failed else self._ttl_s / 2
            retry = min(RETRY_MAX_S, retry * 2) if failed else RETRY_FIRST_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
