"""Replay protection across restarts: seen jtis in the real SQLite store, and the bound (#4).

The verifiers keep their in-memory check and write behind to ``SqliteStore`` (on a real file);
a "restart" is a new store on the same file and a new verifier restored from it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.adapters.storage import sqlite as sqlite_module
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.sqlite import SqliteStore
from connector.core import dcp
from connector.core.errors import AuthError
from connector.core.identity import issue_token, parse_jws, public_jwk
from connector.participant.trust import Peer
from connector.service import auth
from connector.service.auth import Verifier
from tests.e2e.postgres import Postgres, new_database
from tests.unit.test_dcp_verifier import World

NOW = 1_800_000_000
ME = "did:web:me.example"
CALLER = "did:web:caller.example"
KEY = Ed25519PrivateKey.generate()


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def _verifier(clock: Clock) -> Verifier:
    peer = Peer(did=CALLER, url="https://caller.example", keys={CALLER + "#k": public_jwk(KEY)},
                tls_cert_pem=None, attributes={"membership": "active"})
    return Verifier(did=ME, peers={CALLER: peer}, leeway_s=5, clock=clock)


def _authorization(jti: str, *, now: int = NOW, ttl: int = 60) -> str:
    return "Bearer " + issue_token(KEY, kid=CALLER + "#k", issuer=CALLER, audience=ME, now=now,
                                   jti=jti, ttl_s=ttl)


def _rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT jti, until FROM seen_tokens").fetchall())


async def test_store_records_behind_loads_live_and_purges_expired(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path)
    store.record_jti("b", 200)
    store.record_jti("a", 100)
    store.record_jti("b", 150)  # a jti recorded again keeps the later expiry
    assert _rows(path) == []  # written behind: nothing committed yet, nobody waited
    await asyncio.sleep(sqlite_module.JTI_FLUSH_S * 5)
    assert _rows(path) == [("a", 100), ("b", 200)]  # committed without any other write
    store.record_jti("c", 300)
    await store.close()  # close commits what is queued
    store = await SqliteStore.open(path)
    assert await store.live_jtis(100) == [("a", 100), ("b", 200), ("c", 300)]  # soonest first
    assert await store.live_jtis(101) == [("b", 200), ("c", 300)]
    await store.purge_jtis(201)
    assert _rows(path) == [("c", 300)]
    await store.close()


async def test_seen_jtis_ride_the_group_commit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path)
    store.record_jti("j", NOW)
    await store.purge_jtis(0)  # any awaited write takes the queued jtis along
    assert _rows(path) == [("j", NOW)]
    await store.close()


async def test_a_replay_is_refused_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    clock = Clock()
    store = await SqliteStore.open(path)
    verifier = _verifier(clock)
    assert await verifier.restore(store) == 0
    first = _authorization("urn:uuid:1")
    assert verifier.verify(first).participant_id == CALLER
    await store.close()

    store = await SqliteStore.open(path)  # the restart
    verifier = _verifier(clock)
    assert await verifier.restore(store) == 1
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify(first)
    assert verifier.verify(_authorization("urn:uuid:2")).participant_id == CALLER
    # Once the token has expired (exp + leeway) its row is purged; the token itself is refused.
    clock.now += 60 + 5 + 1
    await store.purge_jtis(int(clock.now))
    assert _rows(path) == []
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(first)
    await store.close()


async def test_dcp_verifier_and_credential_service_persist_their_jtis(tmp_path: Path) -> None:
    w = World()
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path)
    await w.verifier.restore(store)
    cs_store = await SqliteStore.open(tmp_path / "cs.sqlite")
    cs_verifier = w.cs.verifier
    await cs_verifier.restore(cs_store)
    authorization = w.authorization()
    await w.verifier.verify_async(authorization)
    # The Credential Service's query token, as the verifier sends it (a fresh jti).
    access = parse_jws(authorization.removeprefix("Bearer ")).payload["token"]
    query = "Bearer " + w.identity.dcp_token(w.holder.did, access)
    await w.cs.query(query, dcp.presentation_query(
        dcp.type_scopes(["MembershipCredential"], dcp.SPEC_SCOPE_ALIAS)))
    await store.close()
    await cs_store.close()
    assert len(_rows(path)) == 1 and len(_rows(tmp_path / "cs.sqlite")) == 2

    restarted = w._verifier(w.identity)
    store = await SqliteStore.open(path)
    assert await restarted.restore(store) == 1
    with pytest.raises(AuthError, match="replayed"):
        await restarted.verify_async(authorization)
    cs_store = await SqliteStore.open(tmp_path / "cs.sqlite")
    cs_restarted = w._verifier(w.holder_identity)
    await cs_restarted.restore(cs_store)
    with pytest.raises(AuthError, match="replayed"):
        await cs_restarted.verify_token(query)
    await store.close()
    await cs_store.close()


def test_the_bound_refuses_new_tokens_and_never_evicts_a_live_jti(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_REMEMBERED_JTIS", 3)
    clock = Clock()
    verifier = _verifier(clock)
    first = _authorization("j1")
    verifier.verify(first)
    verifier.verify(_authorization("j2"))
    verifier.verify(_authorization("j3"))
    with pytest.raises(AuthError, match="too many live tokens; try again"):
        verifier.verify(_authorization("j4"))
    with pytest.raises(AuthError, match="replayed"):  # j1, the oldest, was not evicted
        verifier.verify(first)
    clock.now += 66  # all three expired (exp + leeway): room again
    verifier.verify(_authorization("j5", now=int(clock.now)))
    verifier.verify(_authorization("j4", now=int(clock.now)))  # the refused one, now accepted


def test_at_the_bound_expired_jtis_behind_a_long_lived_one_are_swept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_REMEMBERED_JTIS", 3)
    clock = Clock()
    verifier = _verifier(clock)
    verifier.verify(_authorization("long", ttl=3600))  # first in line, expires last
    verifier.verify(_authorization("s1"))
    verifier.verify(_authorization("s2"))
    clock.now += 66
    verifier.verify(_authorization("s3", now=int(clock.now)))  # s1, s2 swept, not "long"
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify(_authorization("long", ttl=3600))


def test_a_token_living_longer_than_the_cap_is_refused_and_not_remembered() -> None:
    verifier = _verifier(Clock())
    with pytest.raises(AuthError, match="token lifetime 3601 s exceeds 3600 s"):
        verifier.verify(_authorization("years", ttl=3601))
    assert "years" not in verifier._seen
    verifier.verify(_authorization("hour", ttl=3600))  # at the cap: accepted


async def test_the_dcp_verifier_applies_the_lifetime_cap() -> None:
    w = World()
    from connector.core.identity import issue_dcp_token

    token = issue_dcp_token(w.holder.key, kid=w.holder.kid, issuer=w.holder.did,
                            audience=w.verifier_party.did, now=NOW, jti="long",
                            ttl_s=86_400, access_token="x")
    with pytest.raises(AuthError, match="token lifetime 86400 s exceeds"):
        await w.verifier.verify_token("Bearer " + token)


async def test_a_replay_is_refused_by_another_replica(postgres_server: Postgres) -> None:
    """Two replicas (two verifiers, two stores on one PostgreSQL database): a token the first
    accepted is a replay at the second, at once (the jti is claimed in the database)."""
    dsn = await new_database(postgres_server)
    clock = Clock()
    stores = [await PostgresStore.open(dsn) for _ in range(2)]
    first, second = _verifier(clock), _verifier(clock)
    for verifier, store in zip((first, second), stores, strict=True):
        await verifier.restore(store)
    token = _authorization("urn:uuid:shared")
    assert (await first.verify_async(token)).participant_id == CALLER
    with pytest.raises(AuthError, match="replayed"):
        await second.verify_async(token)
    assert (await second.verify_async(_authorization("urn:uuid:other"))).participant_id == CALLER
    with pytest.raises(AuthError, match="replayed"):
        await first.verify_async(_authorization("urn:uuid:other"))
    for store in stores:
        await store.close()
