"""What negotiations and transfers share: roles, the timeline, and the redelivery rule.

Theory of operation
-------------------
A DSP process (a contract negotiation, DSP 2025-1 §CN 1, or a transfer process, §TP 1) is kept
by each party as one record, named by two pids, moved through the states of one table::

    TRANSITIONS[(sender_role, state, event)] -> new state

Every message applied to a record leaves one line in its timeline (``HistoryEntry``); a line
for a message the peer sent carries that message's ``digest``.

**Redelivery.** Messages between connectors are delivered at least once: a sender that did not
see our answer (a lost response, a crash between sending and forgetting the message) sends the
same message again. The rule, the same for both roles and both processes:

    A message the table refuses in the record's current state, which is *the same message* as
    one already applied to this record from the same sender, is acknowledged (200, the
    process's current state) with no transition, no new timeline line and nothing sent.

*The same message* means the same type, the same pids and the same content (``digest``). Whether
the sender's ``@id`` counts too depends on the message (``repeatable``):

- A message the process may carry more than once (a request after an offer, a second offer, a
  transfer's Start after a suspension) is the same only under the same ``@id``. EDC keeps a
  message's ``@id`` when it sends it again; two equal counter-requests under two ``@id`` s are two
  messages (the DSP TCK sends a second, identical counter-request under a new ``@id`` and
  expects the 400 of an illegal transition).
- A message the table allows at most once per process (an agreement, a verification, an
  ACCEPTED or FINALIZED event, a completion, a termination) cannot be a second message of its
  kind: equal content under any ``@id`` is the same message. EDC 0.15 may send its
  verification again under a new ``@id`` after our 200; refused, it terminates a negotiation we
  hold as FINALIZED (``make interop-015``).

Any other message the table refuses is still the 400 of DSP 2025-1 §CN/§TP "HTTPS binding". A
message the table allows is applied, even if an equal one came before (a resumed transfer's
Start, a second round of offers).

The initial messages (a consumer's first ContractRequestMessage or TransferRequestMessage, a
provider's first ContractOfferMessage) follow the same rule one level up: the services look
the process up by the peer and the pid it chose (its ``consumerPid``, or its ``providerPid``
for an offer; a unique key in the store) and answer with the process that already exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import msgspec

from connector.core.errors import Area, InvalidTransition, MalformedMessage
from connector.core.messages import Message


class Role(StrEnum):
    CONSUMER = "consumer"
    PROVIDER = "provider"

    @property
    def other(self) -> Role:
        return Role.PROVIDER if self is Role.CONSUMER else Role.CONSUMER


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a process's timeline (``connector why``): who did what, and why.

    ``digest`` identifies a message the peer sent (``message_digest``); it is how a repeat
    of that message is recognised later."""

    at: float
    by: str  # "consumer", "provider" or "policy"
    message: str
    state: str
    note: str = ""
    digest: str | None = None


# 128 bits of SHA-256 tell two messages apart; the full 256 would only lengthen every record.
DIGEST_CHARS = 32


def message_digest(msg: Message, message_id: str | None = None) -> str:
    """Type, pids and content of ``msg`` as decoded, and the sender's ``@id`` if it gave one."""
    digest = hashlib.sha256(msgspec.json.encode(msg))
    if message_id is not None:
        digest.update(b"\x00@id\x00" + message_id.encode())
    return digest.hexdigest()[:DIGEST_CHARS]


def seen(history: Iterable[HistoryEntry], sender: Role, message: str,
         digests: Collection[str]) -> bool:
    """Whether this very message from ``sender`` was applied before (its line is there)."""
    return any(e.digest in digests and e.by == sender.value and e.message == message
               for e in history)


StateT = TypeVar("StateT", bound=StrEnum)
EventT = TypeVar("EventT", bound=StrEnum)


def reached(table: Mapping[tuple[Role, StateT | None, EventT], StateT], start: StateT,
            moves: Callable[[Role, EventT], bool] = lambda sender, event: True) -> set[StateT]:
    """``start`` and every state the table reaches from it by the ``moves`` allowed."""
    found, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (sender, before, event), after in table.items():
            if before is state and after not in found and moves(sender, event):
                found.add(after)
                frontier.append(after)
    return found


def took_effect(table: Mapping[tuple[Role, StateT | None, EventT], StateT], ours: StateT,
                theirs: StateT, peer: Role, terminate: EventT) -> bool:
    """Whether the peer's state ``theirs`` is ours, or one the peer reaches from ours by its
    own moves (termination aside). Then a refusal it answered to something we sent cannot
    mean our message was lost on it: it took the message before (a repeat we sent after a
    crash) and moved on, and its next message is on its way to us."""
    return theirs in reached(table, ours,
                             lambda sender, event: sender is peer and event is not terminate)


def peer_took_it(table: Mapping[tuple[Role, StateT | None, EventT], StateT], ours: StateT,
                 role: Role, peer_state: str, terminate: EventT) -> bool:
    """``took_effect`` for the state a peer reports (any string: it comes from outside)."""
    try:
        theirs = type(ours)(peer_state)
    except ValueError:
        return False
    return took_effect(table, ours, theirs, role.other, terminate)


# -- what both tables' records share -----------------------------------------------------------

if TYPE_CHECKING:
    from connector.core.negotiation import Negotiation
    from connector.core.transfer import Transfer

