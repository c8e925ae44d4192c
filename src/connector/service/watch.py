"""Wake waiters when a process record changes (the CLI's long polls, the demo, tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

T = TypeVar("T")
_Waiter = tuple[Callable[[T], bool], "asyncio.Future[T]"]


@contextlib.asynccontextmanager
async def _here_only() -> AsyncIterator[None]:
    """One process holds every record: its own saves are all the changes there are."""
    yield


class Watch(Generic[T]):
    def __init__(self) -> None:
        self._waiters: dict[str, list[_Waiter[T]]] = {}
        # While a waiter waits: the changes of other replicas reach ``changed`` too (the
        # PostgreSQL store LISTENs meanwhile; see PostgresStore.listening).
        self.listening: Callable[[], AbstractAsyncContextManager[None]] = _here_only

    def watched(self, key: str) -> bool:
        """Whether anyone waits on ``key`` (a change elsewhere is then worth a read)."""
        return key in self._waiters

    def changed(self, key: str, value: T) -> None:
        """Resolve every waiter on ``key`` whose predicate now holds."""
        for predicate, future in self._waiters.get(key, ()):
            if not future.done() and predicate(value):
                future.set_result(value)

    async def wait(self, key: str, read: Callable[[], Awaitable[T]],
                   predicate: Callable[[T], bool], timeout: float) -> T:
        """The first value for ``key`` satisfying ``predicate``, or a fresh ``read()`` after
        ``timeout`` seconds. ``key`` is watched (and other replicas' changes listened to)
        before the first read: a change committed during that read is not missed."""
        waiter: _Waiter[T] = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(key, []).append(waiter)
        try:
            async with self.listening():
                current = await read()
                if waiter[1].done():
                    return waiter[1].result()
                if predicate(current) or timeout <= 0:
                    return current
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(waiter[1], timeout)
                return await read()
        finally:
            self._forget(key, waiter)

    def _forget(self, key: str, waiter: _Waiter[T]) -> None:
        waiters = self._waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(key, None)
