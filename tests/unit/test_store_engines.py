"""What both storage engines must do alike (a parameter, ``store_opener``), and what only the
shared PostgreSQL database adds: migrations from an older schema, a refused newer one.

PostgreSQL is a real server (tests/e2e/postgres.py), a fresh database per test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from connector.adapters.storage import postgres
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import latest, migrations
from connector.core.audit import GENESIS, Entry, Event, make_entry, verify_links
from connector.core.errors import ConfigError, ConflictError
from connector.core.messages import ContractNegotiationTerminationMessage
from connector.core.negotiation import HistoryEntry, Negotiation, NegotiationState, Role
from connector.core.transfer import Transfer, TransferState
from connector.service import audit
from connector.service.audit import AuditBatch, StepAudit
from connector.service.catalog import Catalog, Claims
from connector.service.locks import KeyedLocks
from connector.service.negotiations import NegotiationService
from connector.service.outbox import Outbox
from connector.service.store import Agreement, OutboxItem, Outgoing
from tests.e2e.postgres import Postgres, new_database
from tests.stores import Opener


def _negotiation(pid: str, *, counterparty: str = "did:c", consumer_pid: str = "",
                 state: NegotiationState = NegotiationState.REQUESTED) -> Negotiation:
    history = [HistoryEntry(at=1.0, by="consumer", message="ContractRequestMessage",
                            state="REQUESTED")]
    return Negotiation(id=pid, role=Role.PROVIDER, state=state,
                       consumer_pid=consumer_pid or f"{pid}:c", provider_pid=pid,
                       dataset_id="ds", offer={"@id": "o"}, counterparty_address="https://c",
                       counterparty_id=counterparty, created_at=1.0, updated_at=1.0,
                       history=history)


def _agreement(pid: str) -> Agreement:
    return Agreement(id=f"{pid}:a", negotiation_id=pid, role="provider", dataset_id="ds",
                     assigner="did:p", assignee="did:c", created_at=2.0, body={"@id": pid})


async def test_a_peer_pid_names_one_process_whichever_writer_races(store_opener: Opener) -> None:
    store = await store_opener.open()
    await store.save_negotiation(_negotiation("urn:1", consumer_pid="urn:c"), expect_new=True)
    with pytest.raises(ConflictError):  # DSP 2025-1 §CN 3.2: the same request, one process
        await store.save_negotiation(_negotiation("urn:2", consumer_pid="urn:c"),
                                     expect_new=True)
    found = await store.find_negotiation(counterparty="did:c", consumer_pid="urn:c",
                                         role="provider")
    assert found is not None and found.id == "urn:1"
    assert await store.find_negotiation(counterparty="did:x", consumer_pid="urn:c",
                                        role="provider") is None
    await store.close()


async def test_transfer_updates_token_lookups_and_agreement_filter(store_opener: Opener) -> None:
    store = await store_opener.open()
    t = Transfer(id="urn:t", role=Role.PROVIDER, state=TransferState.REQUESTED,
                 consumer_pid="urn:c", provider_pid="urn:t", agreement_id="urn:a",
                 format="HttpData-PULL", counterparty_address="https://c",
                 counterparty_id="did:c")
    await store.save_transfer(t, expect_new=True)
    started = msgspec_replace(t, state=TransferState.STARTED, token_hash="new",
                              prev_token_hash="old")
    await store.save_transfer(started)
    assert await store.get_transfer("urn:t") == started
    assert await store.find_transfer_by_token("old") == started  # the refresh's grace window
    assert await store.find_transfer(consumer_pid="urn:c", role="provider",
                                     counterparty="did:c") == started
    assert await store.list_transfers("urn:a") == [started]
    assert await store.list_transfers("urn:other") == []
    await store.close()


def msgspec_replace(t: Transfer, **changes: object) -> Transfer:
    return msgspec.structs.replace(t, **changes)


async def test_seen_tokens_survive_a_restart_and_expire(store_opener: Opener) -> None:
    store = await store_opener.open()
    store.record_jti("a", 100)
    store.record_jti("b", 200)
    store.record_jti("b", 150)  # recorded again: the later expiry stays
    await store.close()  # what was written behind is committed by then
    store = await store_opener.open()
    assert await store.live_jtis(100) == [("a", 100), ("b", 200)]
    await store.purge_jtis(101)
    assert await store.live_jtis(0) == [("b", 200)]
    await store.close()


async def test_audit_chain_is_one_chain_across_two_stores(store_opener: Opener) -> None:
    """On PostgreSQL two stores are two replicas of one participant, appending concurrently."""
    first = await store_opener.open(audit=StepAudit(clock=time.time))
    second = (await store_opener.open(audit=StepAudit(clock=time.time))
              if store_opener.engine == "postgres" else first)
    await asyncio.gather(*(
        (first if i % 2 else second).save_negotiation(_negotiation(f"urn:{i}"), expect_new=True,
                                                      outbox=[Outgoing(
                                                          process_id=f"urn:{i}", url="https://c",
                                                          audience="did:c", body=b"{}")])
        for i in range(20)))
    seq, head = await first.audit_head()
    assert seq >= 20 and head != GENESIS
    entries = await _entries(store_opener)
    assert [e[0] for e in entries] == list(range(1, seq + 1))  # no gap, no fork
    assert verify_links(_as_entries(entries), GENESIS) == (None, "")  # every link holds
    await first.add_checkpoint(seq, 5.0, "jws")
    assert await first.last_checkpoint() == (seq, 5.0)
    if second is not first:
        await second.close()
    await first.close()


async def _entries(opener: Opener) -> list[tuple[int, str, str, bytes]]:
    if opener.engine == "postgres":
        conn = await asyncpg.connect(opener.dsn)
        try:
            rows = await conn.fetch("SELECT seq, digest, hash, body FROM audit_entries"
                                    " ORDER BY seq")
        finally:
            await conn.close()
        return [(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows]
    with sqlite3.connect(opener.path) as conn:
        return [(int(r[0]), r[1], r[2], bytes(r[3])) for r in conn.execute(
            "SELECT seq, digest, hash, body FROM audit_entries ORDER BY seq")]


def _as_entries(rows: list[tuple[int, str, str, bytes]]) -> list[Entry]:
    return [Entry(seq=s, digest=d, hash=h, body=b) for s, d, h, b in rows]


async def test_use_counts_are_exact_across_two_stores(store_opener: Opener) -> None:
    first = await store_opener.open()
    second = await store_opener.open() if store_opener.engine == "postgres" else first
    counts = await asyncio.gather(*((first, second)[i % 2].add_use("urn:a", 1)
                                    for i in range(100)))
    assert sorted(counts) == list(range(1, 101))  # every use got its own number
    assert await second.agreement_uses("urn:a") == 100
    if second is not first:
        await second.close()
    await first.close()


async def test_a_schema_newer_than_the_code_is_refused(store_opener: Opener) -> None:
    store = await store_opener.open()
    await store.close()
    newer = latest(store_opener.engine) + 1
    if store_opener.engine == "postgres":
        conn = await asyncpg.connect(store_opener.dsn)
        await conn.execute("INSERT INTO connector_schema (version) VALUES ($1)", newer)
        await conn.close()
    else:
        with sqlite3.connect(store_opener.path) as db:
            db.execute(f"PRAGMA user_version = {newer}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match=f"version {newer}, newer than this connector"):
            await store_opener.open()
        gc.collect()  # what the refused store left open would warn now
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


# -- PostgreSQL: a database made by an earlier schema upgrades in place -----------------------

async def _at_migration(dsn: str, upto: int) -> None:
    """The database as the code of migration ``upto`` left it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(postgres.SCHEMA_TABLE)
        for number, sql in migrations("postgres"):
            if number <= upto:
                await conn.execute(sql)
                await conn.execute("INSERT INTO connector_schema (version) VALUES ($1)", number)
    finally:
        await conn.close()


