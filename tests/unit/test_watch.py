"""Waiting for a record to change (service/watch.py): what long polls and an operator's step
that needs the peer's pid rely on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from connector.service.watch import Watch


async def test_a_change_committed_during_the_first_read_is_not_missed() -> None:
    """The key is watched before the read: a change that lands while the read is under way
    (and that the read does not see) still wakes the waiter, long before its timeout."""
    watch: Watch[str] = Watch()

    async def read() -> str:
        watch.changed("p", "done")  # committed by another task while we read
        return "waiting"  # what the read saw

    got = await asyncio.wait_for(watch.wait("p", read, lambda v: v == "done", 60.0), 5.0)
    assert got == "done"
    assert not watch.watched("p")


async def test_other_replicas_are_listened_to_before_the_read_and_until_the_end() -> None:
    events: list[str] = []
    watch: Watch[str] = Watch()

    @contextlib.asynccontextmanager
    async def listening() -> AsyncIterator[None]:
        events.append("listen")
        yield
        events.append("unlisten")

    watch.listening = listening

    async def read() -> str:
        events.append("read")
        return "waiting"

    waiting = asyncio.create_task(watch.wait("p", read, lambda v: v == "done", 60.0))
    while "read" not in events:
        await asyncio.sleep(0)
    assert watch.watched("p") and events == ["listen", "read"]
    watch.changed("p", "still waiting")  # the predicate does not hold: it waits on
    await asyncio.sleep(0)
    assert not waiting.done()
    watch.changed("p", "done")
    assert await waiting == "done"
    assert events == ["listen", "read", "unlisten"] and not watch.watched("p")


async def test_a_timeout_answers_a_fresh_read_and_forgets_the_waiter() -> None:
    reads = iter(["before", "after"])
    watch: Watch[str] = Watch()

    async def read() -> str:
        return next(reads)

    assert await watch.wait("p", read, lambda v: v == "never", 0.01) == "after"
    assert not watch.watched("p")


async def test_a_value_that_already_holds_returns_at_once() -> None:
    watch: Watch[str] = Watch()

    async def read() -> str:
        return "done"

    assert await watch.wait("p", read, lambda v: v == "done", 60.0) == "done"
    assert await watch.wait("q", read, lambda v: v == "x", 0) == "done"  # timeout 0: as is
    assert not watch.watched("p") and not watch.watched("q")


async def test_two_waiters_on_one_key_each_get_their_own_answer() -> None:
    watch: Watch[int] = Watch()

    async def read() -> int:
        return 0

    first = asyncio.create_task(watch.wait("p", read, lambda v: v >= 1, 60.0))
    second = asyncio.create_task(watch.wait("p", read, lambda v: v >= 2, 60.0))
    await asyncio.sleep(0.01)
    watch.changed("p", 1)
    assert await first == 1
    assert watch.watched("p") and not second.done()
    watch.changed("p", 2)
    assert await second == 2
    assert not watch.watched("p")
