"""The registry keeps the token ids it accepted across a restart (as the connector does)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.core.errors import AuthError
from connector.core.identity import issue_token, public_jwk
from connector.participant.trust import Peer
from connector.registry import store as store_module
from connector.registry.store import RegistryStore
from connector.service.auth import Verifier

NOW = 1_800_000_000
REGISTRY = "did:web:registry.example"
PUBLISHER = "did:web:publisher.example"
KEY = Ed25519PrivateKey.generate()


def _verifier() -> Verifier:
    peer = Peer(did=PUBLISHER, url="https://publisher.example",
                keys={PUBLISHER + "#k": public_jwk(KEY)}, tls_cert_pem=None, attributes={})
    return Verifier(did=REGISTRY, peers={PUBLISHER: peer}, leeway_s=5, clock=lambda: NOW)


def _authorization(jti: str) -> str:
    return "Bearer " + issue_token(KEY, kid=PUBLISHER + "#k", issuer=PUBLISHER,
                                   audience=REGISTRY, now=NOW, jti=jti, ttl_s=60)


async def test_jtis_are_written_behind_and_purged(tmp_path: Path) -> None:
    store = await RegistryStore.open(tmp_path / "registry.db")
    store.record_jti("a", NOW + 10)
    store.record_jti("b", NOW + 100)
    await asyncio.sleep(store_module.JTI_FLUSH_S * 5)  # committed by the timer, not by close
    assert await store.live_jtis(NOW) == [("a", NOW + 10), ("b", NOW + 100)]
    store.record_jti("c", NOW + 50)  # still queued when the store closes: close commits it
    await store.close()
    store = await RegistryStore.open(tmp_path / "registry.db")
    assert [j for j, _ in await store.live_jtis(NOW + 20)] == ["c", "b"]
    await store.purge_jtis(NOW + 60)
    assert await store.live_jtis(0) == [("b", NOW + 100)]
    await store.close()


async def test_a_replay_to_the_registry_is_refused_after_a_restart(tmp_path: Path) -> None:
    token = _authorization("publish-1")
    store = await RegistryStore.open(tmp_path / "registry.db")
    verifier = _verifier()
    assert await verifier.restore(store) == 0
    assert verifier.verify(token).participant_id == PUBLISHER
    await store.close()  # the registry restarts
    store = await RegistryStore.open(tmp_path / "registry.db")
    restarted = _verifier()
    assert await restarted.restore(store) == 1
    with pytest.raises(AuthError, match="replayed"):
        restarted.verify(token)
    restarted.verify(_authorization("publish-2"))
    await store.close()
