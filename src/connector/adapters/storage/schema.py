"""The numbered schema migrations of the connector's state, one list per engine.

Both engines ship the same numbers (001..N) with the same meaning; ``migrations/`` holds the
SQLite text and ``migrations/postgres/`` the PostgreSQL dialect of each. This module is the one
place that decides which text an engine runs.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from typing import Literal

Engine = Literal["sqlite", "postgres"]
ENGINES: tuple[Engine, ...] = ("sqlite", "postgres")


def _folder(engine: Engine) -> Traversable:
    root = resources.files("connector.adapters.storage") / "migrations"
    return root / "postgres" if engine == "postgres" else root


def migrations(engine: Engine = "sqlite") -> list[tuple[int, str]]:
    """The numbered SQL migrations shipped in the package for ``engine``, in order."""
    found = []
    for item in _folder(engine).iterdir():
        name = item.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), item.read_text()))
    return sorted(found)


def latest(engine: Engine = "sqlite") -> int:
    """The schema version this code brings ``engine``'s database to."""
    return max(number for number, _ in migrations(engine))
