"""Which engine keeps a participant's state, chosen from its settings, and what the ``db``
commands do on each.

``[storage] postgres_dsn_file`` names a 0600 file holding a PostgreSQL DSN (a libpq
key/value string or a ``postgresql://`` URL): the state is then in that database, shared by
every replica of the participant. Without it, the state is the embedded SQLite file
(``[storage] sqlite``). Errors name the DSN file, never the DSN (it may hold a password), and
are ``ConfigError``: one line for the operator, never a traceback.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from connector import keys
from connector.adapters.storage import postgres
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import Engine, latest
from connector.adapters.storage.sqlite import SqliteStore
from connector.config import Settings
from connector.core.errors import ConfigError
from connector.service.audit import StepAudit

# How long a connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT_S = 10.0

AnyStore = SqliteStore | PostgresStore


@dataclass(frozen=True)
class SchemaStatus:
    engine: Engine
    where: str  # the SQLite file, or the DSN file (never the DSN)
    version: int  # the migration the database is at (0: none)
    latest: int  # the migration this code brings it to


def engine_of(settings: Settings) -> Engine:
    """The engine ``settings`` choose."""
    return "postgres" if settings.postgres_dsn_file is not None else "sqlite"


def read_dsn(path: Path) -> str:
    """The DSN in ``path``, which must be a 0600 file."""
    keys.check_private_mode(path)
    try:
        dsn = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"postgres_dsn_file {path}: cannot read: {exc}") from exc
    if not dsn:
        raise ConfigError(f"postgres_dsn_file {path}: empty")
    return dsn


def _connect_error(path: Path, exc: BaseException) -> ConfigError:
    """One line saying why the database named in ``path`` cannot be used."""
    if isinstance(exc, ValueError | asyncpg.ClientConfigurationError):  # may quote the DSN
        return ConfigError(f"postgres_dsn_file {path}: not a valid DSN")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError
                  | asyncpg.InvalidPasswordError):
        return ConfigError(f"postgres_dsn_file {path}: the database refused the user or "
                           f"password ({type(exc).__name__})")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"postgres_dsn_file {path}: no such database ({exc})")
    reason = str(exc).strip() or type(exc).__name__
    return ConfigError(f"postgres_dsn_file {path}: cannot reach the database: {reason}")


_CONNECT_ERRORS = (OSError, TimeoutError, ValueError, asyncpg.PostgresError,
                   asyncpg.InterfaceError)


async def connect(path: Path) -> Any:
    """One connection to the database the DSN file ``path`` names (ConfigError if it
    cannot be used, naming the file)."""
    dsn = read_dsn(path)
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except _CONNECT_ERRORS as exc:
        raise _connect_error(path, exc) from None


async def open_store(settings: Settings, *, audit: StepAudit | None = None) -> AnyStore:
    """The store ``settings`` choose, its schema brought up to date."""
    path = settings.postgres_dsn_file
    if path is None:
        return await SqliteStore.open(settings.database, audit=audit)
    dsn = read_dsn(path)
    try:
        return await PostgresStore.open(dsn, audit=audit,
                                         pool_size=settings.postgres_pool_size)
    except ConfigError:
        raise
    except _CONNECT_ERRORS as exc:
        raise _connect_error(path, exc) from None


async def status(settings: Settings) -> SchemaStatus:
    """Where the state is and which migration it is at; nothing is written."""
    path = settings.postgres_dsn_file
    if path is None:
        return SchemaStatus("sqlite", str(settings.database),
                            _sqlite_version(settings.database), latest("sqlite"))
    conn = await connect(path)
    try:
        version = await postgres.schema_version(conn)
    except _CONNECT_ERRORS as exc:
        raise _connect_error(path, exc) from None
    finally:
        await conn.close()
    return SchemaStatus("postgres", str(path), version, latest("postgres"))


def _sqlite_version(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: not a readable SQLite database: {exc}") from None


async def upgrade(settings: Settings) -> tuple[int, int]:
    """Apply the missing migrations; (version before, version after)."""
    path = settings.postgres_dsn_file
    if path is None:
        before = _sqlite_version(settings.database)
        store = await SqliteStore.open(settings.database)
        await store.close()
        return before, latest("sqlite")
    conn = await connect(path)
    try:
        return await postgres.upgrade(conn)
    except _CONNECT_ERRORS as exc:
        raise _connect_error(path, exc) from None
    finally:
        await conn.close()


def backup(settings: Settings, target: Path) -> None:
    """A consistent copy of the SQLite database in ``target`` (SQLite's online backup: the
    daemon may keep running). PostgreSQL is backed up with ``pg_dump`` (README)."""
    if settings.postgres_dsn_file is not None:
        raise ConfigError("the state is in PostgreSQL: back it up with pg_dump (README "
                          "\"Backups\"), not with connector db backup")
    if not settings.database.exists():
        raise ConfigError(f"{settings.database}: no database to back up")
    if target.exists():
        raise ConfigError(f"{target}: exists already; name a new file")
    try:
        source = sqlite3.connect(settings.database.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            dest = sqlite3.connect(target)
            try:
                source.backup(dest)
            finally:
                dest.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot back up {settings.database} to {target}: {exc}") from None
    target.chmod(0o600)