async def test_a_database_at_migration_005_with_rows_upgrades_in_place(
        postgres_server: Postgres) -> None:
    dsn = await new_database(postgres_server)
    await _at_migration(dsn, 5)
    old = PostgresStore(await asyncpg.create_pool(dsn, min_size=1, max_size=2))
    # Rows the 005 code wrote, two of them from one re-delivered request (before 006's key).
    for pid in ("urn:first", "urn:again"):
        await old.save_negotiation(_negotiation(pid, consumer_pid="urn:c"), expect_new=True)
    await old.save_negotiation(_negotiation("urn:first", state=NegotiationState.FINALIZED),
                               agreement=_agreement("urn:first"))
    await old.add_use("urn:first:a", 3)
    old.record_jti("j", 10**10)
    await old.close()

    store = await PostgresStore.open(dsn)  # migrations 006 and 007 run here
    assert await store.get_agreement("urn:first:a") == _agreement("urn:first")
    assert await store.agreement_uses("urn:first:a") == 3
    assert await store.live_jtis(0) == [("j", 10**10)]
    kept = await store.find_negotiation(counterparty="did:c", consumer_pid="urn:c",
                                        role="provider")
    assert kept is not None and kept.id == "urn:first"  # the first row written keeps the key
    assert len(await store.list_negotiations()) == 2  # the duplicate is kept, as history
    await store.close()
    conn = await asyncpg.connect(dsn)
    assert await postgres.schema_version(conn) == latest("postgres")
    await conn.close()


