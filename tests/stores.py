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
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.adapters.storage.engine import AnyStore
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import ENGINES, Engine
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
    """Point a participant folder's state at the PostgreSQL database ``dsn``."""
    dsn_file = folder / "keys" / "db.dsn"
    dsn_file.write_text(dsn + "\n")
    dsn_file.chmod(0o600)
    config = folder / "connector.toml"
    config.write_text(config.read_text().replace(
        "[storage]\n", '[storage]\npostgres_dsn_file = "keys/db.dsn"\n', 1))


def set_port(folder: Path, table: str, port: int) -> None:
    """Set ``[table] port`` in a folder's connector.toml (a replica's own listening port)."""
    config = folder / "connector.toml"
    config.write_text(re.sub(rf"(\[{table}\][^\[]*?\nport = )\d+", rf"\g<1>{port}",
                             config.read_text(), count=1))
