"""The DSP 2025-1 transfer-process state machine.

Theory of operation
-------------------
As for negotiations (see ``negotiation.py``): one record per party, two pids, one table
``TRANSITIONS[(sender_role, state, event)] -> new state`` that judges both what we send and
what we receive. DSP 2025-1 §TP 1.2: only the provider starts a REQUESTED process; either
party may suspend, resume (Start from SUSPENDED), complete or terminate. A message already
applied and sent again is acknowledged without a transition (``is_redelivery``, the rule of
``core.process``); a resume is a transition, not a repeat, because the table allows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from connector.core import process
from connector.core.errors import Area
from connector.core.messages import (
    EDC_NS,
    DataAddress,
    EndpointProperty,
    TransferCompletionMessage,
    TransferMessage,
    TransferProcess,
    TransferRequestMessage,
    TransferStartMessage,
    TransferSuspensionMessage,
    TransferTerminationMessage,
)
from connector.core.negotiation import reason_text
from connector.core.process import HistoryEntry, Role


class TransferState(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"

    @property
    def terminal(self) -> bool:
        return self in (TransferState.COMPLETED, TransferState.TERMINATED)


class TransferEvent(StrEnum):
    REQUEST = "TransferRequestMessage"
    START = "TransferStartMessage"
    SUSPEND = "TransferSuspensionMessage"
    COMPLETE = "TransferCompletionMessage"
    TERMINATE = "TransferTerminationMessage"


_STATE, _EVENT = TransferState, TransferEvent
_CONSUMER, _PROVIDER = Role.CONSUMER, Role.PROVIDER
_BOTH = (_CONSUMER, _PROVIDER)

# DSP 2025-1 §TP 1.2 (the transfer process state machine).
TRANSITIONS: Mapping[tuple[Role, TransferState | None, TransferEvent], TransferState] = {
    (_CONSUMER, None, _EVENT.REQUEST): _STATE.REQUESTED,
    (_PROVIDER, _STATE.REQUESTED, _EVENT.START): _STATE.STARTED,
    **{(r, _STATE.REQUESTED, _EVENT.TERMINATE): _STATE.TERMINATED for r in _BOTH},
    **{(r, _STATE.STARTED, _EVENT.COMPLETE): _STATE.COMPLETED for r in _BOTH},
    **{(r, _STATE.STARTED, _EVENT.SUSPEND): _STATE.SUSPENDED for r in _BOTH},
    **{(r, _STATE.STARTED, _EVENT.TERMINATE): _STATE.TERMINATED for r in _BOTH},
    **{(r, _STATE.SUSPENDED, _EVENT.START): _STATE.STARTED for r in _BOTH},
    **{(r, _STATE.SUSPENDED, _EVENT.TERMINATE): _STATE.TERMINATED for r in _BOTH},
}


# The messages this process may carry more than once (``core.process``: whether @id counts).
REPEATABLE = process.repeatable(TRANSITIONS)


class Transfer(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One party's record of a transfer process. ``id`` is our own pid."""

    id: str
    role: Role
    state: TransferState
    consumer_pid: str
    provider_pid: str | None
    agreement_id: str
    format: str
    counterparty_address: str
    counterparty_id: str | None = None
    dataset_id: str | None = None
    data_address: DataAddress | None = None  # consumer: where to pull from
    token_hash: str | None = None  # provider: sha256 of the data-plane token
    token_expires_at: float | None = None
    prev_token_hash: str | None = None  # provider: the token a refresh replaced ...
    prev_token_until: float | None = None  # ... valid until then, or until the new one is used
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    history: list[HistoryEntry] = []

    def ack(self) -> TransferProcess:
        return TransferProcess(
            consumer_pid=self.consumer_pid,
            provider_pid=self.provider_pid or "",
            state=self.state.value,
        )


def target_state(
    sender: Role, state: TransferState | None, event: TransferEvent, *,
    consumer_pid: str | None = None, provider_pid: str | None = None,
) -> TransferState:
    """Look the cell up, or raise InvalidTransition naming sender, state and message."""
    return process.lookup(TRANSITIONS, sender, state, event, area=Area.TRANSFER,
                          consumer_pid=consumer_pid, provider_pid=provider_pid)


def opened(*, id: str, role: Role, now: float, **fields: Any) -> Transfer:
    """A new record, in the state the table's initial row (the consumer's request) opens."""
    state, first = process.first_line(TRANSITIONS, Role.CONSUMER, now)
    return Transfer(id=id, role=role, state=state, created_at=now, updated_at=now,
                    history=[first], **fields)