async def test_replicas_starting_together_migrate_once(postgres_server: Postgres) -> None:
    dsn = await new_database(postgres_server)
    stores = await asyncio.gather(*(PostgresStore.open(dsn) for _ in range(4)))
    conn = await asyncpg.connect(dsn)
    versions = await conn.fetch("SELECT version FROM connector_schema ORDER BY version")
    await conn.close()
    assert [r[0] for r in versions] == [n for n, _ in migrations("postgres")]
    for store in stores:
        await store.close()


async def test_a_dead_replicas_outbox_is_taken_over_once(postgres_server: Postgres) -> None:
    """Replica A commits a step with two messages and dies; while A ran, B took nothing; once
    A's claim ran out, B takes both (in order), and nobody takes them twice."""
    dsn = await new_database(postgres_server)
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    await a.save_negotiation(_negotiation("urn:p"), expect_new=True, outbox=[
        Outgoing(process_id="urn:p", url=f"https://c/{n}", audience="did:c", body=b"%d" % n)
        for n in (1, 2)])
    await asyncio.sleep(postgres.CLAIM_S * 1.5)  # A renews its claim meanwhile
    assert await b.claim_orphans() == []
    a._renewer.cancel()  # A dies: it stops renewing (no close: it releases nothing)
    await a._pool.close()
    taken: list[object] = []
    for _ in range(200):
        taken = list(await b.claim_orphans())
        if taken:
            break
        await asyncio.sleep(postgres.CLAIM_S / 10)
    assert [item.url for item in taken] == ["https://c/1", "https://c/2"]  # type: ignore[attr-defined]
    c = await PostgresStore.open(dsn)  # a third replica starting now finds nothing to send
    assert await c.pending_outbox() == [] and await b.claim_orphans() == []
    for store in (b, c):
        await store.close()
    restarted = await PostgresStore.open(dsn)  # B closed cleanly: its rows are free at once
    assert [i.url for i in await restarted.pending_outbox()] == ["https://c/1", "https://c/2"]
    await restarted.close()


async def test_every_replica_hears_of_a_committed_change(postgres_server: Postgres) -> None:
    """LISTEN/NOTIFY: B, while a long poll waits in it, hears of A's committed steps (what
    wakes B's long polls), and of nothing that rolled back."""
    dsn = await new_database(postgres_server)
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    heard: list[tuple[str, str]] = []
    b.on_change = lambda kind, id: heard.append((kind, id))
    async with b.listening():
        await _steps_heard(a, heard)
    await a.close()
    await b.close()


async def _steps_heard(a: PostgresStore, heard: list[tuple[str, str]]) -> None:
    await a.save_negotiation(_negotiation("urn:n"), expect_new=True)
    with pytest.raises(ConflictError):
        await a.save_negotiation(_negotiation("urn:n"), expect_new=True)  # rolled back
    await a.save_transfer(Transfer(
        id="urn:t", role=Role.PROVIDER, state=TransferState.REQUESTED, consumer_pid="urn:c",
        provider_pid="urn:t", agreement_id="urn:a", format="HttpData-PULL",
        counterparty_address="https://c"), expect_new=True)
    for _ in range(200):
        if len(heard) >= 2:
            break
        await asyncio.sleep(0.02)
    await a.save_negotiation(_negotiation("urn:last"), expect_new=True)  # a marker
    for _ in range(200):
        if ("n", "urn:last") in heard:
            break
        await asyncio.sleep(0.02)
    assert heard == [("n", "urn:n"), ("t", "urn:t"), ("n", "urn:last")]


async def _heard(store: PostgresStore, writer: PostgresStore, heard: list[tuple[str, str]],
                 pid: str) -> bool:
    """Whether ``store`` hears of ``writer``'s step on a new process ``pid`` (a marker that
    ``store`` itself writes afterwards is heard first if it listens: NOTIFY keeps order)."""
    await writer.save_negotiation(_negotiation(pid), expect_new=True)
    await store.save_negotiation(_negotiation(pid + ":marker"), expect_new=True)
    for _ in range(100):
        if ("n", pid + ":marker") in heard:
            break
        await asyncio.sleep(0.02)
    return ("n", pid) in heard


