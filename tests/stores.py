"""Both storage engines behind one opener, so the store tests run on each (a parameter).

``store_opener`` (a fixture, parametrised ``sqlite`` / ``postgres``) gives an ``Opener``:
``await opener.open(audit=...)`` opens the store, again and again on the same state (a
restart); ``opener.engine`` names the engine. PostgreSQL is the real server of
``tests/e2e/postgres.py``, a fresh database per test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.adapters.storage.engine import AnyStore
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import Engine
from connector.adapters.storage.sqlite import SqliteStore
from connector.service.audit import StepAudit
from tests.e2e.postgres import new_database


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
