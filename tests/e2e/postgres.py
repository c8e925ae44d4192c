"""A real PostgreSQL server for the tests: Debian's packages, a throw-away cluster on loopback.

``postgres_server`` (a session fixture, offered to tests/e2e by its conftest;
``running_postgres`` outside pytest) finds ``initdb``/``pg_ctl`` under
``/usr/lib/postgresql/*/bin``, installing the ``postgresql`` package with apt-get when they are
absent. It initdb's a temporary data directory, starts the server on a free 127.0.0.1 port
with password (SCRAM) authentication, fills table ``readings`` with ROWS rows of varied types
and stops the server at the end. PostgreSQL refuses to run as root, so as root the cluster is
owned and run by the ``postgres`` user. Where PostgreSQL can be neither found nor installed the
tests fail (with the reason), they do not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import glob
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.debian import apt_install
from tests.harness import free_port

ROWS = 300
USER = "connector"
PASSWORD = "pg-secret-4c1d"
DATABASE = "records"
QUERY = "SELECT * FROM readings ORDER BY id"
SERVICE_USER = "postgres"


@dataclass
class Postgres:
    port: int
    dsn: str  # a postgresql:// URL with the password: what a dsn_file holds
    log: Path | None = None  # the server's log file


async def log_statements(server: Postgres, on: bool) -> None:
    """Have the server log every statement it runs (``log_statement = all``), each line
    beginning with ``db=<database> ``, or none (and the default line prefix again)."""
    admin = await asyncpg.connect(host="127.0.0.1", port=server.port, user=SERVICE_USER,
                                  password=PASSWORD, database="postgres")
    try:
        await admin.execute(f"ALTER SYSTEM SET log_statement = '{'all' if on else 'none'}'")
        await admin.execute("ALTER SYSTEM SET log_line_prefix = 'db=%d %m [%p] '" if on
                            else "ALTER SYSTEM RESET log_line_prefix")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


def _bin_dir() -> Path | None:
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        path = Path(found)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def postgres_bin() -> Path:
    """Where initdb and pg_ctl are, installing PostgreSQL first if need be (else fail)."""
    found = _bin_dir()
    if found is None:
        failure = apt_install("postgresql")
        found = _bin_dir()
        if found is None:
            pytest.fail("PostgreSQL is needed by the postgres source tests and could not be "
                        "installed (`apt-get install -y -q postgresql`; is Debian's archive "
                        f"reachable?):\n{failure}", pytrace=False)
    return found


def _as_service_user(args: list[str]) -> list[str]:
    """The command run as the postgres user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return args
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVICE_USER, "--", *args]
    return ["su", SERVICE_USER, "-s", "/bin/sh", "-c", subprocess.list2cmdline(args)]


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_service_user(args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")


def row_values(i: int) -> tuple[Any, ...]:
    """Row ``i`` of ``readings``, as asyncpg takes (and gives back) the values."""
    at = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(minutes=7 * i)
    return (
        i,
        f"station-{i % 13}" if i % 11 else f"quote \" and \u00e9 {i}",
        (decimal.Decimal(i * 37 - 500) / 100).quantize(decimal.Decimal("0.01")),
        i * 0.25 if i % 9 else None,
        i % 3 == 0,
        at,
        at.replace(tzinfo=None),
        (at - datetime.timedelta(days=400)).date(),
        bytes([i % 256, (i * 7) % 256, 0]),
        uuid.UUID(int=i * 7919 + 1),
        [i, i + 1],
        json.dumps({"k": i}),
    )


COLUMNS = ("id integer PRIMARY KEY, station text, amount numeric(12, 2), level double precision,"
           " flagged boolean, at timestamptz, local_at timestamp, day date, raw bytea,"
           " ref uuid, pair integer[], extra jsonb")


async def _fill(port: int) -> None:
    admin = await asyncpg.connect(host="127.0.0.1", port=port, user=SERVICE_USER,
                                  password=PASSWORD, database="postgres")
    try:
        await admin.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        await admin.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                                 database=DATABASE)
    try:
        await conn.execute(f"CREATE TABLE readings ({COLUMNS})")
        await conn.executemany(
            "INSERT INTO readings VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [row_values(i) for i in range(ROWS)])
    finally:
        await conn.close()


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A started, filled server; stopped and its directory removed on leaving."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="connector-pg-"))
    data, pwfile, log = root / "data", root / "pwfile", root / "server.log"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, SERVICE_USER)
        shutil.chown(pwfile, SERVICE_USER)
    port = free_port()
    pg_ctl = str(bin_dir / "pg_ctl")
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", SERVICE_USER, "-E", "UTF8",
          "--locale=C", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"])
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
               " -c full_page_writes=off -c synchronous_commit=off")
    try:
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
              "start"])
        try:
            asyncio.run(_fill(port))
            yield Postgres(port=port,
                           dsn=f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}",
                           log=log)
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


async def _create_database(port: int, name: str) -> None:
    admin = await asyncpg.connect(host="127.0.0.1", port=port, user=SERVICE_USER,
                                  password=PASSWORD, database="postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER {USER}")
    finally:
        await admin.close()


async def new_database(server: Postgres) -> str:
    """A fresh, empty database on ``server`` owned by the connector's role; its DSN (what a
    ``[storage] postgres_dsn_file`` holds)."""
    name = f"state_{uuid.uuid4().hex[:12]}"
    await _create_database(server.port, name)
    return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{server.port}/{name}"