async def test_a_replica_listens_only_while_a_long_poll_waits_in_it(
        postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """No long poll: B is not woken by A's steps. A poll: B LISTENs before it reads, and for
    LISTEN_LINGER_S after the last poll ended; a lost listening connection is opened again
    by the next poll."""
    monkeypatch.setattr(postgres, "LISTEN_LINGER_S", 1.0)
    dsn = await new_database(postgres_server)
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    heard: list[tuple[str, str]] = []
    b.on_change = lambda kind, id: heard.append((kind, id))
    try:
        assert not await _heard(b, a, heard, "urn:idle")
        async with b.listening(), b.listening():  # two polls, one LISTEN
            assert await _heard(b, a, heard, "urn:polled")
        assert await _heard(b, a, heard, "urn:lingering")  # within LISTEN_LINGER_S
        for _ in range(500):
            if not b._changes.listens:  # UNLISTEN once it passed
                break
            await asyncio.sleep(0.02)
        assert not await _heard(b, a, heard, "urn:after")
        async with b.listening():
            pid = await b._changes.conn.fetchval("SELECT pg_backend_pid()")
        async with a._pool.acquire() as conn:  # the listening connection is lost
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):
            if b._changes.conn.is_closed():
                break
            await asyncio.sleep(0.02)
        async with b.listening():
            assert await _heard(b, a, heard, "urn:reconnected")
    finally:
        await a.close()
        await b.close()


async def test_a_process_lock_holds_across_replicas(postgres_server: Postgres) -> None:
    """Replica B cannot step process p while replica A holds it, steps another process
    meanwhile, and gets p once A lets go; A's death lets go too (its connection drops)."""
    dsn = await new_database(postgres_server)
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    order: list[str] = []

    async def b_steps(key: str) -> None:
        async with b.process_locks().hold(key):
            order.append(f"b:{key}")

    async with a.process_locks().hold("urn:p"):
        waiting = asyncio.create_task(b_steps("urn:p"))
        await b_steps("urn:q")  # another process is not held up
        for _ in range(20):  # give B every chance to (wrongly) get p
            await asyncio.sleep(0.01)
        order.append("a:urn:p done")
    await asyncio.wait_for(waiting, 30)
    assert order == ["b:urn:q", "a:urn:p done", "b:urn:p"]

    held = asyncio.Event()

    async def a_dies_holding() -> None:
        async with a.process_locks().hold("urn:r"):
            held.set()
            await asyncio.sleep(3600)

    dying = asyncio.create_task(a_dies_holding())
    await held.wait()
    admin = await asyncpg.connect(dsn)  # A's session ends without unlocking: a SIGKILL
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks"
                        " WHERE locktype = 'advisory'")
    await admin.close()
    await asyncio.wait_for(b_steps("urn:r"), 30)  # while A's step still "runs"
    assert order[-1] == "b:urn:r" and not dying.done()
    dying.cancel()
    await asyncio.gather(dying, return_exceptions=True)
    await a.close()
    await b.close()


async def test_the_readiness_probe_of_the_shared_database(postgres_server: Postgres) -> None:
    store = await PostgresStore.open(await new_database(postgres_server))
    await store.save_negotiation(_negotiation("urn:p"), expect_new=True, outbox=[
        Outgoing(process_id="urn:p", url="https://c/1", audience="did:c", body=b"{}")])
    assert await store.probe(latest("postgres")) == (None, 1)  # ready, one message queued
    problem, _ = await store.probe(latest("postgres") + 1)
    assert problem is not None and "needs" in problem  # a replica newer than the database
    await store.close()


async def _query(opener: Opener, sql: str) -> list[tuple[object, ...]]:
    """Rows of one read-only statement (no parameters), in either engine."""
    if opener.engine == "postgres":
        conn = await asyncpg.connect(opener.dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    with sqlite3.connect(opener.path) as conn:
        return [tuple(r) for r in conn.execute(sql)]


async def test_a_peer_provider_pid_names_one_negotiation(store_opener: Opener) -> None:
    """Migration 008's unique key: a repeated initial offer (DSP 2025-1 §CN HTTPS binding,
    POST /negotiations/offers) finds the negotiation it opened, on both engines."""
    store = await store_opener.open()

    def offered(pid: str) -> Negotiation:
        return msgspec.structs.replace(_negotiation(pid), role=Role.CONSUMER,
                                       provider_pid="urn:offer", counterparty_id="did:p")

    await store.save_negotiation(offered("urn:1"), expect_new=True)
    with pytest.raises(ConflictError):
        await store.save_negotiation(offered("urn:2"), expect_new=True)
    found = await store.find_negotiation(counterparty="did:p", provider_pid="urn:offer",
                                         role="consumer")
    assert found is not None and found.id == "urn:1"
    assert await store.find_negotiation(counterparty="did:x", provider_pid="urn:offer",
                                        role="consumer") is None
    await store.close()


async def test_audit_rows_name_their_ids_and_keep_the_step_s_evidence(
        store_opener: Opener) -> None:
    """Migration 007's rows, alike on both engines: the ids an entry concerns in ``ref1`` and
    ``ref2``, the step's own evidence beside its entry, shared evidence once."""
    store = await store_opener.open(audit=StepAudit(clock=time.time))
    audit.received(audit.Inbound(peer="did:c", token_id="jti-1", token="h.p.s",
                                 body=b'{"@type":"ContractRequestMessage"}', bound=True,
                                 document={"id": "did:c"}))
    await store.save_negotiation(_negotiation("urn:n", state=NegotiationState.AGREED),
                                 agreement=_agreement("urn:n"), expect_new=True)
    finalized = _negotiation("urn:n", state=NegotiationState.FINALIZED)
    await store.save_negotiation(msgspec.structs.replace(finalized, history=[
        *finalized.history, HistoryEntry(at=2.0, by="provider", message="FINALIZED",
                                         state="FINALIZED")]))
    await store.close()
    rows = await _query(store_opener, "SELECT seq, ref1, ref2, evidence FROM audit_entries"
                                      " ORDER BY seq")
    assert [r[:3] for r in rows] == [(1, "urn:n", "urn:n:a"), (2, "urn:n", None)]
    kept = msgspec.msgpack.decode(bytes(rows[0][3]))  # type: ignore[arg-type]
    assert {kind for _, kind, _ in kept} == {"token", "body", "agreement"}
    assert rows[1][3] is None  # the second step received nothing
    assert await _query(store_opener, "SELECT kind FROM audit_shared") == [("did",)]


async def _waiting_for_a_lock(watcher: Any) -> bool:
    """Whether some session waits for an advisory lock (a step held up by another)."""
    return bool(await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE locktype ="
                                       " 'advisory' AND NOT granted"))


