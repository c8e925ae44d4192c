"""What the negotiation and the transfer services share: one shape for a DSP process.

Load the record -> core step -> persist with its outbox rows in one transaction -> hand the
rows to the outbox -> tell the watchers. A subclass names its area and its records and adds
its own reactions; persistence, the peer's ownership check, the 201's pid, a repeated
initial request and a refused delivery are handled here once (the rules are in
``core.process``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar, Generic, TypeVar

from connector.core import codec
from connector.core import process as proc
from connector.core.binding import path_for, process_path
from connector.core.errors import (
    Area,
    ConflictError,
    NotFound,
    PeerError,
    ProtocolError,
    UnknownProcess,
)
from connector.core.messages import ContractNegotiation, Message, TransferProcess
from connector.core.negotiation import Negotiation
from connector.core.process import Role
from connector.core.transfer import Transfer
from connector.service.catalog import Claims
from connector.service.locks import KeyedLocks
from connector.service.outbox import Outbox
from connector.service.store import OutboxItem, Outgoing, Store
from connector.service.watch import Watch

RecordT = TypeVar("RecordT", Negotiation, Transfer)
Ack = ContractNegotiation | TransferProcess
# Building a new record may read the store (a transfer's agreement): the record as opened,
# the record after our first reaction, and what that reaction sends.
Opening = Callable[[], Awaitable[tuple[RecordT, RecordT, list[Outgoing]]]]


def new_urn(now_ns: Callable[[], int] = time.time_ns,
            random: Callable[[int], bytes] = os.urandom) -> str:
    """A new id for our processes and agreements: a time-ordered UUID (RFC 9562 §5.7,
    version 7: 48 bits of Unix milliseconds, then 74 random bits). Ids made one after the
    other sort together, so every index keyed by them (the records', the audit entries'
    ``ref1``) grows at its end instead of at a random page, which is what a step's
    transaction spends least on. The time it shows is the time the peer saw the process
    start anyway."""
    ms = now_ns() // 1_000_000 & (1 << 48) - 1
    rand = int.from_bytes(random(10), "big") & (1 << 74) - 1
    value = (ms << 80 | 0x7 << 76 | (rand >> 62) << 64  # unix_ts_ms, ver, rand_a
             | 0b10 << 62 | rand & (1 << 62) - 1)  # var, rand_b
    return f"urn:uuid:{uuid.UUID(int=value)}"


class ProcessService(Generic[RecordT]):
    """The shared half of ``NegotiationService`` and ``TransferService``."""

    area: ClassVar[Area]
    ack_type: ClassVar[type[Ack]]
    noun: ClassVar[str]  # in the 404 a peer gets for a process it may not see
    log: ClassVar[logging.Logger]

    def __init__(self, *, store: Store, outbox: Outbox, clock: Callable[[], float],
                 new_id: Callable[[], str], automatic: bool,
                 locks: KeyedLocks | None = None) -> None:
        self._store = store
        self._outbox = outbox
        self._clock = clock
        self._new_id = new_id
        self.automatic = automatic  # False: only the operator (or a test script) acts
        self.listeners: list[Callable[[RecordT, bool], None]] = []
        self.watch: Watch[RecordT] = Watch()
        # replicas: with the database's locks (not `locks or ...`: an idle KeyedLocks is empty,
        # so falsy)
        self._locks = locks if locks is not None else KeyedLocks()

    # -- what a subclass provides -------------------------------------------------------------

    async def _load(self, pid: str) -> RecordT | None:
        raise NotImplementedError

    async def _persist(self, record: RecordT, out: list[Outgoing], new: bool
                       ) -> list[OutboxItem]:
        raise NotImplementedError

    async def _find(self, counterparty: str, opener: Role, pid: str) -> RecordT | None:
        """The process a peer opened as ``opener`` and names ``pid`` (a unique key in the
        store: its consumerPid if it is the consumer, its providerPid if the provider)."""
        raise NotImplementedError

    def _ended(self, record: RecordT, reason: str) -> RecordT:
        """The record terminated on our side because a message could not be delivered."""
        raise NotImplementedError

    def _peer_took_it(self, record: RecordT, peer_state: str) -> bool:
        raise NotImplementedError

    # -- persistence with effects -------------------------------------------------------------

    def _outgoing(self, record: RecordT, msg: Message) -> Outgoing:
        """``msg`` to our counterparty, at its path in the binding table."""
        base = record.counterparty_address.rstrip("/")
        return Outgoing(process_id=record.id, url=base + path_for(msg, record.role.other),
                        audience=record.counterparty_id or "", body=codec.encode(msg))

    async def _save(self, record: RecordT, out: list[Outgoing], *, new: bool = False) -> None:
        items = await self._persist(record, out, new)
        self._outbox.submit(items)
        self.watch.changed(record.id, record)
        for listener in self.listeners:
            listener(record, new)

    async def _owned(self, pid: str, claims: Claims) -> RecordT:
        """Our record for ``pid`` if the caller is its counterparty; 404 otherwise."""
        record = await self._load(pid)
        if record is None or record.counterparty_id != claims.participant_id:
            # DSP 2025-1 §CN/§TP HTTPS binding: unknown or foreign pids are a 404.
            raise UnknownProcess(f"no {self.noun} {pid!r}", area=self.area, provider_pid=pid)
        return record

    async def get(self, pid: str, claims: Claims) -> RecordT:
        """DSP GET on a process: the record, for its counterparty only."""
        return await self._owned(pid, claims)

    async def mine(self, pid: str) -> RecordT:
        """Management: our record for ``pid`` (404 if there is none)."""
        record = await self._load(pid)
        if record is None:
            raise NotFound(f"no {self.area.value} {pid!r}")
        return record

    async def until(self, pid: str, predicate: Callable[[RecordT], bool], timeout: float
                    ) -> RecordT:
        """Our record for ``pid`` once ``predicate`` holds for it, or as it is after
        ``timeout`` seconds (404 if there is none): long polls, and an operator's step that
        needs the peer's pid first. Any replica's change wakes it."""
        return await self.watch.wait(pid, lambda: self.mine(pid), predicate, timeout)

    # -- process-creating messages ------------------------------------------------------------

    async def _open_once(self, counterparty: str, opener: Role, pid: str,
                         opening: Opening[RecordT]) -> RecordT:
        """Open a process for a peer's initial message, or return the one that message opened
        before (``core.process``): serialised per (peer, its pid) in this process, and by
        the store's unique key across replicas (a replica that loses the race is refused the
        insert, and returns the winner's process: a lock shared by the replicas would cost
        two database round trips per opened process to decide the same thing), and its new
        id needs none either.

        A request sent again is rare, so the store is not asked first: the new record's insert
        is refused by the unique key (ConflictError) and the process that request opened
        before is returned; a repeat that no longer checks out (its offer withdrawn since)
        also gets that process. One database round trip less per opened process."""
        async with self._locks.hold(f"initial\x00{counterparty}\x00{opener.value}\x00{pid}",
                                    local=True):
            try:
                first, after, out = await opening()
                # The id is new and ours: no peer or replica can name it before this save
                # commits and its messages leave, so no replica can step the process
                # meanwhile, and the replicas' lock on it would only cost a round trip.
                async with self._locks.hold(first.id, local=True):
                    await self._save(after, out, new=True)
            except (ConflictError, ProtocolError):
                existing = await self._known(counterparty, opener, pid)
                if existing is None:
                    raise
                return existing
            return first

    async def _known(self, counterparty: str, opener: Role, pid: str) -> RecordT | None:
        existing = await self._find(counterparty, opener, pid)
        if existing is not None:
            self.log.info("%s %s: the initial request was sent again; acknowledged",
                          self.area.value, existing.id)
        return existing

    async def on_initial_ack(self, pid: str, body: bytes) -> None:
        """The peer's 201 to our initial message: learn its pid (DSP 2025-1 §CN 3.2, §TP 3.2)."""
        ack = codec.decode(body, self.ack_type, area=self.area)
        async with self._locks.hold(pid):
            record = await self._load(pid)
            if record is not None and record.provider_pid is None and ack.provider_pid:
                learnt: RecordT = proc.with_provider_pid(record, ack.provider_pid)
                await self._save(learnt, [])

    # -- delivery failures --------------------------------------------------------------------

    async def on_delivery_failed(self, process_id: str, error: PeerError) -> None:
        """A message could not be delivered (4xx or retries exhausted): end our side, unless
        the peer's own state shows it took the message before (a repeat it refused). The
        reason is the peer's own when it refused in words (``undelivered``)."""
        async with self._locks.hold(process_id):
            record = await self._load(process_id)
            if record is None or record.state.terminal:
                return
            if await self._peer_holds(record):
                self.log.info("%s %s: the peer refused a message it had already taken (%s); "
                              "kept", self.area.value, process_id, error.message)
                return
            await self._save(self._ended(record, undelivered(error, record.role.other)), [])

    async def on_modes_differ(self, pid: str, issuer: str) -> None:
        """We refused a message on ``pid`` that ``issuer`` signed in the other [identity] mode
        (its signature verified: ``ModesDiffer``). Its answers will never pass, so our
        process with it ends now saying why, instead of waiting for them."""
        async with self._locks.hold(pid):
            record = await self._load(pid)
            if record is None or record.state.terminal or record.counterparty_id != issuer:
                return
            self.log.warning("%s %s: %s speaks the other [identity] mode; ended",
                             self.area.value, pid, issuer)
            await self._save(self._ended(record, modes_differ(issuer)), [])

    async def _peer_holds(self, record: RecordT) -> bool:
        """Whether the peer's process is where ours is, or past it by its own moves."""
        theirs = proc.their_pid(record)
        if not theirs:
            return False
        url = record.counterparty_address.rstrip("/") + process_path(self.area, theirs)
        body = await self._outbox.ask(url, record.counterparty_id or "")
        if body is None:
            return False
        try:
            ack = codec.decode(body, self.ack_type, area=self.area)
        except ProtocolError:
            return False
        same = (ack.consumer_pid, ack.provider_pid) == (record.consumer_pid, record.provider_pid)
        return same and self._peer_took_it(record, ack.state)


def undelivered(error: PeerError, peer: Role) -> str:
    """Why a process ended when a message could not be delivered: the peer's reason in its
    words when it refused with one (a 4xx DSP error), else what went wrong on the way."""
    if error.peer_reason and error.peer_status is not None and 400 <= error.peer_status < 500:
        return f"the {peer.value} refused: {error.peer_reason}"
    return f"peer unreachable or refused: {error.message}"


def modes_differ(issuer: str) -> str:
    """Why a process with a peer in the other [identity] mode ended, and what to do."""
    return (f"identity modes differ: {issuer} signs as a pinned peer, while this connector "
            'verifies DCP credentials ([identity] mode = "dcp"); both sides need the same '
            "[identity] mode: agree on one, set it in connector.toml and restart that side")