def is_redelivery(record: Transfer, sender: Role, msg: TransferMessage,
                  message_id: str | None = None) -> bool:
    """Whether ``msg`` is a message already applied, sent again (the rule in ``core.process``):
    the table refuses it now, and the same message from ``sender`` is in the timeline.

    EDC sends its Start again when it did not see our answer in time (``make interop``), and
    terminates the transfer if the repeat is refused. A resume (Start from SUSPENDED) is a
    transition, not a repeat."""
    event = TransferEvent(type(msg).__name__)
    return process.is_repeat(TRANSITIONS, REPEATABLE, record, sender, event, msg,
                             message_id)


def peer_took_it(record: Transfer, peer_state: str) -> bool:
    """Whether the peer's ``peer_state`` shows it holds what we sent (``core.process``)."""
    return process.peer_took_it(TRANSITIONS, record.state, record.role, peer_state,
                                TransferEvent.TERMINATE)


def apply(record: Transfer, sender: Role, msg: TransferMessage, now: float, *,
          message_id: str | None = None) -> Transfer:
    """The record after ``msg`` from ``sender``; raises InvalidTransition if illegal.

    A message from the peer leaves its digest in the timeline (see ``core.process``)."""
    event = TransferEvent(type(msg).__name__)
    new_state = target_state(sender, record.state, event, consumer_pid=record.consumer_pid,
                             provider_pid=record.provider_pid)
    changes: dict[str, Any] = {"state": new_state, "updated_at": now,
                               **process.learnt_pid(record, msg)}
    note = ""
    if isinstance(msg, TransferStartMessage) and msg.data_address is not None:
        changes["data_address"] = msg.data_address
    elif isinstance(msg, TransferTerminationMessage | TransferSuspensionMessage):
        note = changes["reason"] = reason_text(msg.reason, msg.code)
    entry = process.line(record, sender, event, new_state, msg, now, note, message_id,
                         REPEATABLE)
    return msgspec.structs.replace(record, history=[*record.history, entry], **changes)


def message_for(record: Transfer, event: TransferEvent, *, reason: str | None = None,
                code: str | None = None, data_address: DataAddress | None = None
                ) -> TransferMessage:
    """The message that carries ``event`` for this process (both pids filled)."""
    pids = {"consumer_pid": record.consumer_pid, "provider_pid": record.provider_pid or ""}
    reasons = [reason] if reason else None
    if event is TransferEvent.START:
        return TransferStartMessage(**pids, data_address=data_address)
    if event is TransferEvent.COMPLETE:
        return TransferCompletionMessage(**pids)
    if event is TransferEvent.SUSPEND:
        return TransferSuspensionMessage(**pids, code=code, reason=reasons)
    if event is TransferEvent.TERMINATE:
        return TransferTerminationMessage(**pids, code=code, reason=reasons)
    raise ValueError(f"{event} is not sent on an existing process")


def request_message(record: Transfer, callback_address: str,
                    data_address: DataAddress | None = None) -> TransferRequestMessage:
    """The consumer's request; a push request carries where to push to (DSP 2025-1 §TP 2.1)."""
    return TransferRequestMessage(
        consumer_pid=record.consumer_pid, agreement_id=record.agreement_id,
        format=record.format, callback_address=callback_address, data_address=data_address)


# HTTP pull (DSP 2025-1 §TP 2.3 example): the endpoint plus a bearer token.
HTTP_PULL_ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"


def bearer_properties(token: str) -> list[EndpointProperty]:
    """The endpoint properties of a bearer-token address (DSP 2025-1 §TP 2.3 example)."""
    return [EndpointProperty(name="authorization", value=token),
            EndpointProperty(name="authType", value="bearer")]


def pull_address(endpoint: str, token: str) -> DataAddress:
    """Where a consumer pulls from: our data plane and the bearer token we minted."""
    # The same under EDC's names, which its consumers read (interop/edc/README.md).
    edc = [EndpointProperty(name=EDC_NS + name, value=value)
           for name, value in (("endpoint", endpoint), ("authorization", token),
                               ("authType", "bearer"))]
    return DataAddress(endpoint_type=HTTP_PULL_ENDPOINT_TYPE, endpoint=endpoint,
                       endpoint_properties=bearer_properties(token) + edc)


PUSH_FORMAT = "HttpData-PUSH"


def push_address(endpoint: str, token: str) -> DataAddress:
    """Where a provider pushes to: the consumer's endpoint and the bearer token it minted."""
    return DataAddress(endpoint_type=HTTP_PULL_ENDPOINT_TYPE, endpoint=endpoint,
                       endpoint_properties=bearer_properties(token))