async def test_a_service_step_waits_for_the_process_lock_another_replica_holds(
        postgres_server: Postgres) -> None:
    """The services take the database's process lock as the daemon wires them
    (``KeyedLocks(store.process_locks())``): replica B's step on p waits while replica A
    holds p, and applies once A lets go."""
    dsn = await new_database(postgres_server)
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    await a.save_negotiation(_negotiation("urn:p"), expect_new=True)

    async def unused(_item: OutboxItem) -> bytes:
        raise AssertionError("nothing is sent")

    outbox = Outbox(b, unused)
    catalog = Catalog([], participant_id="did:p", dsp_base="https://p/dsp", clock=lambda: 5.0)
    service = NegotiationService(store=b, catalog=lambda: catalog, outbox=outbox, did="did:p",
                                 dsp_base="https://p/dsp", clock=lambda: 5.0, automatic=False,
                                 locks=KeyedLocks(b.process_locks()))
    ended = ContractNegotiationTerminationMessage(consumer_pid="urn:p:c", provider_pid="urn:p",
                                                  code="x", reason=["no"])
    watcher = await asyncpg.connect(dsn)
    async with a.process_locks().hold("urn:p"):
        step = asyncio.create_task(service.on_message(
            "urn:p", ended, Claims(participant_id="did:c", attributes={})))
        while not await _waiting_for_a_lock(watcher):
            assert not step.done(), step
            await asyncio.sleep(0.01)
        record = await a.get_negotiation("urn:p")
        assert record is not None and record.state is NegotiationState.REQUESTED
    assert (await asyncio.wait_for(step, 30)).state is NegotiationState.TERMINATED
    await watcher.close()
    await outbox.close()
    await a.close()
    await b.close()


async def test_two_replicas_appending_every_kind_of_step_make_one_chain(
        postgres_server: Postgres) -> None:
    """Steps that save a process row (the chain's lock and head ride in its statement,
    migration 011), and steps without one (an access's events alone, a revocation), from two
    replicas at once: one chain, no gap, no fork."""
    dsn = await new_database(postgres_server)
    a, b = [await PostgresStore.open(dsn, audit=StepAudit(clock=time.time), pool_size=4)
            for _ in range(2)]
    await a.save_negotiation(_negotiation("urn:r", state=NegotiationState.AGREED),
                             agreement=_agreement("urn:r"), expect_new=True)
    revoked = msgspec.structs.replace(_agreement("urn:r"), revoked="withdrawn")

    def step(i: int) -> Any:
        store = (a, b)[i % 2]
        if i % 5 == 0:
            return store.save_agreement(revoked)
        if i % 3 == 0:
            return store.append_audit(AuditBatch(events=[
                Event(kind="access", at=1.0, refs=(f"urn:{i}",)) for _ in range(2)]))
        return store.save_negotiation(_negotiation(f"urn:{i}"), expect_new=True)

    await asyncio.gather(*(step(i) for i in range(60)))
    entries = await _entries(Opener("postgres", Path(), dsn))
    assert len(entries) == 1 + 12 + 16 * 2 + 32  # the agreement, revocations, accesses, saves
    assert [e[0] for e in entries] == list(range(1, len(entries) + 1))  # no gap
    assert verify_links(_as_entries(entries), GENESIS) == (None, "")  # no fork
    assert await b.audit_head() == (entries[-1][0], entries[-1][2])
    await a.close()
    await b.close()


