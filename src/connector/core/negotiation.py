"""The DSP 2025-1 contract-negotiation state machine.

Theory of operation
-------------------
Both parties keep one record per negotiation, identified by two pids: the consumer's
``consumerPid`` and the provider's ``providerPid`` (DSP 2025-1 §CN 1). Every message moves
both records through the same states, so one table serves both sides:

    TRANSITIONS[(sender_role, state, event)] -> new state

``state`` is ``None`` for a message that creates a negotiation; a record is always created
through that initial row (``opened``). The same table judges what we are about to send
(``sender`` = our role) and what we receive (``sender`` = the peer's role), as h11 does for
HTTP. A missing cell is an ``InvalidTransition`` naming role, state and message, which the
HTTP edge renders as a 400 ``ContractNegotiationError``.

A message the table refuses that is the same message as one already applied (same type,
pids and content, and the same ``@id`` for the messages a negotiation may carry twice: a
request, an offer), sent again in the state it produced or any later one, is
acknowledged without a transition (``is_redelivery``; the rule is written out in
``core.process``); any other refused message is the 400.

``apply`` is pure: it returns the new record, never touches IO; time and ids come in as
arguments. ``message_for`` builds what we send; which message to send next (the automatic
reactions of a connector) is decided in ``service.negotiations``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from connector.core import process
from connector.core.errors import Area, MalformedMessage
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


_STATE, _EVENT = NegotiationState, NegotiationEvent
_CONSUMER, _PROVIDER = Role.CONSUMER, Role.PROVIDER

# DSP 2025-1 §CN 1.2 (the contract negotiation state machine).
TRANSITIONS: Mapping[tuple[Role, NegotiationState | None, NegotiationEvent], NegotiationState] = {
    # The two initial rows: consumer-initiated (POST /negotiations/request) and
    # provider-initiated (POST /negotiations/offers), §CN HTTPS binding.
    (_CONSUMER, None, _EVENT.REQUEST): _STATE.REQUESTED,
    (_PROVIDER, None, _EVENT.OFFER): _STATE.OFFERED,
    (_PROVIDER, _STATE.REQUESTED, _EVENT.OFFER): _STATE.OFFERED,
    (_PROVIDER, _STATE.REQUESTED, _EVENT.AGREE): _STATE.AGREED,
    (_CONSUMER, _STATE.OFFERED, _EVENT.REQUEST): _STATE.REQUESTED,  # counter-request
    (_CONSUMER, _STATE.OFFERED, _EVENT.ACCEPT): _STATE.ACCEPTED,
    (_PROVIDER, _STATE.ACCEPTED, _EVENT.AGREE): _STATE.AGREED,
    (_CONSUMER, _STATE.AGREED, _EVENT.VERIFY): _STATE.VERIFIED,
    (_PROVIDER, _STATE.VERIFIED, _EVENT.FINALIZE): _STATE.FINALIZED,
    # §CN 1.2: either party may terminate in any non-terminal state.
    **{
        (role, state, _EVENT.TERMINATE): _STATE.TERMINATED
        for role in Role
        for state in NegotiationState
        if not state.terminal
    },
}


# The messages this process may carry more than once (``core.process``: whether @id counts).
REPEATABLE = process.repeatable(TRANSITIONS)


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
            return NegotiationEvent.ACCEPT
        if msg.event_type == "FINALIZED":
            return NegotiationEvent.FINALIZE
        raise MalformedMessage(
            f"unknown eventType {msg.event_type!r}",
            consumer_pid=msg.consumer_pid, provider_pid=msg.provider_pid, area=Area.NEGOTIATION
        )
    return NegotiationEvent(type(msg).__name__)


def target_state(
    sender: Role, state: NegotiationState | None, event: NegotiationEvent, *,
    consumer_pid: str | None = None, provider_pid: str | None = None,
) -> NegotiationState:
    """Look the cell up, or raise InvalidTransition naming sender, state and message."""
    return process.lookup(TRANSITIONS, sender, state, event, area=Area.NEGOTIATION,
                          consumer_pid=consumer_pid, provider_pid=provider_pid)


def opened(sender: Role, *, id: str, role: Role, now: float, **fields: Any) -> Negotiation:
    """A new record, in the state the table's initial row for ``sender`` opens it in."""
    state, first = process.first_line(TRANSITIONS, sender, now)
    return Negotiation(id=id, role=role, state=state, created_at=now, updated_at=now,
                       history=[first], **fields)


