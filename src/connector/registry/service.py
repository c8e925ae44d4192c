"""The registry's rules, between the HTTP edge and the store.

1. A publication is a snapshot JWS (``model``). Its claimed issuer must be pinned in the
   registry's ``trust/`` with ``membership = active`` (else NotMember, 403); the signature must
   verify with that member's pinned key (else AuthError, 401); the catalogue must be metadata
   only (else PublicationRefused, 422).
2. Last writer wins per publisher by the signed ``iat``; an older or identical snapshot is
   accepted as a no-op, so replicas that pull each other converge and never ping-pong.
3. Searches and change feeds are for members and for peer registries (``role = registry``).
4. Entries expire at their signed ``exp``; searches never show them, a sweep deletes them.
5. A member's audit checkpoint (``core.audit``) signed with its pinned key is witnessed: kept
   with the time received, and shown to members and peer registries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector.core.audit import check_checkpoint_signature, parse_checkpoint
from connector.core.identity import KeyRing
from connector.registry.model import NotMember, claimed_publisher, is_member, read_snapshot
from connector.registry.store import RegistryStore, SearchQuery, SearchResult
from connector.service.catalog import Claims

REGISTRY_ROLE = "registry"
# A page of the change feed; a replica asks again until it has caught up.
MAX_CHANGES = 500


@dataclass(frozen=True)
class Published:
    """The outcome of one publication: the ETag held now and the change's version (or None)."""

    etag: str
    version: int | None


class RegistryService:
    def __init__(self, store: RegistryStore, peers: Mapping[str, Any], *, leeway_s: int,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self._leeway_s = leeway_s
        self._clock = clock
        self.reload(peers)

    def reload(self, peers: Mapping[str, Any]) -> None:
        """New pinned peers (``participant.trust.load_trust`` values): members' keys verify
        snapshots."""
        self._peers = dict(peers)
        self._members = KeyRing({kid: jwk for p in self._peers.values()
                                 if is_member(p.attributes) for kid, jwk in p.keys.items()})

    def now(self) -> int:
        return int(self._clock())

    async def publish(self, jws: str) -> Published:
        """Verify and store one snapshot (from its publisher or from a peer registry)."""
        publisher = claimed_publisher(jws)
        peer = self._peers.get(publisher)
        if peer is None or not is_member(peer.attributes):
            raise NotMember(f"{publisher[:200]!r} is not a member of this data space")
        snapshot = read_snapshot(jws, keys=self._members, now=self.now(),
                                 leeway_s=self._leeway_s)
        version = await self.store.put(snapshot)
        head = self.store.heads.get(publisher)
        return Published(etag=head.etag if head else snapshot.etag, version=version)

    async def witness(self, jws: str) -> float:
        """Keep a member's signed audit checkpoint; returns the time it was received."""
        checkpoint = parse_checkpoint(jws)
        peer = self._peers.get(checkpoint.issuer)
        if peer is None or not is_member(peer.attributes):
            raise NotMember(f"{checkpoint.issuer[:200]!r} is not a member of this data space")
        check_checkpoint_signature(checkpoint, self._members)
        received = self._clock()
        await self.store.witness(checkpoint.issuer, checkpoint.seq, checkpoint.head, received,
                                 jws)
        return received

    async def witnessed(self, participant: str) -> list[dict[str, Any]]:
        return [{"seq": seq, "head": head, "receivedAt": at, "checkpoint": jws}
                for seq, head, at, jws in await self.store.witnessed(participant)]

    def unchanged(self, publisher: str, etag: str) -> bool:
        """Whether the registry holds ``etag`` for ``publisher`` and needs no renewal yet.

        A renewal is due past half of the held snapshot's lifetime, so an entry that is
        renewed in time never expires.
        """
        head = self.store.heads.get(publisher)
        if head is None or head.etag != etag:
            return False
        return self.now() < head.issued_at + (head.expires_at - head.issued_at) // 2

    def admit(self, claims: Claims) -> None:
        """Searches and change feeds: members and peer registries only."""
        attrs = claims.attributes
        if not is_member(attrs) and attrs.get("role") != REGISTRY_ROLE:
            raise NotMember(f"{claims.participant_id!r} is neither a member nor a registry")

    async def search(self, query: SearchQuery) -> SearchResult:
        return await self.store.search(query, self.now())

    async def participant(self, did: str) -> dict[str, Any] | None:
        return await self.store.participant(did, self.now())

    async def changes(self, since: int, limit: int = MAX_CHANGES) -> list[tuple[int, str]]:
        return await self.store.changes(since, max(1, min(limit, MAX_CHANGES)), self.now())

    async def sweep(self) -> int:
        """Delete expired entries; returns how many."""
        return await self.store.purge_expired(self.now())
