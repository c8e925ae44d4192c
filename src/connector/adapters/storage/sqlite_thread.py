"""One SQLite connection confined to its own thread; ``run(fn)`` is one hop there.

This is synapse's ``runInteraction`` for SQLite: a store method that needs several statements
(a transaction: BEGIN, one ``executemany`` per table, COMMIT) sends one function to the
connection's thread and awaits it once. aiosqlite costs a hop per statement, and each hop
between the event loop's thread and the database's costs 25-300 µs of CPU on a 2-core VM
(bench/README.md): a step writing five tables paid seven hops, now one.

The hop is a queue and ``call_soon_threadsafe``, as in aiosqlite: ``loop.run_in_executor``
(a ThreadPoolExecutor and a wrapped concurrent future) costs about twice the CPU per hop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")
Job = tuple[asyncio.Future[Any], Callable[[sqlite3.Connection], Any]]


class SqliteThread:
    """A stdlib ``sqlite3`` connection (autocommit mode) used only from its own thread."""

    def __init__(self, path: Path, name: str, pragmas: Sequence[str]) -> None:
        self._path, self._pragmas, self._name = path, pragmas, name
        self._jobs: SimpleQueue[Job | None] = SimpleQueue()
        self._thread: threading.Thread | None = None

    async def open(self) -> None:
        """Start the thread, connect there and apply the pragmas."""
        self._thread = threading.Thread(target=self._serve, name=f"sqlite-{self._name}",
                                        daemon=True)
        self._thread.start()
        try:
            await self.run(lambda _conn: None)  # the connection is open, or its error raised
        except BaseException:
            await self.close()
            raise

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        error: BaseException | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            for pragma in self._pragmas:
                conn.execute(pragma)
        except BaseException as exc:  # reported to every caller
            error = exc
        while (job := self._jobs.get()) is not None:
            future, fn = job
            loop = future.get_loop()
            try:
                if error is not None or conn is None:
                    raise error or sqlite3.ProgrammingError("connection not open")
                result = fn(conn)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_fail, future, exc)
            else:
                loop.call_soon_threadsafe(_succeed, future, result)
        if conn is not None:
            conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in the connection's thread: one hop, whatever it executes."""
        assert self._thread is not None, "connection not open"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn))
        return await future

    async def close(self) -> None:
        """Finish the queued calls, close the connection, end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its caller was cancelled meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
