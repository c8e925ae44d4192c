"""Pulls the console runs in the background, with their progress (records, bytes, rate).

A pull writes the records into ``state/pulls/<transfer id>.jsonl``, checks the copy against
the provider's summary (count, bytes and SHA-256: ``copy_mismatch``, as every consumer
path does) and completes the transfer. It runs as a task of the daemon, so it goes on when
the browser leaves; its progress goes to the daemon's ``ProgressBoard``, which the transfer
pages poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

from connector.adapters.http.client import PeerClient
from connector.adapters.progress import PULL, Progress, ProgressBoard
from connector.adapters.sinks import Sink, open_sink
from connector.core.errors import ConnectorError, InvalidParameter, NotFound, PeerError
from connector.core.transfer import Transfer, TransferEvent, TransferState
from connector.service.consumer import Copy, copy_mismatch, retry_can_succeed
from connector.service.transfers import TransferService

log = logging.getLogger("connector.console")


def pull_address(record: Transfer) -> tuple[str, str]:
    """(endpoint, Authorization value) of a STARTED consumer transfer."""
    address = record.data_address
    url = address.url() if address is not None else None
    if record.state is not TransferState.STARTED or address is None or not url:
        raise NotFound(f"transfer {record.id!r} is {record.state.value} with no data address")
    return url, address.authorization_header()


class Pulls:
    def __init__(self, *, transfers: TransferService, client: PeerClient, folder: Path,
                 board: ProgressBoard) -> None:
        self._transfers = transfers
        self._client = client
        self._folder = folder
        self._board = board
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, record: Transfer) -> None:
        """Start pulling ``record`` unless a pull of it is running; NotFound when it has no
        address to pull from (said now, not later in the background)."""
        pull_address(record)
        running = self._board.get(record.id)
        if running is not None and not running.done:
            return
        progress = self._board.begin(record.id, PULL)
        task = asyncio.create_task(self._pull(record.id, progress))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pull(self, pid: str, progress: Progress) -> None:
        try:
            endpoint, token = pull_address(await self._transfers.mine(pid))
            summary = await self._client.data_summary(endpoint, token)
            self._folder.mkdir(parents=True, exist_ok=True)
            sink = open_sink(str(self._folder / f"{pid}.jsonl"))
            try:
                await _drain(self._client.pull(endpoint, token), sink, progress)
            finally:
                sink.close()
            problem = copy_mismatch(Copy(sink.records, sink.size, sink.sha256()), summary)
            if problem is not None:
                raise InvalidParameter(problem)
            await self._transfers.act(pid, TransferEvent.COMPLETE)
        except PeerError as exc:
            progress.error = exc.message
            log.info("console pull of %s stopped: %s", pid, exc.message)
            if not retry_can_succeed(exc):  # refused for good: the transfer ends, with why
                await self._terminate(pid, f"the provider refuses: "
                                           f"{exc.peer_reason or exc.message}")
        except ConnectorError as exc:
            progress.error = exc.message
            log.info("console pull of %s stopped: %s", pid, exc.message)
        except Exception as exc:  # a bug must not vanish with the task
            progress.error = "internal error"
            log.error("console pull of %s failed", pid, exc_info=exc)
        finally:
            self._board.end(pid)

    async def _terminate(self, pid: str, reason: str) -> None:
        try:
            await self._transfers.act(pid, TransferEvent.TERMINATE, reason)
        except ConnectorError as exc:  # it ended meanwhile (the provider terminated it)
            log.info("console pull of %s: cannot terminate: %s", pid, exc.message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _drain(chunks: AsyncGenerator[bytes, None], sink: Sink, progress: Progress) -> None:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                sink.write(chunk)
                progress.add(chunk)
    except PeerError as exc:
        raise PeerError(f"the pull stopped: {exc.message}", peer_status=exc.peer_status,
                        peer_reason=exc.peer_reason) from exc
