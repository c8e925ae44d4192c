"""The DSP 2025-1 contract-negotiation state machine.

Theory of operation
-------------------
Both parties keep one record per negotiation, identified by two pids: the consumer's
``consumerPid`` and the provider's ``providerPid`` (DSP 2025-1 §CN 1). Every message moves
both records through the same states, so one table serves both sides:

    TRANSITIONS[(sender_role, state, event)] -> new state

``state`` is ``None`` for a message that creates a negotiation. The same table judges what we
are about to send (``sender`` = our role) and what we receive (``sender`` = the peer's role),
as h11 does for HTTP. A missing cell is an ``InvalidTransition`` naming role, state and
message, which the HTTP edge renders as a 400 ``ContractNegotiationError``.

A message the table refuses that is the same message as one already applied (same type,
pids, content and ``@id``), sent again in the state it produced or any later one, is
acknowledged without a transition (``is_redelivery``; the rule is written out in
``core.process``); any other refused message is the 400.

``apply`` is pure: it returns the new record, never touches IO; time and ids come in as
arguments. What to send next is decided by ``next_step`` (the automatic reactions of a
connector that has already decided whether to grant the offer).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from connector.core.errors import Area, InvalidTransition, MalformedMessage
from connector.core.messages import (
    ContractAgreementMessage,
    ContractAgreementVerificationMessage,
    ContractNegotiation,
    ContractNegotiationEventMessage,
    ContractNegotiationTerminationMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    NegotiationMessage,
)
from connector.core.process import HistoryEntry as HistoryEntry
from connector.core.process import Role as Role
from connector.core.process import message_digest, seen, took_effect


class NegotiationState(StrEnum):
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"

    @property
    def terminal(self) -> bool:
        return self in (NegotiationState.FINALIZED, NegotiationState.TERMINATED)


class NegotiationEvent(StrEnum):
    REQUEST = "ContractRequestMessage"
    OFFER = "ContractOfferMessage"
    ACCEPT = "ContractNegotiationEventMessage:ACCEPTED"
    AGREE = "ContractAgreementMessage"
    VERIFY = "ContractAgreementVerificationMessage"
    FINALIZE = "ContractNegotiationEventMessage:FINALIZED"
    TERMINATE = "ContractNegotiationTerminationMessage"


S, E, C, P = NegotiationState, NegotiationEvent, Role.CONSUMER, Role.PROVIDER

# DSP 2025-1 §CN 1.2 (state machine) and the notes' table §4.
TRANSITIONS: Mapping[tuple[Role, NegotiationState | None, NegotiationEvent], NegotiationState] = {
    (C, None, E.REQUEST): S.REQUESTED,  # consumer-initiated (N2)
    (P, None, E.OFFER): S.OFFERED,  # provider-initiated (N8)
    (P, S.REQUESTED, E.OFFER): S.OFFERED,
    (P, S.REQUESTED, E.AGREE): S.AGREED,
    (C, S.OFFERED, E.REQUEST): S.REQUESTED,  # counter-request
    (C, S.OFFERED, E.ACCEPT): S.ACCEPTED,
    (P, S.ACCEPTED, E.AGREE): S.AGREED,
    (C, S.AGREED, E.VERIFY): S.VERIFIED,
    (P, S.VERIFIED, E.FINALIZE): S.FINALIZED,
    # §CN 1.2: either party may terminate in any non-terminal state.
    **{
        (role, state, E.TERMINATE): S.TERMINATED
        for role in Role
        for state in NegotiationState
        if not state.terminal
    },
}


class Negotiation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One party's record of a negotiation. ``id`` is our own pid."""

    id: str
    role: Role
    state: NegotiationState
    consumer_pid: str
    provider_pid: str | None
    dataset_id: str
    offer: dict[str, Any]
    counterparty_address: str  # where we send: the provider's DSP base or the callback
    counterparty_id: str | None = None  # the peer's participant id (DID)
    agreement: dict[str, Any] | None = None
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    policy_hash: str | None = None  # provider: the policy file the agreement was made under
    policy_commit: str | None = None
    history: list[HistoryEntry] = []

    def ack(self) -> ContractNegotiation:
        """The ``ContractNegotiation`` object both GET and the 201 return."""
        return ContractNegotiation(
            consumer_pid=self.consumer_pid,
            provider_pid=self.provider_pid or "",
            state=self.state.value,
        )


def event_of(msg: NegotiationMessage) -> NegotiationEvent:
    """The table's event for a message; event messages split by ``eventType``."""
    if isinstance(msg, ContractNegotiationEventMessage):
        if msg.event_type == "ACCEPTED":
            return E.ACCEPT
        if msg.event_type == "FINALIZED":
            return E.FINALIZE
        raise MalformedMessage(
            f"unknown eventType {msg.event_type!r}",
            consumer_pid=msg.consumer_pid, provider_pid=msg.provider_pid,
        )
    return NegotiationEvent(type(msg).__name__)


