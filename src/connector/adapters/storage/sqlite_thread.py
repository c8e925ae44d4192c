"""One SQLite connection confined to its own thread; ``run(fn)`` is one hop there.

This is synapse's ``runInteraction`` for SQLite: a store method that needs several statements
(a transaction: BEGIN, one ``executemany`` per table, COMMIT) sends one function to the
connection's thread and awaits it once. aiosqlite costs a hop per statement, and each hop
between the event loop's thread and the database's costs 60-300 µs of CPU on a 2-core VM
(bench/README.md): a step writing five tables paid seven hops, now one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteThread:
    """A stdlib ``sqlite3`` connection (autocommit mode) used only from its own thread."""

    def __init__(self, path: Path, name: str, pragmas: Sequence[str]) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{name}")
        self._path, self._pragmas = path, pragmas
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        self._conn = sqlite3.connect(self._path, isolation_level=None)
        for pragma in self._pragmas:
            self._conn.execute(pragma)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in the connection's thread: one hop, whatever it executes."""
        conn = self._conn
        assert conn is not None, "connection not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def close(self) -> None:
        if self._conn is not None:
            await self.run(lambda c: c.close())
            self._conn = None
        self._executor.shutdown(wait=True)
