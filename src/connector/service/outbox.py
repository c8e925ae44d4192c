"""The outbox dispatcher: delivers persisted messages to peers, in order per process.

A message is written to the ``outbox`` table in the same transaction as the state change
that produced it, then handed here. It leaves after the handler's ACK (the dispatcher runs as
its own task), is retried with exponential back-off on network errors and 5xx, and dropped
with a logged reason on a 4xx, which is final (EDC does the same). Delivered rows are deleted
in batches. On start-up every row still in the table is sent again.

Delivery is at least once, so a peer may refuse a message it had in fact taken (a repeat sent
after a crash, to a peer that does not recognise repeats). Before a refusal ends a process,
its service asks the peer for its state (``ask``: a GET on the peer's process, DSP 2025-1
§CN/§TP "HTTPS binding") and keeps the process when the peer already holds what we sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from connector.core.binding import created_by
from connector.core.errors import PeerError
from connector.service.store import OutboxItem, Store

log = logging.getLogger("connector.outbox")

Send = Callable[[OutboxItem], Awaitable[bytes]]
OnAck = Callable[[OutboxItem, bytes], Awaitable[None]]
# GET (url, audience) -> (status, body): how a peer's view of a process is read.
Fetch = Callable[[str, str], Awaitable[tuple[int, bytes]]]
# Back-off: 0.25 s doubling to 30 s; after 12 attempts (about 3 minutes) the message is dropped.
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 30.0
MAX_ATTEMPTS = 12
# A 409 (the peer's state has not caught up yet) is tried this often, then dropped as a 4xx:
# eight tries wait about 30 s in all. EDC answers 409 to our FINALIZED event until it has
# processed our answer to its verification, which a loaded machine can delay by seconds;
# a dropped event left its negotiation VERIFIED for good (docs/interop-notes.md §7).
MAX_CONFLICT_ATTEMPTS = 8
# Deleting delivered rows in batches keeps one DB round trip off every message.
FLUSH_INTERVAL_S = 0.05


class Outbox:
    def __init__(self, store: Store, send: Send,
                 on_failure: Callable[[OutboxItem, PeerError], Awaitable[None]] | None = None,
                 on_ack: OnAck | None = None, fetch: Fetch | None = None) -> None:
        self._store = store
        self._fetch = fetch
        self._send = send
        self._on_failure = on_failure
        self._on_ack = on_ack
        self._queues: dict[str, deque[OutboxItem]] = {}
        self._done: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()  # one flush at a time: see ``flush``
        self._closed = False

    async def start(self) -> None:
        """Resend whatever a previous run left undelivered, then run the flusher."""
        self.submit(await self._store.pending_outbox())
        self._flusher = asyncio.create_task(self._flush_loop())

    def submit(self, items: Iterable[OutboxItem]) -> None:
        """Queue committed items; one worker per process keeps each process's order."""
        for item in items:
            queue = self._queues.get(item.process_id)
            if queue is not None:
                queue.append(item)
                continue
            self._queues[item.process_id] = deque([item])
            task = asyncio.create_task(self._drain(item.process_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, process_id: str) -> None:
        queue = self._queues[process_id]
        try:
            while queue:
                await self._deliver(queue[0])
                queue.popleft()
        finally:
            del self._queues[process_id]

    async def ask(self, url: str, audience: str) -> bytes | None:
        """The peer's answer to a GET on ``url`` if it is a 200; None if it cannot tell."""
        if self._fetch is None:
            return None
        try:
            status, body = await self._fetch(url, audience)
        except PeerError as exc:
            log.info("cannot ask %s: %s", url, exc.message)
            return None
        return body if status == 200 else None

    async def _deliver(self, item: OutboxItem) -> None:
        attempts = item.attempts
        while not self._closed:
            try:
                body = await self._send(item)
                self._done.append(item.seq)
                # DSP 2025-1 §CN 3.2 / §TP 3.2: the answer to a message that creates a
                # process carries the peer's pid.
                if self._on_ack is not None and created_by(item.url) is not None:
                    await self._on_ack(item, body)
                return
            except PeerError as exc:
                attempts += 1
                conflict_over = exc.peer_status == 409 and attempts >= MAX_CONFLICT_ATTEMPTS
                if not exc.retryable or attempts >= MAX_ATTEMPTS or conflict_over:
                    log.warning("dropping message to %s after %d attempt(s): %s",
                                item.url, attempts, exc.message)
                    self._done.append(item.seq)
                    if self._on_failure is not None:
                        await self._on_failure(item, exc)
                    return
                delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (attempts - 1))
                log.info("retrying %s in %.2fs: %s", item.url, delay, exc.message)
                loop = asyncio.get_running_loop()
                await self._store.outbox_retry(item.seq, attempts, loop.time() + delay,
                                               exc.message)
                await asyncio.sleep(delay)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        """Delete the delivered rows. When it returns, every row delivered before the call is
        deleted, also those a flush already under way (the background one) had taken."""
        async with self._flushing:
            done, self._done = self._done, []
            await self._store.outbox_done(done)

    async def close(self) -> None:
        """Stop sending; undelivered rows stay in the table for the next start."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()

    async def idle(self) -> None:
        """Wait until nothing is queued (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