def target_state(
    sender: Role, state: NegotiationState | None, event: NegotiationEvent, *,
    consumer_pid: str | None = None, provider_pid: str | None = None,
) -> NegotiationState:
    """Look the cell up, or raise InvalidTransition naming sender, state and message."""
    try:
        return TRANSITIONS[(sender, state, event)]
    except KeyError:
        where = f"in state {state.value}" if state else "to start a negotiation"
        raise InvalidTransition(
            f"cannot accept {event.value} from {sender.value} {where}",
            area=Area.NEGOTIATION, consumer_pid=consumer_pid, provider_pid=provider_pid,
        ) from None


def reason_text(reason: list[Any] | None, code: str | None) -> str:
    parts = [str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in reason or []]
    text = "; ".join(parts) or "no reason given"
    return f"{code}: {text}" if code else text


def apply(record: Negotiation, sender: Role, msg: NegotiationMessage, now: float, *,
          message_id: str | None = None) -> Negotiation:
    """The record after ``msg`` from ``sender``; raises InvalidTransition if illegal.

    A message from the peer leaves its digest in the timeline (see ``core.process``)."""
    pids = {"consumer_pid": record.consumer_pid, "provider_pid": record.provider_pid}
    event = event_of(msg)
    new_state = target_state(sender, record.state, event, **pids)
    changes: dict[str, Any] = {"state": new_state, "updated_at": now}
    sent_provider_pid = getattr(msg, "provider_pid", None)
    if record.provider_pid is None and sent_provider_pid:
        changes["provider_pid"] = sent_provider_pid  # learnt before our 201 arrived
    note = ""
    if isinstance(msg, ContractOfferMessage | ContractRequestMessage):
        changes["offer"] = msg.offer
    elif isinstance(msg, ContractAgreementMessage):
        changes["agreement"] = msg.agreement
        note = f"agreement {msg.agreement.get('@id')}"
    elif isinstance(msg, ContractNegotiationTerminationMessage):
        note = changes["reason"] = reason_text(msg.reason, msg.code)
    digest = message_digest(msg, message_id) if sender is not record.role else None
    entry = HistoryEntry(at=now, by=sender.value, message=event.value,
                         state=new_state.value, note=note, digest=digest)
    changes["history"] = [*record.history, entry]
    return msgspec.structs.replace(record, **changes)


def is_redelivery(record: Negotiation, sender: Role, msg: NegotiationMessage,
                  message_id: str | None = None) -> bool:
    """Whether ``msg`` is a message already applied, sent again (the rule in ``core.process``):
    the table refuses it now, and the same message from ``sender`` is in the timeline.

    EDC sends its agreement again when it did not see our answer in time (``make interop``);
    refused, the repeat would make it terminate a negotiation both sides hold as agreed."""
    event = event_of(msg)
    if (sender, record.state, event) in TRANSITIONS:
        return False
    return seen(record.history, sender, event.value, message_digest(msg, message_id))


def peer_took_it(record: Negotiation, peer_state: str) -> bool:
    """Whether the peer's ``peer_state`` shows it holds what we sent (``core.process``)."""
    try:
        theirs = NegotiationState(peer_state)
    except ValueError:
        return False
    return took_effect(TRANSITIONS, record.state, theirs, record.role.other,
                       NegotiationEvent.TERMINATE)


def noted(record: Negotiation, now: float, by: str, message: str, note: str = ""
          ) -> Negotiation:
    """The record with one more timeline line that changes no state (a policy decision)."""
    entry = HistoryEntry(at=now, by=by, message=message, state=record.state.value, note=note)
    return msgspec.structs.replace(record, history=[*record.history, entry])


def terminate(record: Negotiation, sender: Role, reason: str, code: str, now: float) -> tuple[
        Negotiation, ContractNegotiationTerminationMessage]:
    """Terminate on our side: the new record and the message to send."""
    msg = ContractNegotiationTerminationMessage(
        consumer_pid=record.consumer_pid, provider_pid=record.provider_pid or "",
        code=code, reason=[reason],
    )
    return apply(record, sender, msg, now), msg


def build_agreement(
    offer: Mapping[str, Any], *, agreement_id: str, dataset_id: str, assigner: str,
    assignee: str, timestamp: str,
) -> dict[str, Any]:
    """An Agreement echoing the offer's rules unchanged (EDC compares them, see notes §2.4).

    DSP 2025-1 §CN 2.3: an agreement MUST name target, assigner, assignee and timestamp.
    """
    agreement: dict[str, Any] = {
        "@id": agreement_id,
        "@type": "Agreement",
        "target": dataset_id,
        "assigner": assigner,
        "assignee": assignee,
        "timestamp": timestamp,
    }
    for key in ("permission", "prohibition", "obligation", "profile"):
        if key in offer:
            agreement[key] = offer[key]
    if "permission" not in agreement and "prohibition" not in agreement:
        agreement["permission"] = [{"action": "use"}]  # the schema needs one of the two
    return agreement


def verification(record: Negotiation) -> ContractAgreementVerificationMessage:
    return ContractAgreementVerificationMessage(
        consumer_pid=record.consumer_pid, provider_pid=record.provider_pid or "")


def event(record: Negotiation, kind: str) -> ContractNegotiationEventMessage:
    return ContractNegotiationEventMessage(
        consumer_pid=record.consumer_pid, provider_pid=record.provider_pid or "", event_type=kind)