async def test_two_replicas_racing_for_one_peer_pid_one_wins_one_conflicts(
        postgres_server: Postgres) -> None:
    """With the audit trail on, each loser of a race for one consumerPid gets a conflict
    (not a refused step: the statement that writes the process row also takes the chain's
    lock), and only the winner's step is in the chain."""
    dsn = await new_database(postgres_server)
    a, b = [await PostgresStore.open(dsn, audit=StepAudit(clock=time.time)) for _ in range(2)]
    for round in range(10):
        results = await asyncio.gather(*(
            store.save_negotiation(_negotiation(f"urn:{round}:{i}", consumer_pid=f"urn:c{round}"),
                                   expect_new=True)
            for i, store in enumerate((a, b, a, b))), return_exceptions=True)
        assert sum(isinstance(r, ConflictError) for r in results) == 3, results
        assert sum(isinstance(r, list) for r in results) == 1, results
    entries = await _entries(Opener("postgres", Path(), dsn))
    assert [e[0] for e in entries] == list(range(1, 11))
    assert verify_links(_as_entries(entries), GENESIS) == (None, "")
    await a.close()
    await b.close()


async def test_an_agreement_is_written_with_its_negotiation_or_neither_is(
        store_opener: Opener) -> None:
    """The agreement rides in the negotiation's step (on PostgreSQL in the upsert's very
    statement): both are read back; a conflicting agreement leaves the negotiation as it was."""
    store = await store_opener.open(audit=StepAudit(clock=time.time))
    agreed = _negotiation("urn:n", state=NegotiationState.AGREED)
    await store.save_negotiation(agreed, agreement=_agreement("urn:n"), expect_new=True,
                                 outbox=[Outgoing(process_id="urn:n", url="https://c",
                                                  audience="did:c", body=b"{}")])
    assert await store.get_agreement("urn:n:a") == _agreement("urn:n")
    assert [a.negotiation_id for a in await store.list_agreements()] == ["urn:n"]
    with pytest.raises(ConflictError):
        await store.save_negotiation(_negotiation("urn:n", state=NegotiationState.FINALIZED),
                                     agreement=_agreement("urn:n"))
    found = await store.get_negotiation("urn:n")
    assert found is not None and found.state is NegotiationState.AGREED
    assert [e[0] for e in await _entries(store_opener)] == [1]  # the refused step left none
    await store.close()


async def test_a_token_id_is_taken_once_whichever_replica_and_batch_claims_it(
        postgres_server: Postgres) -> None:
    """Claims made together go in one statement per replica; each jti, claimed several
    times in one batch and on two replicas at once, is taken by exactly one claim; an
    expired row is taken again."""
    dsn = await new_database(postgres_server)
    a, b = [await PostgresStore.open(dsn) for _ in range(2)]
    jtis = [f"jti-{i}" for i in range(50)]
    results = await asyncio.gather(*(store.claim_jti(jti, 1000, 10)
                                     for jti in jtis for store in (a, b, a, b)))
    assert sum(results) == len(jtis)
    taken = {jti for i, jti in enumerate(j for j in jtis for _ in range(4)) if results[i]}
    assert taken == set(jtis)
    assert not await b.claim_jti("jti-0", 1000, 999)  # live: a replay
    assert await a.claim_jti("jti-0", 3000, 1001)  # expired: a new token may reuse the id
    assert await b.live_jtis(1001) == [("jti-0", 3000)]
    await a.close()
    await b.close()


async def test_seen_token_ids_written_behind_reach_the_database_without_a_close(
        postgres_server: Postgres) -> None:
    dsn = await new_database(postgres_server)
    store, other = [await PostgresStore.open(dsn) for _ in range(2)]
    for i in range(30):
        store.record_jti(f"r{i}", 500 + i)
    store.record_jti("r0", 400)  # recorded again: the later expiry stays
    while len(await other.live_jtis(0)) < 30:  # flushed within JTI_FLUSH_S, not at close
        await asyncio.sleep(0.01)
    assert (await other.live_jtis(0))[0] == ("r0", 500)
    assert not await other.claim_jti("r7", 900, 0)  # a recorded id is seen by every replica
    await store.close()
    await other.close()


