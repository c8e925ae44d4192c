"""The provider's consent register, live: what the data plane asks record by record.

The register is files (``participant/consents.py``, behind the ``ConsentFiles`` port); this
service keeps the snapshot in force in memory and replaces it when they change: at once when
``grant``/``withdraw`` write them (the answer to the caller comes after the new snapshot is in
force), and within a second for an edit by hand or a ``git pull`` (``refresh``, called by the
daemon's reload loop). A stream reads ``register`` at each chunk it writes, so a change
reaches a transfer already running at its next record. docs/consent.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from connector.core.consent import Consent, RecordGate, Register, Requester, consent_purpose
from connector.core.errors import InvalidParameter
from connector.service.consumer import CopyCounter

log = logging.getLogger("connector.consent")


class ConsentFiles(Protocol):
    """Where the register is kept (``participant.consents`` over the folder)."""

    def load(self) -> tuple[Register, int]:
        """The register, and how many files have a problem (their subjects get none)."""
        ...

    def stamp(self) -> Hashable: ...

    def grant(self, subject: str, consent: Consent) -> None: ...

    def withdraw(self, subject: str, now: datetime, consumer: str | None,
                 purpose: str | None) -> int: ...

    def listing(self, register: Register, now: datetime) -> list[dict[str, Any]]: ...


class Governed(Protocol):
    """What the register needs of a dataset declaration."""

    subject_field: str | None


class ConsentService:
    def __init__(self, files: ConsentFiles, *, clock: Callable[[], float],
                 claims_for: Callable[[str], Mapping[str, Any]]) -> None:
        self._files = files
        self._clock = clock
        self._claims_for = claims_for  # the attributes the provider holds for a consumer
        self._lock = asyncio.Lock()  # one writer at a time
        self._stamp = files.stamp()
        self.register = self._load()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _load(self) -> Register:
        register, broken = self._files.load()
        if broken:  # no file name: it is the subject's id
            log.warning("%d consent file(s) have a problem: their subjects have no consent in "
                        "force until fixed (run `connector policy check`)", broken)
        return register

    def refresh(self) -> None:
        """Re-read the files if they changed since the last read (an edit by hand)."""
        stamp = self._files.stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.register = self._load()
            log.info("consent register reloaded")

    async def _reloaded(self) -> None:
        self._stamp = await asyncio.to_thread(self._files.stamp)
        self.register = await asyncio.to_thread(self._load)

    async def grant(self, subject: str, consumer: str, purpose: str, until: str) -> None:
        """Record a consent; in force for every stream once this returns."""
        end = _moment(until, "until")
        async with self._lock:
            consent = Consent(consumer, purpose, end, granted=self.now())
            await asyncio.to_thread(self._files.grant, subject, consent)
            await self._reloaded()

    async def withdraw(self, subject: str, consumer: str | None, purpose: str | None) -> int:
        """Withdraw a subject's consents in force (of one consumer / purpose if given); in
        force for every stream, running ones included, once this returns."""
        async with self._lock:
            count = await asyncio.to_thread(self._files.withdraw, subject, self.now(),
                                            consumer, purpose)
            await self._reloaded()
        return count

    def listing(self) -> list[dict[str, Any]]:
        return self._files.listing(self.register, self.now())

    # -- the data plane's side ------------------------------------------------------------

    def gate(self, decl: Governed, agreement: Any, *, skip: int = 0) -> RecordGate | None:
        """The per-record gate of a pull under ``agreement``, or None when its policy has no
        ``consent`` constraint (then the register does not filter). A governed dataset without
        a subject field serves nothing (deny by default)."""
        purpose = consent_purpose(agreement.body)
        if purpose is None:
            return None
        who = Requester(agreement.assignee, self._claims_for(agreement.assignee), purpose)
        return RecordGate(decl.subject_field or "", who, skip=skip)

    def governed(self, decl: Governed, agreement: Any, source: Chunked) -> Chunked:
        """``source`` through the register when the agreement's policy asks for it."""
        if self.gate(decl, agreement) is None:
            return source
        return GatedSource(self, source, lambda skip: self._must_gate(decl, agreement, skip))

    def _must_gate(self, decl: Governed, agreement: Any, skip: int) -> RecordGate:
        gate = self.gate(decl, agreement, skip=skip)
        assert gate is not None  # governed() checked the policy
        return gate

    def take(self, gate: RecordGate, chunk: bytes) -> bytes:
        """The records of ``chunk`` served under the register in force now."""
        return gate.take(chunk, self.register, self.now())

    def finish(self, gate: RecordGate) -> bytes:
        return gate.finish(self.register, self.now())

    async def filtered(self, chunks: AsyncIterator[bytes], gate: RecordGate
                       ) -> AsyncGenerator[bytes, None]:
        """``chunks`` through ``gate`` (a push, a summary); empty results are not yielded."""
        async for chunk in chunks:
            if kept := self.take(gate, chunk):
                yield kept
        if last := self.finish(gate):
            yield last

    async def summary(self, chunks: AsyncIterator[bytes], gate: RecordGate) -> dict[str, Any]:
        """Records, bytes and SHA-256 of what a pull from record 0 would send now."""
        counter = CopyCounter()  # the copy check's own count, on the provider's side
        async for chunk in self.filtered(chunks, gate):
            counter.update(chunk)
        return counter.copy().as_dict()


class Chunked(Protocol):
    """A source of JSON lines (``adapters.sources.Source``)."""

    def chunks(self, offset: int = 0) -> AsyncGenerator[bytes, None]: ...

    async def summary(self) -> dict[str, Any]: ...


class GatedSource:
    """A source seen through the register (a push): offsets count records served, the
    summary is what a stream from record 0 would send now."""

    def __init__(self, consents: ConsentService, source: Chunked,
                 gate: Callable[[int], RecordGate]) -> None:
        self._consents = consents
        self._source = source
        self._gate = gate
        self.last: RecordGate | None = None  # the gate of the last stream, for its counts

    def chunks(self, offset: int = 0) -> AsyncGenerator[bytes, None]:
        self.last = self._gate(offset)
        return self._consents.filtered(self._source.chunks(0), self.last)

    async def summary(self) -> dict[str, Any]:
        return await self._consents.summary(self._source.chunks(0), self._gate(0))


def _moment(raw: str, name: str) -> datetime:
    try:
        when = datetime.fromisoformat(raw)
        if when.tzinfo is not None:
            return when.astimezone(UTC)
    except (TypeError, ValueError, OverflowError):  # 9999-12-31T23:59-01:00 overflows
        pass
    raise InvalidParameter(f"{name} must be a date-time with its offset, as "
                           f"2027-06-30T00:00:00Z, not {raw!r}"[:200])
