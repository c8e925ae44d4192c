"""Wake waiters when a process record changes (the CLI's long polls, the demo, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Watch(Generic[T]):
    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[Callable[[T], bool], asyncio.Future[T]]]] = {}

    def watched(self, key: str) -> bool:
        """Whether anyone waits on ``key`` (a change elsewhere is then worth a read)."""
        return key in self._waiters

    def changed(self, key: str, value: T) -> None:
        """Resolve every waiter on ``key`` whose predicate now holds."""
        waiters = self._waiters.get(key)
        if not waiters:
            return
        keep = []
        for predicate, future in waiters:
            if future.done():
                continue
            if predicate(value):
                future.set_result(value)
            else:
                keep.append((predicate, future))
        if keep:
            self._waiters[key] = keep
        else:
            del self._waiters[key]

    async def wait(self, key: str, current: T, predicate: Callable[[T], bool],
                   timeout: float) -> T:
        """Return the first value for ``key`` satisfying ``predicate`` (``current`` first)."""
        if predicate(current):
            return current
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((predicate, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return current