RecordT = TypeVar("RecordT", "Negotiation", "Transfer")
Table = Mapping[tuple[Role, StateT | None, EventT], StateT]


def lookup(table: Table[StateT, EventT], sender: Role, state: StateT | None, event: EventT, *,
           area: Area, consumer_pid: str | None = None, provider_pid: str | None = None
           ) -> StateT:
    """Look the cell up, or raise InvalidTransition naming sender, state and message."""
    try:
        return table[(sender, state, event)]
    except KeyError:
        noun = "a negotiation" if area is Area.NEGOTIATION else "a transfer"
        where = f"in state {state.value}" if state else f"to start {noun}"
        raise InvalidTransition(
            f"cannot accept {event.value} from {sender.value} {where}",
            area=area, consumer_pid=consumer_pid, provider_pid=provider_pid,
        ) from None


def initial(table: Table[StateT, EventT], sender: Role) -> tuple[EventT, StateT]:
    """The table's initial row for ``sender``: the message that opens a process, and the
    state it opens it in (DSP 2025-1 §CN 1.2, §TP 1.2)."""
    for (who, state, event), after in table.items():
        if who is sender and state is None:
            return event, after
    raise InvalidTransition(f"the {sender.value} does not open this process", area=None)


def first_line(table: Table[StateT, EventT], sender: Role, now: float
               ) -> tuple[StateT, HistoryEntry]:
    """The state of a process ``sender`` opens, and the first line of its timeline."""
    event, state = initial(table, sender)
    return state, HistoryEntry(at=now, by=sender.value, message=event.value, state=state.value)


def repeatable(table: Table[StateT, EventT]) -> frozenset[tuple[Role, EventT]]:
    """The (sender, message) pairs the table allows more than once in one process: those whose
    cell leads to a state from which, by anyone's moves, the same sender may send it again."""
    return frozenset((sender, event) for (sender, _, event), after in table.items()
                     if any((sender, state, event) in table for state in reached(table, after)))


def _digest(repeats: frozenset[tuple[Role, EventT]], sender: Role, event: EventT,
            msg: Message, message_id: str | None) -> str:
    """The digest a timeline keeps: with the ``@id`` only for a repeatable message."""
    return message_digest(msg, message_id if (sender, event) in repeats else None)


def is_repeat(table: Table[StateT, EventT], repeats: frozenset[tuple[Role, EventT]],
              record: RecordT, sender: Role, event: EventT, msg: Message,
              message_id: str | None) -> bool:
    """The redelivery rule above: the table refuses ``msg`` now, and the same message from
    ``sender`` was applied to ``record`` before. ``repeats`` is ``repeatable(table)``."""
    if (sender, record.state, event) in table:
        return False
    # A line written before the rule looked at ``repeatable`` kept the @id in every digest.
    digests = {_digest(repeats, sender, event, msg, message_id),
               message_digest(msg, message_id)}
    return seen(record.history, sender, event.value, digests)


def line(record: RecordT, sender: Role, event: EventT, state: StrEnum, msg: Message,
         now: float, note: str, message_id: str | None,
         repeats: frozenset[tuple[Role, EventT]]) -> HistoryEntry:
    """The timeline line of ``msg`` applied; one from the peer keeps its digest."""
    digest = (_digest(repeats, sender, event, msg, message_id)
              if sender is not record.role else None)
    return HistoryEntry(at=now, by=sender.value, message=event.value, state=state.value,
                        note=note, digest=digest)


def noted(record: RecordT, now: float, by: str, message: str, note: str = "") -> RecordT:
    """The record with one more timeline line that changes no state (a policy decision)."""
    entry = HistoryEntry(at=now, by=by, message=message, state=record.state.value, note=note)
    return msgspec.structs.replace(record, history=[*record.history, entry])


def learnt_pid(record: RecordT, msg: Message) -> dict[str, str]:
    """The provider's pid a message tells a consumer that has not heard its 201 yet."""
    sent = getattr(msg, "provider_pid", None)
    return {"provider_pid": sent} if record.provider_pid is None and sent else {}


def their_pid(record: RecordT) -> str | None:
    """The pid the counterparty names this process by."""
    return record.consumer_pid if record.role is Role.PROVIDER else record.provider_pid


def check_pids(record: RecordT, msg: Message, area: Area) -> None:
    """The message must name this process's pids (DSP 2025-1 §CN 2, §TP 2: both pids)."""
    mine = record.provider_pid if record.role is Role.PROVIDER else record.consumer_pid
    theirs = their_pid(record)
    sent_mine = getattr(msg, "provider_pid" if record.role is Role.PROVIDER else "consumer_pid",
                        None)
    sent_theirs = getattr(msg, "consumer_pid" if record.role is Role.PROVIDER
                          else "provider_pid", None)
    if sent_mine != mine or (theirs is not None and sent_theirs not in (None, theirs)):
        noun = "negotiation" if area is Area.NEGOTIATION else "transfer"
        raise MalformedMessage(f"process ids in the message do not match this {noun}",
                               area=area, consumer_pid=record.consumer_pid,
                               provider_pid=record.provider_pid)


def with_provider_pid(record: RecordT, provider_pid: str) -> RecordT:
    """The record once the provider's pid is known (its 201 to our initial message)."""
    return msgspec.structs.replace(record, provider_pid=provider_pid)
