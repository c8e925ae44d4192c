"""What running data streams have moved so far: records, bytes and rate, by transfer id.

Every stream of records reports here as it goes: the console's pulls, a push this connector
receives as consumer (``adapters/http/push.py``'s receiver) and one it sends as provider (its
pusher). The console's transfer pages read it. A stream's figures stay after it ends (the
page shows what arrived); a transfer that reaches a terminal state ends its stream
(``on_transfer``, a ``TransferService`` listener), however it got there.

Records are counted from the newlines of each chunk (JSON lines: one record a line), so a
report costs a ``bytes.count``, never a read of what was written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.core.transfer import Transfer

Chunk = bytes  # ``Progress.bytes`` shadows the type in the class body

PULL, PUSH_IN, PUSH_OUT = "pull", "push received", "push sent"
# Ended streams kept for their pages (the oldest go first): a daemon running for months
# must not keep one entry per transfer it ever moved.
KEPT_ENDED = 10_000


@dataclass
class Progress:
    """One stream: what went through so far, and how it ended."""

    kind: str  # PULL, PUSH_IN or PUSH_OUT
    started: float
    records: int = 0
    bytes: int = 0
    done: bool = False
    error: str | None = None
    ended: float | None = None

    def add(self, chunk: Chunk) -> None:
        self.records += chunk.count(b"\n")
        self.bytes += len(chunk)

    def view(self, now: float) -> dict[str, Any]:
        seconds = max((self.ended or now) - self.started, 1e-6)
        return {"kind": self.kind, "records": self.records, "bytes": self.bytes,
                "rate": round(self.records / seconds), "done": self.done, "error": self.error}


class ProgressBoard:
    """The streams of this daemon, one per transfer (a new stream replaces the last)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_id: dict[str, Progress] = {}

    def begin(self, pid: str, kind: str, *, records: int = 0, size: int = 0) -> Progress:
        """A stream of ``pid`` starts, holding ``records`` and ``size`` bytes already (a
        resumed stream keeps its first records)."""
        progress = Progress(kind, self._clock(), records, size)
        self._by_id.pop(pid, None)
        self._by_id[pid] = progress
        if len(self._by_id) > KEPT_ENDED:
            self._forget_ended()
        return progress

    def _forget_ended(self) -> None:
        ended = [pid for pid, p in self._by_id.items() if p.done]
        for pid in ended[:len(self._by_id) - KEPT_ENDED // 2]:
            del self._by_id[pid]

    def end(self, pid: str, error: str | None = None) -> None:
        progress = self._by_id.get(pid)
        if progress is not None and not progress.done:
            progress.done, progress.ended = True, self._clock()
            progress.error = progress.error or error

    def get(self, pid: str) -> Progress | None:
        return self._by_id.get(pid)

    def view(self, pid: str) -> dict[str, Any] | None:
        progress = self._by_id.get(pid)
        return progress.view(self._clock()) if progress else None

    def running(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {pid: p.view(now) for pid, p in self._by_id.items() if not p.done}

    def on_transfer(self, record: Transfer, new: bool) -> None:
        """A ``TransferService`` listener: a terminal transfer's stream is over."""
        if record.state.terminal:
            self.end(record.id)
