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

*The same message* means the same type, the same pids and the same content (``digest``), and
the same ``@id`` when the sender gives one. EDC keeps a message's ``@id`` when it sends it
again; two messages with equal content under two ``@id`` s are two messages (the DSP TCK sends a
second, identical counter-request under a new ``@id`` and expects the 400 of an illegal
transition). Any other message the table refuses is still the 400 of DSP 2025-1 §CN/§TP
"HTTPS binding". A message the table allows is applied, even if an equal one came before (a
resumed transfer's Start, a second round of offers).

The initial messages (a consumer's first ContractRequestMessage or TransferRequestMessage)
follow the same rule one level up: the services look the process up by the peer and its
``consumerPid`` (a unique key in the store) and answer with the process that already exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

import msgspec

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


def seen(history: Iterable[HistoryEntry], sender: Role, message: str, digest: str) -> bool:
    """Whether this very message from ``sender`` was applied before (its line is there)."""
    return any(e.digest == digest and e.by == sender.value and e.message == message
               for e in history)


StateT = TypeVar("StateT", bound=StrEnum)
EventT = TypeVar("EventT", bound=StrEnum)


def took_effect(table: Mapping[tuple[Role, StateT | None, EventT], StateT], ours: StateT,
                theirs: StateT, peer: Role, terminate: EventT) -> bool:
    """Whether the peer's state ``theirs`` is ours, or one the peer reaches from ours by its
    own moves (termination aside). Then a refusal it answered to something we sent cannot
    mean our message was lost on it: it took the message before (a repeat we sent after a
    crash) and moved on, and its next message is on its way to us."""
    reached, frontier = {ours}, [ours]
    while frontier:
        state = frontier.pop()
        for (sender, before, event), after in table.items():
            if (sender is peer and before is state and event is not terminate
                    and after not in reached):
                reached.add(after)
                frontier.append(after)
    return theirs in reached