def reason_text(reason: list[Any] | None, code: str | None) -> str:
    parts = [str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in reason or []]
    text = "; ".join(parts) or "no reason given"
    return f"{code}: {text}" if code else text


def apply(record: Negotiation, sender: Role, msg: NegotiationMessage, now: float, *,
          message_id: str | None = None) -> Negotiation:
    """The record after ``msg`` from ``sender``; raises InvalidTransition if illegal.

    A message from the peer leaves its digest in the timeline (see ``core.process``)."""
    event = event_of(msg)
    new_state = target_state(sender, record.state, event, consumer_pid=record.consumer_pid,
                             provider_pid=record.provider_pid)
    changes: dict[str, Any] = {"state": new_state, "updated_at": now,
                               **process.learnt_pid(record, msg)}
    note = ""
    if isinstance(msg, ContractOfferMessage | ContractRequestMessage):
        changes["offer"] = msg.offer
    elif isinstance(msg, ContractAgreementMessage):
        changes["agreement"] = msg.agreement
        note = f"agreement {msg.agreement.get('@id')}"
    elif isinstance(msg, ContractNegotiationTerminationMessage):
        note = changes["reason"] = reason_text(msg.reason, msg.code)
    entry = process.line(record, sender, event, new_state, msg, now, note, message_id,
                         REPEATABLE)
    return msgspec.structs.replace(record, history=[*record.history, entry], **changes)


def is_redelivery(record: Negotiation, sender: Role, msg: NegotiationMessage,
                  message_id: str | None = None) -> bool:
    """Whether ``msg`` is a message already applied, sent again (the rule in ``core.process``):
    the table refuses it now, and the same message from ``sender`` is in the timeline.

    EDC sends its agreement again when it did not see our answer in time (``make interop``);
    refused, the repeat would make it terminate a negotiation both sides hold as agreed."""
    return process.is_repeat(TRANSITIONS, REPEATABLE, record, sender, event_of(msg), msg,
                             message_id)


def peer_took_it(record: Negotiation, peer_state: str) -> bool:
    """Whether the peer's ``peer_state`` shows it holds what we sent (``core.process``)."""
    return process.peer_took_it(TRANSITIONS, record.state, record.role, peer_state,
                                NegotiationEvent.TERMINATE)


def terminate(record: Negotiation, sender: Role, reason: str, code: str, now: float) -> tuple[
        Negotiation, ContractNegotiationTerminationMessage]:
    """Terminate on our side: the new record and the message to send."""
    msg = ContractNegotiationTerminationMessage(
        consumer_pid=record.consumer_pid, provider_pid=record.provider_pid or "",
        code=code, reason=[reason],
    )
    return apply(record, sender, msg, now), msg


def message_for(record: Negotiation, event: NegotiationEvent, *,
                agreement: dict[str, Any] | None = None, reason: str = "",
                code: str = "terminated-by-operator") -> NegotiationMessage:
    """The message that carries ``event`` from us on this negotiation (both pids filled);
    an agreement is built by ``build_agreement`` first."""
    pids = {"consumer_pid": record.consumer_pid, "provider_pid": record.provider_pid or ""}
    if event is NegotiationEvent.OFFER:
        return ContractOfferMessage(**pids, offer=record.offer)
    if event is NegotiationEvent.REQUEST:
        return ContractRequestMessage(**pids, offer=record.offer)
    if event is NegotiationEvent.ACCEPT:
        return ContractNegotiationEventMessage(**pids, event_type="ACCEPTED")
    if event is NegotiationEvent.FINALIZE:
        return ContractNegotiationEventMessage(**pids, event_type="FINALIZED")
    if event is NegotiationEvent.VERIFY:
        return ContractAgreementVerificationMessage(**pids)
    if event is NegotiationEvent.AGREE:
        if agreement is None:
            raise ValueError("an agreement message needs the agreement")
        return ContractAgreementMessage(**pids, agreement=agreement)
    return ContractNegotiationTerminationMessage(**pids, code=code,
                                                 reason=[reason or "terminated"])


def build_agreement(
    offer: Mapping[str, Any], *, agreement_id: str, dataset_id: str, assigner: str,
    assignee: str, timestamp: str,
) -> dict[str, Any]:
    """An Agreement echoing the offer's rules unchanged (EDC compares them with the offer it
    stored: interop/edc/README.md, difference 6).

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