async def test_audit_rows_keep_whatever_a_peer_put_in_them_byte_for_byte(
        store_opener: Opener) -> None:
    """Ids and evidence a peer chose (quotes, backslashes, a statement of its own, NUL bytes,
    any script) are stored as they came, and the chain over them verifies: on PostgreSQL
    they are written as hex literals with the COMMIT."""
    store = await store_opener.open(audit=StepAudit(clock=time.time))
    hostile = "urn:'\\x27; DROP TABLE audit_entries; --$$ é\u2028😀"
    evidence = bytes(range(256))
    await store.append_audit(AuditBatch(
        events=[Event(kind="access", at=1.5, refs=(hostile, "urn:b"), data={"q": hostile})],
        evidence=[("d1", "token", evidence), (hostile, "did", hostile.encode())]))
    await store.save_negotiation(_negotiation(hostile), expect_new=True)
    await store.close()
    rows = await _query(store_opener, "SELECT seq, ref1, ref2, evidence FROM audit_entries"
                                      " ORDER BY seq")
    assert [r[:3] for r in rows] == [(1, hostile, "urn:b"), (2, hostile, None)]
    assert msgspec.msgpack.decode(bytes(rows[0][3])) == [["d1", "token", evidence]]  # type: ignore[arg-type]
    assert [(r[0], bytes(r[1])) for r in await _query(  # type: ignore[arg-type]
        store_opener, "SELECT digest, content FROM audit_shared")] == [(hostile, hostile.encode())]
    entries = await _entries(store_opener)
    assert msgspec.json.decode(entries[0][3])["data"]["q"] == hostile
    assert verify_links(_as_entries(entries), GENESIS) == (None, "")


async def test_a_step_reads_its_process_as_the_lock_finds_it(postgres_server: Postgres) -> None:
    """The statement that takes a process lock reads the process's row once the lock is
    granted (migration 011's process_lock): replica B, waiting while A saves p, reads A's
    save, not the row as it was when B asked for the lock; after B's own save it reads that."""
    dsn = await new_database(postgres_server)
    a, b = [await PostgresStore.open(dsn) for _ in range(2)]
    await a.save_negotiation(_negotiation("urn:p"), expect_new=True)
    watcher = await asyncpg.connect(dsn)
    read: list[NegotiationState | None] = []

    async def b_steps() -> None:
        async with b.process_locks().hold("urn:p"):
            record = await b.get_negotiation("urn:p")
            read.append(record.state if record else None)
            assert record is not None
            await b.save_negotiation(msgspec.structs.replace(
                record, state=NegotiationState.TERMINATED))
            again = await b.get_negotiation("urn:p")
            read.append(again.state if again else None)
            assert await b.get_transfer("urn:p") is None  # no transfer has that id

    async with a.process_locks().hold("urn:p"):
        waiting = asyncio.create_task(b_steps())
        while not await _waiting_for_a_lock(watcher):
            await asyncio.sleep(0.01)
        await a.save_negotiation(_negotiation("urn:p", state=NegotiationState.AGREED))
    await asyncio.wait_for(waiting, 30)
    assert read == [NegotiationState.AGREED, NegotiationState.TERMINATED]
    async with b.process_locks().hold("urn:none"):
        assert await b.get_negotiation("urn:none") is None
    await watcher.close()
    await a.close()
    await b.close()


async def test_a_step_s_save_hands_its_process_lock_over_as_it_commits(
        postgres_server: Postgres) -> None:
    """The statement that saves a held process releases its lock as it commits (migration
    013's process_handover): replica B gets p, and reads A's save, while A's step has not
    ended; a second save in that step takes the lock again (it waits for B); a save that
    fails keeps the lock until the step ends; no lock is left behind."""
    dsn = await new_database(postgres_server)
    a, b = [await PostgresStore.open(dsn) for _ in range(2)]
    await a.save_negotiation(_negotiation("urn:p"), expect_new=True)
    watcher = await asyncpg.connect(dsn)
    order: list[str] = []

    async def b_reads() -> None:
        async with b.process_locks().hold("urn:p"):
            record = await b.get_negotiation("urn:p")
            order.append(f"b read {record.state if record else None}")

    async with a.process_locks().hold("urn:p"):
        await a.save_negotiation(_negotiation("urn:p", state=NegotiationState.AGREED))
        await asyncio.wait_for(b_reads(), 30)  # before A's step ends: it was handed over
        order.append("a ends")
    assert order == ["b read AGREED", "a ends"]

    b_holds, b_may_go = asyncio.Event(), asyncio.Event()

    async def b_holds_p() -> None:
        async with b.process_locks().hold("urn:p"):
            b_holds.set()
            await b_may_go.wait()
            await b.save_negotiation(_negotiation("urn:p", state=NegotiationState.VERIFIED))

    async def b_goes_once_a_waits() -> None:
        while not await _waiting_for_a_lock(watcher):
            await asyncio.sleep(0.01)
        order.append("a waits for b")
        b_may_go.set()

    async with a.process_locks().hold("urn:p"):
        await a.save_negotiation(_negotiation("urn:p", state=NegotiationState.AGREED))
        holder = asyncio.create_task(b_holds_p())
        await b_holds.wait()
        releaser = asyncio.create_task(b_goes_once_a_waits())
        # The step's own second save (in its task: a task it started has no lock).
        await a.save_negotiation(_negotiation("urn:p", state=NegotiationState.FINALIZED))
        order.append("a saved again")
    await asyncio.wait_for(asyncio.gather(holder, releaser), 30)
    assert order[-2:] == ["a waits for b", "a saved again"]
    record = await a.get_negotiation("urn:p")
    assert record is not None and record.state is NegotiationState.FINALIZED

    async with a.process_locks().hold("urn:p"):
        with pytest.raises(ConflictError):  # p exists: the save fails, the lock stays
            await a.save_negotiation(_negotiation("urn:p"), expect_new=True)
        reader = asyncio.create_task(b_reads())
        while not await _waiting_for_a_lock(watcher):
            await asyncio.sleep(0.01)
        order.append("a ends")
    await asyncio.wait_for(reader, 30)
    assert order[-2:] == ["a ends", "b read FINALIZED"]
    assert await watcher.fetchval("SELECT count(*) FROM pg_locks"
                                  " WHERE locktype = 'advisory'") == 0
    await watcher.close()
    await a.close()
    await b.close()


