"""Per-process serialisation: one asyncio lock per process id, dropped when unused.

A step on a process (read record, core step, persist) must not interleave with another step
on the same process; different processes run concurrently. Replicas sharing a database add
``shared`` locks (the database's, ``PostgresStore.process_locks``), taken after the local
one, so two replicas never apply two messages to one process at once either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class SharedLocks(Protocol):
    """Locks every replica of the participant sees (held until the context exits)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


class KeyedLocks:
    def __init__(self, shared: SharedLocks | None = None) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._shared = shared

    @asynccontextmanager
    async def hold(self, key: str, *, local: bool = False) -> AsyncIterator[None]:
        """Hold ``key``'s lock in this process and, unless ``local``, in every replica."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                if self._shared is None or local:
                    yield
                else:
                    async with self._shared.hold(key):
                        yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
