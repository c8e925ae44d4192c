"""The SQLite store's write path: a group commit's statements queued to aiosqlite's thread at
once (one multi-row INSERT per statement), the transaction still all or nothing, and the
write-ahead log checkpointed apart from the commits."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from connector.adapters.storage import sqlite as sqlite_store
from connector.adapters.storage.sqlite import SqliteStore, _multi_row
from connector.core.negotiation import Negotiation, NegotiationState, Role

_UPSERT = ("INSERT INTO kv (k, v) VALUES (?, ?)"
           " ON CONFLICT (k) DO UPDATE SET v = excluded.v")


def _apply(statements: list[tuple[str, list[object]]]) -> list[tuple[str, str]]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    for sql, args in statements:
        conn.execute(sql, args)
    return [tuple(row) for row in conn.execute("SELECT k, v FROM kv ORDER BY k")]


def test_insert_rows_become_one_statement_and_keep_their_order() -> None:
    rows: list[tuple[object, ...]] = [("a", "1"), ("b", "2"), ("a", "3")]
    statements = _multi_row(_UPSERT, rows)
    assert len(statements) == 1
    assert statements[0][0].count("(?, ?)") == 3
    # The upsert of one key twice ends with the later row, as executemany would.
    assert _apply(statements) == [("a", "3"), ("b", "2")]


def test_large_batches_are_split_and_other_statements_run_per_row() -> None:
    rows = [(f"k{i:04}", str(i)) for i in range(sqlite_store.MAX_ROWS_PER_INSERT * 2 + 1)]
    statements = _multi_row(_UPSERT, rows)
    assert [sql.count("(?, ?)") for sql, _ in statements] == [
        sqlite_store.MAX_ROWS_PER_INSERT, sqlite_store.MAX_ROWS_PER_INSERT, 1]
    assert len(_apply(statements)) == len(rows)
    update = "UPDATE kv SET v = ? WHERE k = ?"
    assert _multi_row(update, [("x", "a"), ("y", "b")]) == [(update, ["x", "a"]),
                                                            (update, ["y", "b"])]


def _negotiation(id: str) -> Negotiation:
    return Negotiation(id=id, role=Role.PROVIDER, state=NegotiationState.REQUESTED,
                       consumer_pid=f"c-{id}", provider_pid=id, dataset_id="d", offer={},
                       counterparty_address="https://peer.example/dsp",
                       counterparty_id="did:web:peer", updated_at=1.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


def _count(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_a_statement_that_fails_leaves_the_whole_batch_unwritten(
        store: SqliteStore, tmp_path: Path) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await store._run([
            ("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)", ("t1", 10)),
            ("INSERT INTO agreement_uses (agreement_id, uses) VALUES (?, ?)", ("a", 1)),
            ("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)", ("t1", 11)),  # again
        ])
    assert _count(tmp_path / "state.db", "seen_tokens") == 0
    assert _count(tmp_path / "state.db", "agreement_uses") == 0
    # The connection is usable afterwards: the next step commits.
    await store.save_negotiation(_negotiation("n1"), expect_new=True)
    assert _count(tmp_path / "state.db", "negotiations") == 1


async def test_a_cancelled_write_commits_whole_or_not_at_all(store: SqliteStore,
                                                             tmp_path: Path) -> None:
    """Cancelled once queued, a write is one transaction on the connection's thread: none of
    it, or all of it, and never part of the next write's transaction."""
    rows = [("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)", (f"t{i}", i))
            for i in range(2000)]
    task = asyncio.create_task(store._run(rows))
    await asyncio.sleep(0)  # the transaction is queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.save_negotiation(_negotiation("n1"), expect_new=True)
    assert _count(tmp_path / "state.db", "seen_tokens") in (0, 2000)
    assert _count(tmp_path / "state.db", "negotiations") == 1


async def test_a_failed_statement_leaves_nothing_of_its_transaction(
        store: SqliteStore, tmp_path: Path) -> None:
    rows = [("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)", ("t1", 1)),
            ("INSERT INTO no_such_table VALUES (?)", (1,))]
    with pytest.raises(sqlite3.OperationalError):
        await store._run(rows)
    await store.save_negotiation(_negotiation("n1"), expect_new=True)
    assert _count(tmp_path / "state.db", "seen_tokens") == 0
    assert _count(tmp_path / "state.db", "negotiations") == 1


async def test_single_writes_commit_on_their_own(store: SqliteStore, tmp_path: Path) -> None:
    assert await store.add_use("a", 2) == 2
    assert await store.add_use("a", 3) == 5
    # Another connection sees them: committed.
    assert _count(tmp_path / "state.db", "agreement_uses") == 1
    with closing(sqlite3.connect(tmp_path / "state.db")) as conn:
        assert conn.execute("SELECT uses FROM agreement_uses").fetchone()[0] == 5


async def test_the_log_is_checkpointed_apart_from_the_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 0.05)
    db = tmp_path / "state.db"
    store = await SqliteStore.open(db)
    try:
        before = db.stat().st_size
        for i in range(50):  # well under SQLite's own threshold of 1000 pages
            await store.save_negotiation(_negotiation(f"n{i}"), expect_new=True)
        for _ in range(200):  # only a checkpoint grows the database file itself
            if db.stat().st_size > before:
                break
            await asyncio.sleep(0.05)
        assert db.stat().st_size > before
        assert _count(db, "negotiations") == 50
    finally:
        await store.close()
    assert not Path(f"{db}-wal").exists()  # the last connection closed took the log away