async def test_a_lock_on_a_key_that_names_no_process_nests_one_that_does(
        postgres_server: Postgres) -> None:
    """An initial request's lock is keyed by (peer, role, its pid) joined by NUL, which no
    PostgreSQL text holds: that lock is taken alone, and the new process's inside it."""
    store = await PostgresStore.open(await new_database(postgres_server))
    locks = store.process_locks()
    async with locks.hold("initial\x00did:c\x00consumer\x00urn:c"), locks.hold("urn:n"):
        assert await store.get_negotiation("urn:n") is None
        await store.save_negotiation(_negotiation("urn:n"), expect_new=True)
    assert await store.get_negotiation("urn:n") is not None
    await store.close()


async def test_entries_the_database_chains_are_the_ones_the_connector_would_make(
        postgres_server: Postgres) -> None:
    """A step's entries numbered, chained and written by ``audit_append`` (migration 012),
    byte for byte what ``core.audit.make_entry`` makes of the same events."""
    dsn = await new_database(postgres_server)
    store = await PostgresStore.open(dsn, audit=StepAudit(clock=time.time), pool_size=2)
    events = [Event(kind="negotiation", at=1796528003.318779, refs=("urn:x", "urn:y"),
                    data={"note": "é \u2713 \"quoted\" \\ \n", "n": [1, 2.5, None, True]}),
              Event(kind="access", at=1.0, refs=(), data={}),
              Event(kind="keys", at=2e9, refs=("urn:x",), data={"big": 10**18})]
    record = postgres.Announced(
        postgres._UPSERT_NEGOTIATION,
        ("urn:x", "provider", "REQUESTED", "c", "urn:x", "did:c", "d", 1.0, b"{}"), "n", "urn:x")
    await store._one_statement(record, (), AuditBatch(events=events[:1]))
    await store._one_statement(record._replace(sql=record.sql + postgres._ON_NEGOTIATION),
                               (), AuditBatch(events=events[1:]))
    stored = await _entries(Opener("postgres", Path(), dsn))
    prev = GENESIS
    for (seq, digest, hash, body), event in zip(stored, events, strict=True):
        made = make_entry(seq, prev, event)
        assert (digest, hash, body) == (made.digest, made.hash, made.body)
        prev = made.hash
    assert [s[0] for s in stored] == [1, 2, 3]
    await store.close()


async def test_a_negotiation_step_that_adds_nothing_writes_no_entry(
        store_opener: Opener) -> None:
    """The consumer learning the provider's pid from the 201 (no timeline line, no message,
    no agreement) leaves the trail as it was; the steps around it each write theirs."""
    store = await store_opener.open(audit=StepAudit(clock=time.time))
    requested = msgspec.structs.replace(_negotiation("urn:n"), role=Role.CONSUMER,
                                        provider_pid=None)
    out = Outgoing(process_id="urn:n", url="https://p/negotiations/request",
                   audience="did:p", body=b'{"@type":"ContractRequestMessage"}')
    await store.save_negotiation(requested, outbox=[out], expect_new=True)
    await store.save_negotiation(msgspec.structs.replace(requested, provider_pid="urn:p"))
    ended = msgspec.structs.replace(requested, provider_pid="urn:p",
                                    state=NegotiationState.TERMINATED, history=[
        *requested.history, HistoryEntry(at=2.0, by="provider", message="terminated",
                                         state="TERMINATED")])
    await store.save_negotiation(ended)
    await store.close()
    rows = await _query(store_opener, "SELECT seq, body FROM audit_entries ORDER BY seq")
    states = [json.loads(bytes(body))["data"]["state"] for _, body in rows]
    assert states == ["REQUESTED", "TERMINATED"]
    assert json.loads(bytes(rows[1][1]))["data"]["providerPid"] == "urn:p"
