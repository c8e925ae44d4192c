"""Both storage engines behind one opener, so the store tests run on each (a parameter).

``store_opener`` (a fixture, parametrised ``sqlite`` / ``postgres``) gives an ``Opener``:
``await opener.open(audit=...)`` opens the store, again and again on the same state (a
restart); ``opener.engine`` names the engine. PostgreSQL is the real server of
``tests/e2e/postgres.py``, a fresh database per test.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connector.adapters.storage.engine import AnyStore
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import ENGINES, Engine
from connector.adapters.storage.sqlite import SqliteStore
from connector.config import load_settings
from connector.service.audit import StepAudit
from tests.e2e.postgres import Postgres, new_database


@dataclass
class Opener:
    engine: Engine
    path: Path  # the SQLite file
    dsn: str = ""  # the PostgreSQL database

    async def open(self, *, audit: StepAudit | None = None) -> AnyStore:
        if self.engine == "postgres":
            return await PostgresStore.open(self.dsn, audit=audit)
        return await SqliteStore.open(self.path, audit=audit)


@pytest.fixture(params=["sqlite", "postgres"])
def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    engine: Engine = request.param
    if engine == "postgres":
        server = request.getfixturevalue("postgres_server")
        return Opener(engine, tmp_path / "db.sqlite", asyncio.run(new_database(server)))
    return Opener(engine, tmp_path / "db.sqlite")


class StateDb:
    """A participant folder's state database, whichever engine holds it (its SQLite file, or
    the PostgreSQL database its ``[storage] postgres_dsn_file`` names), for a test to read or
    damage it under a running daemon. Statements take ``?`` placeholders on both engines and
    each commits on its own, unless sent between ``BEGIN`` and ``COMMIT`` or ``ROLLBACK``.
    Usable from a running event loop: PostgreSQL is spoken from a thread of its own."""

    def __init__(self, folder: Path) -> None:
        settings = load_settings(folder)
        self.engine: Engine = "postgres" if settings.postgres_dsn_file else "sqlite"
        self._sqlite: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pg: Any = None
        self._one_at_a_time = threading.Lock()  # a connection runs one statement at a time
        if settings.postgres_dsn_file is None:
            self._sqlite = sqlite3.connect(settings.database, isolation_level=None,
                                           timeout=10, check_same_thread=False)
            return
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, daemon=True).start()
        dsn = settings.postgres_dsn_file.read_text().strip()
        self._pg = self._run(asyncpg.connect(dsn))

    def _serve(self) -> None:
        """The thread PostgreSQL is spoken from: its loop, until ``close`` stops it."""
        assert self._loop is not None
        self._loop.run_forever()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows ``sql`` returns (none for most statements)."""
        with self._one_at_a_time:
            if self._sqlite is not None:
                return [tuple(r) for r in self._sqlite.execute(sql, args)]
            numbered = iter(range(1, sql.count("?") + 1))
            rows = self._run(self._pg.fetch(
                re.sub(r"\?", lambda _: f"${next(numbered)}", sql), *args))
            return [tuple(r) for r in rows]

    def text(self) -> str:
        """Everything the database holds, as text: the SQLite file's bytes, or every row of
        every table of the PostgreSQL database (byte strings as Latin-1), for a test that
        looks for what must never be stored."""
        if self._sqlite is not None:
            path = self._sqlite.execute("PRAGMA database_list").fetchone()[2]
            return Path(path).read_bytes().decode("latin-1")
        tables = self.execute("SELECT table_name FROM information_schema.tables"
                              " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
        return "\n".join(
            " ".join(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row)
            for (table,) in tables for row in self.execute(f'SELECT * FROM "{table}"'))

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        elif self._loop is not None:
            self._run(self._pg.close())
            self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> StateDb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def e2e_engines() -> list[str]:
    """The engines the end-to-end daemons run on: ``CONNECTOR_E2E_ENGINES`` (comma-separated,
    ``sqlite,postgres`` for the whole suite on both); default SQLite, with the two-daemon
    tests (tests/e2e/test_two_daemons.py) on both engines always."""
    names = [n.strip() for n in os.environ.get("CONNECTOR_E2E_ENGINES", "sqlite").split(",")]
    unknown = set(names) - set(ENGINES)
    if unknown or not names:
        raise pytest.UsageError(f"CONNECTOR_E2E_ENGINES: unknown engine(s) {sorted(unknown)}; "
                                f"choose from {', '.join(ENGINES)}")
    return names


def use_postgres(folder: Path, dsn: str) -> None:
    """Point a participant folder's state at the PostgreSQL database ``dsn`` (again: the
    folder's DSN file then names the new one)."""
    dsn_file = folder / "keys" / "db.dsn"
    dsn_file.write_text(dsn + "\n")
    dsn_file.chmod(0o600)
    config = folder / "connector.toml"
    text = config.read_text()
    if 'postgres_dsn_file = "keys/db.dsn"' not in text:
        config.write_text(text.replace(
            "[storage]\n", '[storage]\npostgres_dsn_file = "keys/db.dsn"\n', 1))


def on_new_database(server: Postgres, folder: Path) -> None:
    """Give ``folder`` a fresh database of its own on ``server``; callable from a running
    event loop (the database is made on a thread of its own)."""
    with ThreadPoolExecutor(1) as pool:
        dsn = pool.submit(asyncio.run, new_database(server)).result()
    use_postgres(folder, dsn)


def set_port(folder: Path, table: str, port: int) -> None:
    """Set ``[table] port`` in a folder's connector.toml (a replica's own listening port)."""
    config = folder / "connector.toml"
    config.write_text(re.sub(rf"(\[{table}\][^\[]*?\nport = )\d+", rf"\g<1>{port}",
                             config.read_text(), count=1))
