"""``connector db status|upgrade|backup``: the schema and the backups of a folder's state.

The engine is the one ``connector.toml`` chooses (``[storage] postgres_dsn_file`` or the
SQLite file); see ``adapters.storage.engine``. Every failure is one line and exit status 2
(``cli.main`` prints ``ConnectorError`` that way).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from connector.adapters.storage import engine
from connector.config import load_settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db`` and its subcommands."""
    p = sub.add_parser("db", help="the state database: schema version, upgrade, backup")
    dsub = p.add_subparsers(dest="db_command", required=True)
    s = dsub.add_parser("status", help="the engine, and the applied and latest migrations")
    u = dsub.add_parser("upgrade", help="apply the missing migrations")
    b = dsub.add_parser("backup", help="copy the SQLite state to FILE (PostgreSQL: pg_dump)")
    b.add_argument("file", type=Path, help="the new file to write (must not exist)")
    for q in (s, u, b):
        q.add_argument("--dir", type=Path, default=Path("."),
                       help="participant folder (default: .)")


def run(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``add_parsers`` declares."""
    settings = load_settings(args.dir)
    if args.db_command == "status":
        state = asyncio.run(engine.status(settings))
        behind = state.latest - state.version
        note = "up to date" if behind == 0 else (
            f"{behind} migration(s) to apply: connector db upgrade" if behind > 0
            else "NEWER than this connector: upgrade the connector")
        print(f"{state.engine} {state.where}: schema {state.version:03d}, this connector "
              f"{state.latest:03d} ({note})")
        return 0 if behind == 0 else 1 if behind > 0 else 2
    if args.db_command == "upgrade":
        before, after = asyncio.run(engine.upgrade(settings))
        print(f"schema {before:03d} -> {after:03d}" if after != before
              else f"schema {after:03d}: up to date")
        return 0
    engine.backup(settings, args.file)
    print(f"backed up {settings.database} to {args.file}")
    return 0
