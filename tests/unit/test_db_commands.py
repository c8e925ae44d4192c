"""``connector db status|upgrade|backup`` on a real folder, on both engines, and what they say
when the database cannot be used: one line and exit status 2, never a traceback.

PostgreSQL is a real server (tests/e2e/postgres.py), a fresh database per test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest

from connector import cli
from connector.adapters.storage.engine import open_store
from connector.adapters.storage.postgres import PostgresStore
from connector.adapters.storage.schema import latest
from connector.config import load_settings
from connector.core.negotiation import HistoryEntry, Negotiation, NegotiationState, Role
from connector.participant.init import init_folder
from connector.service.audit import StepAudit
from connector.service.store import Agreement
from tests.e2e.postgres import PASSWORD, Postgres, new_database
from tests.harness import free_port
from tests.stores import Opener, use_postgres


def _folder(tmp_path: Path, dsn: str | None = None, mode: int = 0o600) -> Path:
    root = tmp_path / "acme"
    init_folder(root, name="acme", url="https://127.0.0.1:18443")
    if dsn is not None:
        use_postgres(root, dsn)
        (root / "keys" / "db.dsn").chmod(mode)
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["db", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and PASSWORD not in err  # the DSN's password never shows
    return lines[0]


def _folder_for(opener: Opener, tmp_path: Path) -> Path:
    return _folder(tmp_path, opener.dsn if opener.engine == "postgres" else None)


def test_status_upgrade_status(store_opener: Opener, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder_for(store_opener, tmp_path)
    code, out, _ = _run(capsys, "status", "--dir", str(root))
    assert code == 1 and f"{store_opener.engine} " in out and "schema 000" in out
    assert "connector db upgrade" in out
    code, out, _ = _run(capsys, "upgrade", "--dir", str(root))
    assert code == 0 and out.strip() == f"schema 000 -> {latest(store_opener.engine):03d}"
    code, out, _ = _run(capsys, "status", "--dir", str(root))
    assert code == 0 and "up to date" in out
    code, out, _ = _run(capsys, "upgrade", "--dir", str(root))
    assert code == 0 and "up to date" in out


def test_an_unreachable_database_is_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"postgresql://connector:{PASSWORD}@127.0.0.1:{free_port()}/records"
    root = _folder(tmp_path, dsn)
    for command in ("status", "upgrade"):
        code, _, err = _run(capsys, command, "--dir", str(root))
        assert code == 2 and "cannot reach the database" in _one_error_line(err)


def test_a_wrong_password_is_one_line(postgres_server: Postgres, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"postgresql://connector:not-the-password@127.0.0.1:{postgres_server.port}/records"
    root = _folder(tmp_path, dsn)
    code, _, err = _run(capsys, "upgrade", "--dir", str(root))
    assert code == 2 and "refused the user or password" in _one_error_line(err)
    assert "not-the-password" not in err


def test_a_dsn_file_readable_by_others_is_refused(postgres_server: Postgres, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path, postgres_server.dsn, mode=0o644)
    code, _, err = _run(capsys, "status", "--dir", str(root))
    assert code == 2 and "must be 0600" in _one_error_line(err)


def test_a_garbled_dsn_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path, "postgresql://[::1")
    code, _, err = _run(capsys, "status", "--dir", str(root))
    assert code == 2 and "db.dsn" in _one_error_line(err)


def _pool_size(root: Path, value: str) -> None:
    config = root / "connector.toml"
    config.write_text(config.read_text().replace(
        "[storage]\n", f"[storage]\npostgres_pool_size = {value}\n", 1))


def test_a_replica_opens_at_most_postgres_pool_size_connections(
        postgres_server: Postgres, tmp_path: Path) -> None:
    root = _folder(tmp_path, asyncio.run(new_database(postgres_server)))
    _pool_size(root, "3")

    async def sizes() -> tuple[int, int]:
        store = await open_store(load_settings(root))
        try:
            assert isinstance(store, PostgresStore)
            return store._pool.get_max_size(), load_settings(tmp_path / "other").postgres_pool_size
        finally:
            await store.close()

    init_folder(tmp_path / "other", name="other", url="https://127.0.0.1:18444")
    assert asyncio.run(sizes()) == (3, 20)  # the setting, and the default


@pytest.mark.parametrize("value", ["0", "1001", "2.5", "true", '"20"'])
def test_a_pool_size_out_of_range_is_one_line(value: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path, "postgresql://connector@127.0.0.1:1/records")
    _pool_size(root, value)
    code, _, err = _run(capsys, "status", "--dir", str(root))
    assert code == 2 and "postgres_pool_size" in _one_error_line(err)


def test_a_schema_newer_than_the_code_is_one_line(store_opener: Opener, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder_for(store_opener, tmp_path)
    assert _run(capsys, "upgrade", "--dir", str(root))[0] == 0
    newer = latest(store_opener.engine) + 1
    if store_opener.engine == "postgres":
        async def bump() -> None:
            conn = await asyncpg.connect(store_opener.dsn)
            await conn.execute("INSERT INTO connector_schema (version) VALUES ($1)", newer)
            await conn.close()
        asyncio.run(bump())
    else:
        with sqlite3.connect(load_settings(root).database) as db:
            db.execute(f"PRAGMA user_version = {newer}")
    code, out, _ = _run(capsys, "status", "--dir", str(root))
    assert code == 2 and "NEWER than this connector" in out
    code, _, err = _run(capsys, "upgrade", "--dir", str(root))
    assert code == 2 and "newer than this connector" in _one_error_line(err)


# -- backup and restore ------------------------------------------------------------------------

def _negotiation(pid: str, state: NegotiationState) -> Negotiation:
    return Negotiation(id=pid, role=Role.PROVIDER, state=state, consumer_pid=f"{pid}:c",
                       provider_pid=pid, dataset_id="ds", offer={"@id": "o"},
                       counterparty_address="https://c", counterparty_id="did:c",
                       created_at=1.0, updated_at=1.0,
                       history=[HistoryEntry(at=1.0, by="consumer", message=state.value,
                                             state=state.value)])


AGREEMENT = Agreement(id="urn:a", negotiation_id="urn:n", role="provider", dataset_id="ds",
                      assigner="did:p", assignee="did:c", created_at=2.0, body={"@id": "urn:a"})


async def _some_state(root: Path) -> None:
    store = await open_store(load_settings(root), audit=StepAudit(clock=time.time))
    await store.save_negotiation(_negotiation("urn:n", NegotiationState.REQUESTED),
                                 expect_new=True)
    await store.save_negotiation(_negotiation("urn:n", NegotiationState.FINALIZED),
                                 agreement=AGREEMENT)
    for _ in range(7):
        await store.add_use("urn:a", 1)
    await store.close()


async def _restored(root: Path) -> tuple[Agreement | None, int, int]:
    store = await open_store(load_settings(root))
    try:
        head = await store.audit_head()
        return await store.get_agreement("urn:a"), await store.agreement_uses("urn:a"), head[0]
    finally:
        await store.close()


def test_backup_then_restore_brings_back_agreements_and_counters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path)
    asyncio.run(_some_state(root))
    copy = tmp_path / "backup.db"
    code, out, _ = _run(capsys, "backup", str(copy), "--dir", str(root))
    assert code == 0 and str(copy) in out and copy.stat().st_mode & 0o077 == 0
    code, _, err = _run(capsys, "backup", str(copy), "--dir", str(root))  # never overwrites
    assert code == 2 and "exists already" in _one_error_line(err)

    database = load_settings(root).database  # the disk is lost; the backup is put back
    for leftover in database.parent.glob(database.name + "*"):
        leftover.unlink()
    copy.replace(database)
    agreement, uses, audited = asyncio.run(_restored(root))
    assert agreement == AGREEMENT and uses == 7 and audited >= 2


def test_backup_of_a_postgres_state_points_at_pg_dump(
        postgres_server: Postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path, asyncio.run(new_database(postgres_server)))
    code, _, err = _run(capsys, "backup", str(tmp_path / "x.db"), "--dir", str(root))
    assert code == 2 and "pg_dump" in _one_error_line(err)


@pytest.mark.parametrize("command", [["verify"], ["show", "urn:x"], ["prune", "--before",
                                                                      "2026-01-01"],
                                     ["export", "urn:a", "--out", "bundle.json"]])
def test_audit_commands_on_an_unreachable_postgres_end_with_one_line(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``connector audit ...`` reads the PostgreSQL database too (tests/unit/
    test_audit_store.py); one that cannot be reached ends the command with one line naming
    the DSN file (never the DSN, which holds the password) and exit status 2."""
    root = _folder(tmp_path, "postgresql://connector:secret@127.0.0.1:1/none")
    code = cli.main(["audit", *command, "--dir", str(root)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert "postgres_dsn_file" in line and "cannot reach the database" in line, line
    assert "secret" not in err
