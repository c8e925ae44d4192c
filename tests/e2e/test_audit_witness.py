"""A registry witnesses a participant's audit checkpoints; a rewritten history is caught.

Real daemons: a registry, a provider and a consumer (HTTPS on loopback). The provider signs a
checkpoint every few entries and sends each to the registry. Then its history is rewritten in
the database and every checkpoint re-signed with its own key: `connector audit verify` alone
finds nothing, `--witness` names the entry.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from connector.config import load_settings
from connector.core.audit import GENESIS, Entry, link, sha256_hex, sign_checkpoint
from connector.keys import load_any_signing_key
from connector.registry.membership import join_registry
from connector.registry.witness import witnessed
from tests.e2e.test_registry import Registry, make_registry, tls_for
from tests.harness import Participant, create_space, running
from tests.stores import StateDb


def _negotiate(consumer: Participant, provider: Participant) -> None:
    done = consumer.cli("negotiate", provider.url, "example-weather")
    assert done.returncode == 0, done.stdout + done.stderr


def _rewrite_and_re_sign(provider: Participant, at: int) -> None:
    """What an insider with the database and the key could do: change entry ``at``, redo
    every digest and link after it, and sign every checkpoint again."""
    settings = load_settings(provider.dir)
    key = load_any_signing_key(settings.signing_key)
    with StateDb(provider.dir) as db:
        db.execute("DROP TRIGGER audit_entries_append_only"
                   + (" ON audit_entries" if db.engine == "postgres" else ""))
        prev, heads = GENESIS, {}
        for seq, body in db.execute("SELECT seq, body FROM audit_entries ORDER BY seq"):
            if seq == at:
                body = bytes(body).replace(b'"kind":"', b'"kind":"x', 1)
            digest = sha256_hex(bytes(body))
            prev = link(prev, digest)
            heads[seq] = prev
            db.execute("UPDATE audit_entries SET body = ?, digest = ?, hash = ? WHERE seq = ?",
                       bytes(body), digest, prev, seq)
        for (seq,) in db.execute("SELECT seq FROM audit_checkpoints"):
            jws = sign_checkpoint(key, kid=settings.signing_kid, did=settings.did, seq=seq,
                                  head=heads[seq], now=int(time.time()))
            db.execute("UPDATE audit_checkpoints SET jws = ? WHERE seq = ?", jws, seq)


def _witnessed_through(provider: Participant, registry: Registry, seq: int) -> int:
    settings = load_settings(provider.dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = witnessed(settings, registry.url)
        if seen and max(s for s, _ in seen) >= seq:
            return max(s for s, _ in seen)
        time.sleep(0.2)
    raise AssertionError(f"the registry witnessed nothing up to entry {seq}: {seen}")


def test_a_rewritten_and_re_signed_history_is_caught_by_the_witness(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    registry = make_registry(tmp_path, "registry")
    for p in (provider, consumer):
        join_registry(p.dir, registry.dir)
    with (provider.dir / "connector.toml").open("a") as f:
        f.write("\n[audit]\ncheckpoint_entries = 5\ncheckpoint_seconds = 0.5\n")
    registry.start()
    try:
        with running([provider, consumer]):
            for _ in range(3):
                _negotiate(consumer, provider)
            entries = _entries(provider)
            last = _witnessed_through(provider, registry, entries - 5)
            ok = provider.cli("audit", "verify", "--witness", registry.url)
            assert ok.returncode == 0 and "audit trail ok" in ok.stdout, ok.stdout + ok.stderr
        _rewrite_and_re_sign(provider, at=3)
        alone = provider.cli("audit", "verify")
        assert alone.returncode == 0, alone.stdout  # every local signature was redone
        caught = provider.cli("audit", "verify", "--witness", registry.url)
        assert caught.returncode == 1, caught.stdout + caught.stderr
        seen = sorted(s for s, _ in witnessed(load_settings(provider.dir), registry.url))
        before = max([0, *(s for s in seen if s < 3)])
        first = min(s for s in seen if s >= 3)  # the first witnessed head the rewrite changed
        assert (f"BROKEN at entry {first}: entry {first}: the local chain differs from what "
                f"the witness saw (history rewritten after entry {before})") in caught.stdout, (
            last, caught.stdout)
    finally:
        registry.stop()


def _entries(p: Participant) -> int:
    with StateDb(p.dir) as db:
        return int(db.execute("SELECT max(seq) FROM audit_entries")[0][0])


def test_the_registry_witnesses_members_only_and_their_own_signatures(tmp_path: Path) -> None:
    provider, outsider = create_space(tmp_path)
    registry = make_registry(tmp_path, "registry")
    join_registry(provider.dir, registry.dir)
    member = load_settings(provider.dir)
    stranger = load_settings(outsider.dir)
    head = Entry(seq=1, digest="0" * 64, hash="1" * 64, body=b"").hash

    def checkpoint(settings_key: Path, kid: str, did: str) -> str:
        return sign_checkpoint(load_any_signing_key(settings_key), kid=kid, did=did, seq=1,
                               head=head, now=int(time.time()))

    async def post(jws: str) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=tls_for(registry))) as session, session.post(
                f"{registry.url}/audit/checkpoints", data=jws.encode()) as resp:
            return resp.status

    registry.start()
    try:
        assert asyncio.run(post(checkpoint(member.signing_key, member.signing_kid,
                                           member.did))) == 200
        assert asyncio.run(post(checkpoint(stranger.signing_key, stranger.signing_kid,
                                           stranger.did))) == 403
        forged = checkpoint(stranger.signing_key, member.signing_kid, member.did)
        assert asyncio.run(post(forged)) == 401
        assert asyncio.run(post("not a checkpoint")) == 401  # malformed, like a bad token
        assert witnessed(member, registry.url) == [(1, head)]
    finally:
        registry.stop()

